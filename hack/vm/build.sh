#!/usr/bin/env bash
# Builds the guest of the VM test harness into _output/vm: Debian's stock
# kernel (whose device-mapper and XFS quotas this machine's kernel lacks) and
# an initramfs holding a minimal Debian userland with LVM, the filesystem
# tools and hack/vm/init as PID 1. The slow part, debootstrap, is cached
# under a stamp of its inputs; repacking the initramfs takes about a second.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=_output/vm
mkdir -p "$out"

kernel=$(ls /boot/vmlinuz-*-amd64 2>/dev/null | sort -V | tail -1 || true)
if [ -z "$kernel" ]; then
	echo "vm: no /boot/vmlinuz-*-amd64; run hack/install-deps.sh --vm" >&2
	exit 1
fi
kver=${kernel#/boot/vmlinuz-}
packages=lvm2,thin-provisioning-tools,xfsprogs,e2fsprogs,btrfs-progs,util-linux,mount,kmod,procps
modules="virtio_pci virtio_blk 9pnet_virtio 9p dm_mod dm_thin_pool dm_snapshot dm_zero xfs ext4 btrfs loop"

stamp=$(cat hack/vm/build.sh | sha256sum | cut -c1-16)-$kver
root=$out/rootfs
if [ "$(cat "$out/rootfs.stamp" 2>/dev/null)" != "$stamp" ]; then
	echo "vm: debootstrap of the guest userland (about a minute)"
	rm -rf "$root" "$out/rootfs.stamp"
	debootstrap --variant=minbase --include="$packages" bookworm "$root" >"$out/debootstrap.log" 2>&1 ||
		{ tail -20 "$out/debootstrap.log"; exit 1; }
	# Smaller initramfs: nothing here is needed to run tests.
	rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* \
		"$root"/usr/share/{doc,man,info,locale}
	# The kernel modules of the guest kernel, with their dependencies.
	rm -rf "$root/lib/modules" && mkdir -p "$root/lib/modules/$kver"
	for m in $modules; do modprobe -S "$kver" --show-depends "$m"; done |
		awk '$1 == "insmod" {print $2}' | sort -u | while read -r f; do
			mkdir -p "$root$(dirname "$f")" && cp "$f" "$root$f"
		done
	cp /lib/modules/"$kver"/modules.{order,builtin,builtin.modinfo} "$root/lib/modules/$kver/"
	depmod -b "$root" "$kver"
	# No udev in the guest: LVM makes its device nodes itself, and no
	# dmeventd. No backups of VG metadata either (the guest is thrown away).
	sed -i -e 's/^\(\s*\)# udev_sync = 1/\1udev_sync = 0/' \
		-e 's/^\(\s*\)# udev_rules = 1/\1udev_rules = 0/' \
		-e 's/^\(\s*\)# obtain_device_list_from_udev = 1/\1obtain_device_list_from_udev = 0/' \
		-e 's/^\(\s*\)# monitoring = 1/\1monitoring = 0/' \
		-e 's/^\(\s*\)# backup = 1/\1backup = 0/' -e 's/^\(\s*\)# archive = 1/\1archive = 0/' \
		"$root/etc/lvm/lvm.conf"
	echo "$stamp" >"$out/rootfs.stamp"
fi
install -m 0755 hack/vm/init "$root/init"
(cd "$root" && find . -xdev | cpio -o -H newc --quiet) >"$out/initramfs.cpio.tmp"
mv "$out/initramfs.cpio.tmp" "$out/initramfs.cpio"
cp "$kernel" "$out/vmlinuz"
echo "vm: guest ready: $out/vmlinuz ($kver), $out/initramfs.cpio ($(du -m "$out/initramfs.cpio" | cut -f1) MiB)"
