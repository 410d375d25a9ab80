#!/usr/bin/env bash
# Builds the cluster's container images without a registry or a Docker
# engine: each is one layer made from a root filesystem directory, written as
# a docker-archive tarball that containerd imports.
#   flashpv       the binary on a minimal Debian userland: the same tools as
#                 the Dockerfile's runtime stage (util-linux, e2fsprogs,
#                 xfsprogs, btrfs-progs), copied from this Debian machine
#   csi-provisioner, csi-resizer, csi-snapshotter, snapshot-controller, pause
#                 static binaries alone
#   busybox       Debian's busybox-static, the examples' workload image
# `images.sh flashpv-at COMMIT` writes only the flashpv image of an earlier
# commit (localhost/flashpv:<12 hex>, from build.sh flashpv-at's binary) to
# $STATE/images/flashpv-<12 hex>.tar, on the same userland.
# `images.sh e2e` writes instead the images Kubernetes' storage e2e tests run
# (make conformance), named as e2e.test asks for them with
# KUBE_TEST_REPO_LIST=test/e2e/repo-list.yaml (localhost/e2e-test-images/...):
#   agnhost:2.66.1            agnhost built from k8s.io/kubernetes v1.37.2
#                             (test/images/agnhost, VERSION 2.66.1) on busybox,
#                             as upstream's is on Alpine (a busybox userland)
#   busybox:1.37.0-2          stand-in: the busybox image above (Debian's 1.35)
#   nginx:1.27.0-2            stand-in: busybox; the one storage test that uses
#                             it ("allow exec of files on the volume") replaces
#                             the command with a shell script
#   glibc-dns-testing:2.1.1   stand-in: busybox with Debian's dash as /bin/sh and
#                             GNU dd, sha256sum and base64 (the concurrent-access
#                             tests use dd oflag=nocache, which busybox lacks)
source "$(dirname "$0")/lib.sh"
OUT=$STATE/images
mkdir -p "$OUT"

# archive REF ROOTFS ENTRYPOINT_JSON OUT.tar [CMD_JSON]
archive() {
	local ref=$1 root=$2 entry=$3 out=$4 cmd=${5:-}
	local w; w=$(mktemp -d)
	tar -C "$root" --sort=name --numeric-owner --owner=0 --group=0 --mtime=@0 -cf "$w/layer.tar" .
	local diff; diff=$(sha256sum "$w/layer.tar" | cut -d' ' -f1)
	mkdir "$w/$diff" && mv "$w/layer.tar" "$w/$diff/layer.tar"
	[ -z "$cmd" ] || cmd=',"Cmd":'$cmd
	printf '{"architecture":"amd64","os":"linux","created":"1970-01-01T00:00:00Z","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Entrypoint":%s%s,"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' "$entry" "$cmd" "$diff" >"$w/config.json"
	local cfg; cfg=$(sha256sum "$w/config.json" | cut -d' ' -f1)
	mv "$w/config.json" "$w/$cfg.json"
	printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":["%s/layer.tar"]}]' "$cfg" "$ref" "$diff" >"$w/manifest.json"
	tar -C "$w" --numeric-owner --owner=0 --group=0 -cf "$out" manifest.json "$cfg.json" "$diff/layer.tar"
	rm -rf "$w"
}

# copy_with_libs ROOT FILE...: copies programs and the shared libraries they load.
copy_with_libs() {
	local root=$1; shift
	local tool f lib
	for tool in "$@"; do
		f=$(command -v "$tool") || die "missing tool $tool on this machine (hack/cluster/install-deps.sh installs it)"
		mkdir -p "$root$(dirname "$f")"
		cp -L "$f" "$root$f"
		for lib in $(ldd "$f" 2>/dev/null | grep -o '/[^ ]*'); do
			mkdir -p "$root$(dirname "$lib")"
			cp -Ln "$lib" "$root$lib"
		done
	done
}

