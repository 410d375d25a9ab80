# flashpv. `make test` runs every test that works on one machine (unit,
# integration on real loop devices and mounts, csi-sanity); it needs root.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
GO      ?= go
LDFLAGS := -s -w -X main.version=$(VERSION)

.PHONY: all build image test test-unit test-integration sanity verify deps clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/flashpv ./cmd/flashpv

IMAGE ?= flashpv:$(VERSION)

# Needs a Docker engine; the local cluster harness builds the same image
# without one.
image:
	docker build --build-arg VERSION=$(VERSION) -t $(IMAGE) .

deps:
	hack/install-deps.sh
	$(GO) mod download

# Everything, as CI runs it.
test: deps verify
	$(GO) test -count=1 -timeout 20m ./...

test-unit:
	$(GO) test -count=1 ./pkg/...

test-integration: deps
	$(GO) test -count=1 -timeout 15m ./test/integration/...

sanity: deps
	$(GO) test -count=1 -timeout 15m ./test/sanity/...

verify:
	@test -z "$$(gofmt -l cmd pkg test)" || { gofmt -l cmd pkg test; echo "gofmt needed"; exit 1; }
	$(GO) vet ./...

clean:
	rm -rf bin _output
