#!/usr/bin/env bash
# Builds the guest that hack/vm/vmexec boots, into _output/vm:
#   vmlinuz         Debian's stock kernel (it has the device-mapper targets and
#                   XFS quotas that the kernel of our build machines lacks)
#   initramfs.cpio  a minimal Debian userland with LVM and the filesystem
#                   tools, plus that kernel's modules and hack/vm/init as PID 1
# debootstrap (a minute or more) runs only when its inputs change: this script,
# the package list or the kernel version. A changed hack/vm/init only repacks
# the cpio (a few seconds). With nothing to do it prints nothing.
set -euo pipefail
here=$(dirname "$(readlink -f "$0")")
repo=$(cd "$here/../.." && pwd)
out=$repo/_output/vm
mirror=${FLASHPV_VM_MIRROR:-http://deb.debian.org/debian}

packages=(lvm2 thin-provisioning-tools xfsprogs e2fsprogs btrfs-progs util-linux mount kmod procps iproute2)
# Kernel modules in the guest, with their dependencies (crc32c, dm-bufio, ...).
# init loads the drivers of the virtual hardware; the kernel loads the rest
# on demand.
modules=(virtio_pci virtio_blk 9pnet_virtio 9p loop dm_mod dm_thin_pool dm_snapshot dm_zero xfs ext4 btrfs quota_v2)
# The build fails unless each of these runs in the guest (found, libraries resolved).
tools=(bash lvm pvcreate vgcreate lvcreate lvs lvextend thin_check dmsetup blkid blockdev losetup wipefs
	mkfs.ext4 e2fsck resize2fs tune2fs chattr mkfs.xfs xfs_growfs xfs_quota xfs_io xfs_admin mkfs.btrfs btrfs btrfstune
	mount umount findmnt mountpoint truncate dd fallocate setpriv modprobe ip ps)

# On a fresh machine, get qemu, debootstrap, cpio and the kernel first.
fresh=false
for t in qemu-system-x86_64 debootstrap cpio depmod; do command -v "$t" >/dev/null || fresh=true; done
compgen -G '/boot/vmlinuz-*-amd64' >/dev/null || fresh=true
! $fresh || "$repo/hack/install-deps.sh" --vm
# The newest packaged kernel, not `uname -r`: the host may run another one.
kernel=$(ls -v /boot/vmlinuz-*-amd64 | tail -1)
kver=${kernel#/boot/vmlinuz-}
[ -d "/lib/modules/$kver" ] || { echo "vm: no /lib/modules/$kver for $kernel" >&2; exit 1; }

mkdir -p "$out"
# One build at a time; vmexec calls this before every VM.
exec 8>"$out/build.lock"
flock 8

stamp=$({ cat "$here/build.sh"; echo "${packages[*]}" "$kver"; } | sha256sum | cut -c1-32)
root=$out/rootfs
if [ "$(cat "$out/rootfs.stamp" 2>/dev/null)" != "$stamp" ]; then
	echo "vm: building the guest userland with debootstrap (a minute or more; log in $out/debootstrap.log)" >&2
	new=$out/rootfs.new
	rm -rf "$new" "$out/rootfs.stamp"
	mkdir -p "$out/debs"
	debootstrap --variant=minbase --cache-dir="$out/debs" --include="$(IFS=,; echo "${packages[*]}")" \
		bookworm "$new" "$mirror" >"$out/debootstrap.log" 2>&1 ||
		{ tail -20 "$out/debootstrap.log" >&2; exit 1; }

	# A smaller cpio boots faster (the kernel unpacks about 60 MB/s under
	# emulation). Nothing in the guest reads these; python3 (for
	# xfs_scrub_all), perl (for dpkg) and ICU (35 MB, for xfs_scrub only) are
	# never run there.
	rm -rf "$new"/var/cache/apt/* "$new"/var/lib/apt/lists/* "$new"/var/log/* \
		"$new"/usr/share/{doc,man,info,locale,lintian,bug} "$new"/usr/lib/x86_64-linux-gnu/gconv \
		"$new"/usr/lib/python3* "$new"/usr/bin/python3* "$new"/usr/lib/x86_64-linux-gnu/perl-base "$new"/usr/bin/perl* \
		"$new"/usr/lib/x86_64-linux-gnu/libicu* "$new"/usr/sbin/xfs_scrub*

	# The guest kernel's modules, with their dependencies, and its module index.
	mkdir -p "$new/lib/modules/$kver"
	for m in "${modules[@]}"; do modprobe -S "$kver" --show-depends "$m" || exit 1; done |
		awk '$1 == "insmod" {print $2}' | sort -u | while read -r f; do
			mkdir -p "$new$(dirname "$f")" && cp "$f" "$new$f"
		done
	cp /lib/modules/"$kver"/modules.{order,builtin,builtin.modinfo} "$new/lib/modules/$kver/"
	depmod -b "$new" "$kver"

	# No udev in the guest: LVM makes the /dev/VG/LV nodes itself and does
	# not wait for udev; no dmeventd (monitoring) either. The rest is LVM's
	# defaults, spelled out where they matter to the tests.
	cat >"$new/etc/lvm/lvm.conf" <<-'EOF'
		# Written by hack/vm/build.sh for the test VM, which has no udev.
		devices {
			obtain_device_list_from_udev = 0
			external_device_info_source = "none"
			use_devicesfile = 0
		}
		activation {
			udev_sync = 0
			udev_rules = 0
			monitoring = 0
		}
		global {
			use_lvmpolld = 0
		}
	EOF
	mkdir -p "$new"/{mnt/job,scratch,run,tmp}
	ln -sfn /proc/self/mounts "$new/etc/mtab"

	missing=
	for t in "${tools[@]}"; do
		p=$(PATH=/usr/sbin:/usr/bin chroot "$new" /bin/sh -c "command -v $t") &&
			! chroot "$new" ldd "$p" 2>/dev/null | grep -q 'not found' || missing+=" $t"
	done
	[ -z "$missing" ] || { echo "vm: the guest cannot run:$missing" >&2; exit 1; }

	rm -rf "$root"
	mv "$new" "$root"
	echo "$stamp" >"$out/rootfs.stamp"
fi

# Repack when the userland, init or the kernel changed.
pack=$({ echo "$stamp"; cat "$here/init"; sha256sum <"$kernel"; } | sha256sum | cut -c1-32)
if [ "$(cat "$out/initramfs.stamp" 2>/dev/null)" != "$pack" ] || [ ! -f "$out/initramfs.cpio" ] || [ ! -f "$out/vmlinuz" ]; then
	install -m 0755 "$here/init" "$root/init"
	(cd "$root" && find . -xdev -print0 | cpio -0 -o -H newc --quiet) >"$out/initramfs.cpio.new"
	cp "$kernel" "$out/vmlinuz.new"
	mv "$out/vmlinuz.new" "$out/vmlinuz"
	mv "$out/initramfs.cpio.new" "$out/initramfs.cpio"
	echo "$pack" >"$out/initramfs.stamp"
	echo "vm: guest ready: $out/vmlinuz ($kver), $out/initramfs.cpio ($(du -m "$out/initramfs.cpio" | cut -f1) MiB)" >&2
fi
