# flashpv. `make test` runs every test that works on one machine (unit,
# integration on real loop devices and mounts, csi-sanity); it needs root.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
GO      ?= go
SHELL   := /bin/bash
LDFLAGS := -s -w -X main.version=$(VERSION)

.PHONY: all build kubectl-flashpv image helm test test-unit test-integration test-apiserver sanity sanity-cli fault fuzz test-vm test-powerloss verify deps clean cluster-up cluster-down demo e2e bench bench-cluster conformance verify-cluster

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/flashpv ./cmd/flashpv

# The kubectl plugin: put bin/ on the PATH and run `kubectl flashpv`
# (docs/kubectl-plugin.md).
kubectl-flashpv:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/kubectl-flashpv ./cmd/kubectl-flashpv

IMAGE ?= flashpv:$(VERSION)

# Needs a Docker engine; the local cluster harness builds the same image
# without one.
image:
	docker build --build-arg VERSION=$(VERSION) -t $(IMAGE) .

deps:
	hack/install-deps.sh
	$(GO) mod download

# The helm CLI (Helm v4, pinned in hack/tools/helm) in _output/bin, built
# once from the Go module proxy; test/deploy renders the chart with it.
helm:
	hack/tools/helm/build.sh

# Everything, as CI runs it.
test: deps verify helm
	$(GO) test -count=1 -timeout 20m ./...
	hack/csi-sanity.sh

test-unit:
	$(GO) test -count=1 ./pkg/...

test-integration: deps
	$(GO) test -count=1 -timeout 15m ./test/integration/...

sanity: deps
	$(GO) test -count=1 -timeout 15m ./test/sanity/...

# The controller's API code (pkg/nodeloss, pkg/clustercontroller) against
# a real etcd and kube-apiserver (test/apiserver): the packages with tests
# under the apiserver build tag. The two binaries are the local cluster's
# (hack/cluster/build.sh apiserver builds only them, or nothing after the
# cluster's build). make e2e runs it.
APISERVER_PKGS = $(shell grep -rl --include='*_test.go' '^//go:build apiserver' pkg test | xargs -n1 dirname | sort -u | sed 's|^|./|')
test-apiserver:
	hack/cluster/build.sh apiserver
	$(GO) test -count=1 -timeout 10m -tags apiserver $(APISERVER_PKGS)

# The upstream csi-sanity CLI (csi-test v5.6.0, hack/tools/csi-sanity)
# against the flashpv binary with default flags, mount and block, as a user
# runs it (root). Logs in _output/csi-sanity.
sanity-cli: deps
	hack/csi-sanity.sh

# Fault injection (root): the real binary's process group killed at random
# moments inside calls and inside the commands it runs, each call retried
# as the kubelet and the provisioner do (test/fault; `make test` runs a short
# run). FAULT_SEEDS (default: five random ones) x FAULT_OPS operations; a
# seed reproduces a run's choices. Reports, events and driver logs go to
# _output/fault.
FAULT_SEEDS ?= $(shell for i in 1 2 3 4 5; do echo $$(( (RANDOM << 15) | RANDOM )); done)
FAULT_OPS   ?= 1000
fault: deps
	@mkdir -p _output/fault; rm -f _output/fault/report*.txt; failed=; \
	for s in $(FAULT_SEEDS); do \
		echo "=== fault injection: seed $$s, $(FAULT_OPS) operations"; \
		FLASHPV_FAULT_SEED=$$s FLASHPV_FAULT_OPS=$(FAULT_OPS) $(GO) test -count=1 -timeout 60m \
			-run '^TestFault$$' -v ./test/fault/ >_output/fault/test-$$s.log 2>&1 || failed="$$failed $$s"; \
		cat _output/fault/report-$$s.txt 2>/dev/null || tail -n 30 _output/fault/test-$$s.log; \
	done; \
	cat _output/fault/report-*.txt >_output/fault/report.txt 2>/dev/null; \
	if [ -n "$$failed" ]; then echo "fault injection failed with seeds:$$failed (_output/fault/test-SEED.log)"; exit 1; fi

