#!/usr/bin/env bash
# Installs what flashpv's tests need on a Debian machine: the filesystem tools
# the driver runs (mkfs, blkid, resize2fs, xfs_growfs, btrfs) and util-linux;
# with --bench, also fio for `make bench`.
set -euo pipefail

need=()
for tool in mkfs.ext4:e2fsprogs mkfs.xfs:xfsprogs mkfs.btrfs:btrfs-progs losetup:util-linux blkid:util-linux blkdiscard:util-linux $([ "${1:-}" = --bench ] && echo fio:fio); do
	command -v "${tool%%:*}" >/dev/null 2>&1 || need+=("${tool##*:}")
done
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