static_image() { # REF BINARY
	local root; root=$(mktemp -d)
	mkdir -p "$root/tmp"
	cp "$BIN/$2" "$root/$2"
	archive "$1" "$root" "[\"/$2\"]" "$OUT/$2.tar"
	rm -rf "$root"
}

# busybox_root DIR: Debian's static busybox with every applet linked in /bin.
busybox_root() {
	mkdir -p "$1/bin" "$1/tmp"
	cp /bin/busybox "$1/bin/busybox"
	for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -s busybox "$1/bin/$a"; done
}

# flashpv_image REF BINARY OUT.tar: a flashpv binary on the Debian userland
# the Dockerfile's runtime stage has.
flashpv_image() {
	local root; root=$(mktemp -d)
	copy_with_libs "$root" mount umount blkid blockdev losetup blkdiscard fsck fsck.ext4 e2fsck mke2fs mkfs.ext4 \
		resize2fs e2image dumpe2fs tune2fs mkfs.xfs xfs_growfs xfs_io xfs_repair btrfs mkfs.btrfs btrfstune
	mkdir -p "$root/etc" "$root/tmp" "$root/bin" "$root/run"
	cp /etc/mke2fs.conf "$root/etc/"
	ln -s /proc/self/mounts "$root/etc/mtab"
	cp /bin/busybox "$root/bin/sh"
	cp "$2" "$root/flashpv"
	archive "$1" "$root" '["/flashpv"]' "$3"
	rm -rf "$root"
}

if [ "${1:-}" = flashpv-at ]; then
	[ -n "${2:-}" ] || die "usage: images.sh flashpv-at COMMIT"
	tag=$(flashpv_ref_tag "$2")
	[ -x "$BIN/flashpv-$tag" ] || die "no $BIN/flashpv-$tag: run hack/cluster/build.sh flashpv-at $2 first"
	flashpv_image "localhost/flashpv:$tag" "$BIN/flashpv-$tag" "$OUT/flashpv-$tag.tar"
	log "image localhost/flashpv:$tag written to $OUT/flashpv-$tag.tar"
	exit 0
fi

if [ "${1:-}" = e2e ]; then
	[ -x "$BIN/agnhost" ] || die "no $BIN/agnhost: run hack/cluster/build.sh e2e.test first"
	R=localhost/e2e-test-images
	root=$(mktemp -d)
	busybox_root "$root"
	archive $R/busybox:1.37.0-2 "$root" '["/bin/sh"]' "$OUT/e2e-busybox.tar"
	archive $R/nginx:1.27.0-2 "$root" '["/bin/sh"]' "$OUT/e2e-nginx.tar"
	mkdir -p "$root/uploads"
	cp "$BIN/agnhost" "$root/agnhost"
	ln -s agnhost "$root/agnhost-2"
	archive $R/agnhost:2.66.1 "$root" '["/agnhost"]' "$OUT/e2e-agnhost.tar" '["pause"]'
	rm -rf "$root"

	root=$(mktemp -d)
	busybox_root "$root"
	copy_with_libs "$root" dash dd sha256sum base64
	ln -sf "$(command -v dash)" "$root/bin/sh"
	archive $R/glibc-dns-testing:2.1.1 "$root" '["/bin/sh"]' "$OUT/e2e-glibc-dns-testing.tar"
	rm -rf "$root"
	log "e2e images written to $OUT"
	exit 0
fi

static_image localhost/pause:local pause
static_image localhost/csi-provisioner:v6.4.0 csi-provisioner
static_image localhost/csi-resizer:v2.3.0 csi-resizer
static_image localhost/csi-snapshotter:v8.7.0 csi-snapshotter
static_image localhost/snapshot-controller:v8.7.0 snapshot-controller

root=$(mktemp -d)
busybox_root "$root"
archive docker.io/library/busybox:1.36 "$root" '["/bin/sh"]' "$OUT/busybox.tar"
rm -rf "$root"

flashpv_image localhost/flashpv:e2e "$BIN/flashpv" "$OUT/flashpv.tar"
log "images written to $OUT"