# Fuzzing (no root needed): every Fuzz target of pkg/driver for FUZZTIME,
# one after another; each input is a CSI request for a fresh driver on
# image pools in a temp dir with faked loop devices and mounts (see
# docs/development.md). New crashers land in pkg/driver/testdata/fuzz,
# which `go test ./pkg/driver/` (and so `make test`) replays.
FUZZTIME ?= 1m
FUZZ_TARGETS = $(shell grep -ho '^func Fuzz[A-Za-z]*' pkg/driver/*_test.go | cut -c6-)
# It needs Go modules only, none of the tools of deps.
fuzz:
	$(GO) mod download
	@failed=; for t in $(FUZZ_TARGETS); do \
		echo "=== $$t for $(FUZZTIME)"; \
		$(GO) test -run '^$$' -fuzz "^$$t\$$" -fuzztime $(FUZZTIME) ./pkg/driver/ || failed="$$failed $$t"; \
	done; \
	if [ -n "$$failed" ]; then echo "fuzzing failed:$$failed (inputs in pkg/driver/testdata/fuzz)"; exit 1; fi

# The lvm and quota backends need device-mapper and XFS project quotas, which
# many hosts' kernels lack. Their integration tests and csi-sanity run in
# qemu VMs booting Debian's kernel: one fresh VM per test binary and backend
# (go test -exec hack/vm/vmexec). The guest image is built once and cached in
# _output/vm. VM_BACKENDS picks backends; FLASHPV_VM_TIMEOUT (seconds) kills
# a VM that hangs.
VM_BACKENDS ?= lvm-thick lvm-thin quota
# A short fault-injection run for lvm (thin: thick runs the same lvm
# commands, and each of its restarts costs more in an emulated VM) and quota
# (the guest has no Go: the binary is built here and run from the share).
VM_FAULT_BACKENDS ?= lvm-thin quota
VM_FAULT_OPS ?= 40
# csi-sanity checks the CSI surface, the same code over every lvm pool; it
# runs for thin (whose pool code does more: snapshots, overprovision), and
# lvm-thick's own pool code is covered by its integration tests (11 minutes
# of emulation saved per run).
VM_SANITY_BACKENDS ?= lvm-thin quota
test-vm: deps
	hack/install-deps.sh --vm
	hack/vm/build.sh
	CGO_ENABLED=0 $(GO) build -o _output/vm/flashpv ./cmd/flashpv
	@set -e; for b in $(VM_BACKENDS); do \
		echo "=== backend $$b, in a VM"; \
		pkgs="./test/integration/"; \
		case " $(VM_SANITY_BACKENDS) " in *" $$b "*) pkgs="$$pkgs ./test/sanity/";; esac; \
		case " $(VM_FAULT_BACKENDS) " in *" $$b "*) pkgs="$$pkgs ./test/fault/";; esac; \
		FLASHPV_TEST_BACKEND=$$b FLASHPV_FAULT_BIN=$(CURDIR)/_output/vm/flashpv FLASHPV_FAULT_OPS=$(VM_FAULT_OPS) \
		CGO_ENABLED=0 $(GO) test -count=1 -p 1 -timeout 60m \
			-exec $(CURDIR)/hack/vm/vmexec $$pkgs; \
	done

# Power loss (root): a VM running flashpv with five pools (image on ext4 and
# on xfs, lvm thick and thin, quota) under CSI calls and fsynced writers has
# its power cut (qemu SIGKILLed) CUTS times at random moments; after each cut
# the next boot checks that every acknowledged volume, snapshot and record
# is there, everything deletes, and the filesystems and LVM metadata check
# clean (test/powerloss, docs/powerloss.md). FLASHPV_POWERLOSS_SEED
# reproduces the cut moments. Report and logs in _output/powerloss.
CUTS ?= 20
test-powerloss: deps
	hack/install-deps.sh --vm
	hack/vm/build.sh
	FLASHPV_POWERLOSS_CUTS=$(CUTS) $(GO) test -count=1 -timeout 120m -tags powerloss -run '^TestPowerLoss$$' -v ./test/powerloss/

verify:
	@test -z "$$(gofmt -l cmd pkg test)" || { gofmt -l cmd pkg test; echo "gofmt needed"; exit 1; }
	$(GO) vet ./...
	$(GO) vet -tags vmselftest ./test/vmself/
	$(GO) vet -tags powerloss ./test/powerloss/
	$(GO) vet -tags apiserver $(APISERVER_PKGS)

# Benchmarks (root): data path against the pool's filesystem, control path,
# 1000 volumes and a restart. Writes _output/bench/report.{md,json} and
# ratios.png. BENCH_FLAGS=-quick checks the bench itself in about a minute.
# Then the cluster phase (bench-cluster; BENCH_CLUSTER=0 leaves it out).
BENCH_FLAGS ?=
BENCH_CLUSTER ?= 1
bench:
	hack/install-deps.sh --bench
	$(GO) run ./test/bench -out _output/bench $(BENCH_FLAGS)
	if [ "$(BENCH_CLUSTER)" != 0 ]; then $(MAKE) bench-cluster; fi

# The bench's cluster phase, added to _output/bench/report.*: on the local
# cluster with three nodes (brought up if needed, flashpv deployed, as make
# e2e does), a StatefulSet scaled from 0 to 30 against emptyDir, a pod
# on a claim restored from a VolumeSnapshot, and a restore onto another node
# against a plain TCP copy between the two nodes. It leaves the cluster up.
bench-cluster:
	NODES=$(E2E_NODES) hack/cluster/up.sh
	NODES=$(E2E_NODES) FLASHPV_RESTART=1 hack/cluster/deploy.sh
	$(GO) run ./test/bench -cluster -out _output/bench $(BENCH_FLAGS)

# The local cluster harness installs everything it runs or copies: checks
# every hack/cluster script against hack/cluster/install-deps.sh (and the
# checker against its own fixtures).
verify-cluster:
	cd hack/cluster/checktools && $(GO) test -count=1 ./...

# A real Kubernetes on this machine (root), with flashpv: NODES kubelet
# nodes (default 1), each in its own namespaces with its own pool filesystem
# (POOL_SIZES, default 10G for one node, else 3G 6G 10G ...).
cluster-up:
	hack/cluster/up.sh
	hack/cluster/deploy.sh

cluster-down:
	hack/cluster/down.sh

# The README's first command: cluster, flashpv, the example StatefulSet.
demo:
	hack/cluster/demo.sh

# End-to-end tests against the local cluster (brought up if needed) with
# three nodes unless NODES says otherwise. Logs of every node in
# _output/cluster-logs when they fail.
E2E_NODES = $(or $(NODES),3)
e2e: deps
	NODES=$(E2E_NODES) hack/cluster/up.sh
	NODES=$(E2E_NODES) FLASHPV_RESTART=1 FLASHPV_DEPLOY=helm hack/cluster/deploy.sh
	$(MAKE) test-apiserver
	mkdir -p _output
	set -o pipefail; $(GO) test -count=1 -timeout 60m -tags e2e -v ./test/e2e/... 2>&1 | tee _output/e2e.log | \
		grep --line-buffered -E '^(=== RUN|--- |PASS|FAIL|ok|\s+\S+_test.go)' || \
		{ hack/cluster/logs.sh "make e2e failed"; exit 1; }

# Kubernetes' own storage e2e suite (External.Storage of e2e.test v1.37.2)
# against the local cluster (three nodes; brought up and flashpv deployed if
# needed), the driver as test/e2e/testdriver.yaml declares it. Results in
# _output/conformance. CONFORMANCE_PROCS=1 runs it serially (default 2).
conformance: deps
	NODES=$(E2E_NODES) hack/cluster/conformance.sh

clean:
	rm -rf bin _output/bin
