#!/usr/bin/env bash
# Installs what flashpv's tests need on a Debian machine: the filesystem tools
# the driver runs (mkfs, blkid, resize2fs, xfs_growfs, btrfs), util-linux and
# lvm2 (pkg/lvm's tests use LVM metadata on loop devices), promtool (test/docs
# checks deploy/monitoring's alerts). With --bench, also
# fio for `make bench`; with --vm, what `make test-vm` needs: qemu, Debian's
# kernel for the guest, debootstrap and cpio.
set -euo pipefail

tools="mkfs.ext4:e2fsprogs mkfs.xfs:xfsprogs mkfs.btrfs:btrfs-progs losetup:util-linux blkid:util-linux blkdiscard:util-linux lvm:lvm2 promtool:prometheus"
case "${1:-}" in
--bench) tools+=" fio:fio" ;;
--vm) tools+=" qemu-system-x86_64:qemu-system-x86 qemu-img:qemu-utils debootstrap:debootstrap cpio:cpio" ;;
esac
need=()
for tool in $tools; do
	command -v "${tool%%:*}" >/dev/null 2>&1 || need+=("${tool##*:}")
done
# The guest boots Debian's stock kernel, which has device-mapper and quotas.
if [ "${1:-}" = --vm ] && ! ls /boot/vmlinuz-*-amd64 >/dev/null 2>&1; then
	need+=(linux-image-amd64)
fi
if [ ${#need[@]} -gt 0 ]; then
	if [ "$(id -u)" -ne 0 ]; then
		echo "install-deps: missing ${need[*]}; run as root" >&2
		exit 1
	fi
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${need[@]}" | sort -u) >/dev/null
fi
# Loop devices: make sure the control device exists (it does on any kernel
# with the loop module loaded).
[ -e /dev/loop-control ] || modprobe loop 2>/dev/null || true
