# flashpv image: a static Go binary on a small Debian userland with the tools
# the driver runs (mount, blkid, blockdev, mkfs.*, resize2fs, xfs_growfs,
# btrfs, lvm). Build with `make image`.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY cmd ./cmd
COPY pkg ./pkg
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/flashpv ./cmd/flashpv

FROM debian:bookworm-slim
# lvm pools: no udev in the container, so LVM makes its device nodes itself,
# and no dmeventd monitoring (the host's LVM does that if it is wanted).
RUN apt-get update \
 && apt-get install -y --no-install-recommends util-linux mount e2fsprogs xfsprogs btrfs-progs lvm2 thin-provisioning-tools \
 && rm -rf /var/lib/apt/lists/* \
 && sed -i -e 's/^\(\s*\)# udev_sync = 1/\1udev_sync = 0/' -e 's/^\(\s*\)# udev_rules = 1/\1udev_rules = 0/' \
        -e 's/^\(\s*\)# monitoring = 1/\1monitoring = 0/' /etc/lvm/lvm.conf
COPY --from=build /out/flashpv /flashpv
ENTRYPOINT ["/flashpv"]
