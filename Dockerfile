# flashpv image: a static Go binary on a small Debian userland with the tools
# the driver runs (mount, blkid, blockdev, mkfs.*, resize2fs, xfs_growfs,
# btrfs). Build with `make image`.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY cmd ./cmd
COPY pkg ./pkg
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/flashpv ./cmd/flashpv

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends util-linux mount e2fsprogs xfsprogs btrfs-progs \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/flashpv /flashpv
ENTRYPOINT ["/flashpv"]
