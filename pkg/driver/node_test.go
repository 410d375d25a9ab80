package driver

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flashpv/flashpv/pkg/pool"
)

const testSize = 4 * mib

// nodeEnv is a Node on a real image pool in a temp dir, with loop devices
// and mounts faked, and a temp kubelet directory: no root needed.
type nodeEnv struct {
	t      *testing.T
	ctx    context.Context
	d      *Driver
	node   *Node
	devs   *fakeDevices
	mounts *fakeMounts
	src    *fakeResize
	dir    string
}

func newNodeEnv(t *testing.T) *nodeEnv {
	t.Helper()
	dir := t.TempDir()
	d, devs, mounts := newTestDriver(t, dir)
	p := d.pools["default"]
	src := &fakeResize{Source: p.src}
	p.src = src
	return &nodeEnv{t: t, ctx: context.Background(), d: d, node: &Node{d: d}, devs: devs, mounts: mounts, src: src, dir: dir}
}

func accessMode(m csi.VolumeCapability_AccessMode_Mode) *csi.VolumeCapability_AccessMode {
	return &csi.VolumeCapability_AccessMode{Mode: m}
}

// mountCap asks for a filesystem ("" is the default fsType).
func mountCap(fsType string) *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: fsType}},
		AccessMode: accessMode(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER),
	}
}

func blockCap() *csi.VolumeCapability { return blockCaps()[0] }

func (e *nodeEnv) create(name string, c *csi.VolumeCapability) string {
	e.t.Helper()
	resp, err := (&Controller{d: e.d}).CreateVolume(e.ctx, &csi.CreateVolumeRequest{Name: name,
		CapacityRange: &csi.CapacityRange{RequiredBytes: testSize}, VolumeCapabilities: []*csi.VolumeCapability{c}})
	if err != nil {
		e.t.Fatal(err)
	}
	return resp.GetVolume().GetVolumeId()
}

func (e *nodeEnv) staging(id string) string { return filepath.Join(e.dir, "plugins", "staging", id) }

func (e *nodeEnv) target(id, pod string) string { return filepath.Join(e.dir, "pods", pod, id) }

func (e *nodeEnv) stage(id string, c *csi.VolumeCapability) error {
	_, err := e.node.NodeStageVolume(e.ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: e.staging(id), VolumeCapability: c})
	return err
}

func (e *nodeEnv) publish(id, target string, c *csi.VolumeCapability, ro bool) error {
	_, err := e.node.NodePublishVolume(e.ctx, &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: e.staging(id),
		TargetPath: target, VolumeCapability: c, Readonly: ro})
	return err
}

func (e *nodeEnv) unstage(id string) error {
	_, err := e.node.NodeUnstageVolume(e.ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: e.staging(id)})
	return err
}

func (e *nodeEnv) unpublish(id, target string) error {
	_, err := e.node.NodeUnpublishVolume(e.ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target})
	return err
}

// must fails the test on err.
func (e *nodeEnv) must(err error) {
	e.t.Helper()
	if err != nil {
		e.t.Fatal(err)
	}
}

// staged creates a volume and stages it.
func (e *nodeEnv) staged(name string, c *csi.VolumeCapability) string {
	e.t.Helper()
	id := e.create(name, c)
	e.must(e.stage(id, c))
	return id
}

// vol reads a volume's metadata from its pool.
func (e *nodeEnv) vol(id string) *pool.Volume {
	e.t.Helper()
	_, v, err := e.d.lookup(id)
	e.must(err)
	return v
}

// dev attaches a volume's device, or returns the one it has.
func (e *nodeEnv) dev(id string) string {
	e.t.Helper()
	dev, err := e.src.Attach(e.ctx, e.vol(id))
	e.must(err)
	return dev
}

// count counts the recorded calls that begin with prefix.
func (e *nodeEnv) count(prefix string) int {
	n := 0
	for _, c := range e.mounts.calls {
		if strings.HasPrefix(c, prefix) {
			n++
		}
	}
	return n
}

func wantCode(t *testing.T, err error, want codes.Code) {
	t.Helper()
	if status.Code(err) != want {
		t.Fatalf("got %v, want %s", err, want)
	}
}

func TestNodeStageVolume(t *testing.T) {
	t.Run("new filesystem is formatted, mounted and recorded", func(t *testing.T) {
		e := newNodeEnv(t)
		id := e.create("v", mountCap(""))
		e.must(e.stage(id, mountCap("")))
		dev := e.dev(id)
		want := []string{"mkfs ext4 " + dev, "mount ext4 " + dev + " " + e.staging(id)}
		if !slices.Equal(e.mounts.calls, want) {
			t.Fatalf("calls %q, want %q", e.mounts.calls, want)
		}
		if f := e.vol(id).Format; f != pool.FormatDone {
			t.Fatalf("format state %q after the first mount", f)
		}
	})
	t.Run("second stage is idempotent", func(t *testing.T) {
		e := newNodeEnv(t)
		id := e.staged("v", mountCap("ext4"))
		e.must(e.stage(id, mountCap("ext4")))
		if n := e.count("mkfs"); n != 1 || len(e.mounts.calls) != 2 {
			t.Fatalf("calls %q", e.mounts.calls)
		}
	})
	t.Run("restage of a known ext4 checks it and never formats", func(t *testing.T) {
		e := newNodeEnv(t)
		id := e.staged("v", mountCap("ext4"))
		e.must(e.unstage(id))
		e.must(e.stage(id, mountCap("ext4")))
		if e.count("mkfs") != 1 || !e.mounts.did("e2fsck "+e.dev(id)) || !e.mounts.mounted(e.staging(id)) {
			t.Fatalf("calls %q", e.mounts.calls)
		}
	})
	t.Run("formatted volume whose device holds another filesystem is refused", func(t *testing.T) {
		e := newNodeEnv(t)
		id := e.staged("v", mountCap("ext4"))
		e.must(e.unstage(id))
		e.mounts.formatted[e.dev(id)] = "xfs"
		wantCode(t, e.stage(id, mountCap("ext4")), codes.FailedPrecondition)
		if e.count("mkfs") != 1 || e.mounts.mounted(e.staging(id)) {
			t.Fatalf("calls %q", e.mounts.calls)
		}
	})
	t.Run("formatted volume whose device shows no filesystem is refused", func(t *testing.T) {
		e := newNodeEnv(t)
		id := e.staged("v", mountCap("ext4"))
		e.must(e.unstage(id))
		delete(e.mounts.formatted, e.dev(id))
		wantCode(t, e.stage(id, mountCap("ext4")), codes.FailedPrecondition)
		if e.count("mkfs") != 1 {
			t.Fatalf("a volume with a filesystem of its own was formatted again: %q", e.mounts.calls)
		}
	})
	t.Run("a copied btrfs gets an ID of its own before its mount; its source does not", func(t *testing.T) {
		e := newNodeEnv(t)
		c := mountCap("btrfs")
		src := e.staged("src", c)
		e.must(e.unstage(src)) // these fakes cannot freeze a staged source
		resp, err := (&Controller{d: e.d}).CreateVolume(e.ctx, &csi.CreateVolumeRequest{Name: "clone",
			CapacityRange: &csi.CapacityRange{RequiredBytes: testSize}, VolumeCapabilities: []*csi.VolumeCapability{c},
			VolumeContentSource: fromVolume(src)})
		e.must(err)
		clone := resp.GetVolume().GetVolumeId()
		dev := e.dev(clone)
		e.mounts.formatted[dev] = "btrfs" // the source's filesystem, copied
		e.must(e.stage(clone, c))
		tune := "btrfstune " + dev + " " + clone
		if e.count("btrfstune") != 1 || !e.mounts.did(tune) || e.count("mkfs") != 1 {
			t.Fatalf("calls %q, want one %q and no mkfs of the copy", e.mounts.calls, tune)
		}
		if i, j := slices.Index(e.mounts.calls, tune), slices.Index(e.mounts.calls, "mount btrfs "+dev+" "+e.staging(clone)); i < 0 || j < i {
			t.Fatalf("the copy was mounted before its ID changed: %q", e.mounts.calls)
		}
		e.mounts.formatted[e.dev(src)] = "btrfs"
		e.must(e.stage(src, c))
		if e.count("btrfstune") != 1 || !e.mounts.mounted(e.staging(src)) {
			t.Fatalf("the source's ID was changed: %q", e.mounts.calls)
		}
	})
	t.Run("pending volume with what a killed mkfs left is formatted again", func(t *testing.T) {
		e := newNodeEnv(t)
		id := e.create("v", mountCap("ext4"))
		dev := e.dev(id)
		e.mounts.formatted[dev] = "ext4" // made, never mounted
		e.must(e.stage(id, mountCap("ext4")))
		if !e.mounts.did("mkfs ext4 "+dev) || !e.mounts.mounted(e.staging(id)) {
			t.Fatalf("calls %q", e.mounts.calls)
		}
		if f := e.vol(id).Format; f != pool.FormatDone {
			t.Fatalf("format state %q", f)
		}
	})
	t.Run("pending volume holding another filesystem is refused", func(t *testing.T) {
		e := newNodeEnv(t)
		id := e.create("v", mountCap("ext4"))
		e.mounts.formatted[e.dev(id)] = "xfs"
		wantCode(t, e.stage(id, mountCap("ext4")), codes.FailedPrecondition)
		if len(e.mounts.calls) != 0 {
			t.Fatalf("calls %q", e.mounts.calls)
		}
	})
	t.Run("pending volume mounted by a killed stage is recorded, not formatted", func(t *testing.T) {
		e := newNodeEnv(t)
		id := e.create("v", mountCap("ext4"))
		dev := e.dev(id)
		e.mounts.formatted[dev] = "ext4"
		e.must(e.mounts.Mount(dev, e.staging(id), "ext4", nil))
		e.mounts.calls = nil
		e.must(e.stage(id, mountCap("ext4")))
		if len(e.mounts.calls) != 0 || e.vol(id).Format != pool.FormatDone {
			t.Fatalf("calls %q, format state %q", e.mounts.calls, e.vol(id).Format)
		}
	})
	t.Run("block volume is attached, not formatted", func(t *testing.T) {
		e := newNodeEnv(t)
		e.staged("v", blockCap())
		if len(e.mounts.calls) != 0 || len(e.devs.attached) != 1 {
			t.Fatalf("calls %q, attached %v", e.mounts.calls, e.devs.attached)
		}
	})
	t.Run("staging path holding another mount", func(t *testing.T) {
		e := newNodeEnv(t)
		id := e.create("v", mountCap(""))
		e.must(e.mounts.Bind("/elsewhere", e.staging(id), nil))
		wantCode(t, e.stage(id, mountCap("")), codes.FailedPrecondition)
		if e.count("mkfs") != 0 {
			t.Fatalf("calls %q", e.mounts.calls)
		}
	})
	t.Run("volume limit of the node", func(t *testing.T) {
		e := newNodeEnv(t)
		e.d.maxVolumes = 1
		e.staged("a", blockCap())
		wantCode(t, e.stage(e.create("b", blockCap()), blockCap()), codes.ResourceExhausted)
	})
}

func TestNodeStageVolumeErrors(t *testing.T) {
	e := newNodeEnv(t)
	fsVol, blockVol := e.create("fs", mountCap("ext4")), e.create("block", blockCap())
	outside := t.TempDir()
	e.must(os.MkdirAll(filepath.Join(e.dir, "pods"), 0o750))
	e.must(os.Symlink(outside, filepath.Join(e.dir, "pods", "link")))
	multiNode := mountCap("ext4")
	multiNode.AccessMode = accessMode(csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER)
	for _, tc := range []struct {
		name, id, staging string
		c                 *csi.VolumeCapability
		want              codes.Code
	}{
		{"missing volume ID", "", e.staging("x"), mountCap(""), codes.InvalidArgument},
		{"missing staging path", fsVol, "", mountCap(""), codes.InvalidArgument},
		{"relative staging path", fsVol, "plugins/staging/x", mountCap(""), codes.InvalidArgument},
		{"staging path outside the kubelet dir", fsVol, filepath.Join(outside, "x"), mountCap(""), codes.InvalidArgument},
		{"unclean staging path", fsVol, e.dir + "/pods/../x", mountCap(""), codes.InvalidArgument},
		{"staging path through a symlink out", fsVol, filepath.Join(e.dir, "pods", "link", "x"), mountCap(""), codes.InvalidArgument},
		{"missing capability", fsVol, e.staging("x"), nil, codes.InvalidArgument},
		{"unknown volume", pool.IDFor("default", "nope").String(), e.staging("x"), mountCap(""), codes.NotFound},
		{"unknown pool", pool.IDFor("other", "fs").String(), e.staging("x"), mountCap(""), codes.NotFound},
		{"block capability for a filesystem volume", fsVol, e.staging("x"), blockCap(), codes.InvalidArgument},
		{"other fsType", fsVol, e.staging("x"), mountCap("xfs"), codes.InvalidArgument},
		{"mount capability for a block volume", blockVol, e.staging("x"), mountCap(""), codes.InvalidArgument},
		{"multi-node access mode", fsVol, e.staging("x"), multiNode, codes.InvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.node.NodeStageVolume(e.ctx, &csi.NodeStageVolumeRequest{VolumeId: tc.id, StagingTargetPath: tc.staging, VolumeCapability: tc.c})
			wantCode(t, err, tc.want)
		})
	}
	t.Run("operation in flight", func(t *testing.T) {
		release, err := e.d.locks.acquire(fsVol)
		e.must(err)
		wantCode(t, e.stage(fsVol, mountCap("")), codes.Aborted)
		release()
		e.must(e.stage(fsVol, mountCap("")))
	})
	if len(e.mounts.calls) != 2 {
		t.Fatalf("refused stages did something: %q", e.mounts.calls)
	}
}

func TestNodeUnstageVolume(t *testing.T) {
	t.Run("unmounts and detaches, idempotently", func(t *testing.T) {
		e := newNodeEnv(t)
		id := e.staged("v", mountCap(""))
		e.must(e.unstage(id))
		if e.mounts.mounted(e.staging(id)) || len(e.devs.attached) != 0 {
			t.Fatalf("still mounted or attached: %q %v", e.mounts.calls, e.devs.attached)
		}
		e.must(e.unstage(id))
		e.must(e.unstage(e.create("never-staged", mountCap(""))))
	})
	t.Run("block volume is detached", func(t *testing.T) {
		e := newNodeEnv(t)
		id := e.staged("v", blockCap())
		e.must(e.unstage(id))
		if len(e.devs.attached) != 0 {
			t.Fatalf("still attached: %v", e.devs.attached)
		}
	})
	t.Run("refused while published", func(t *testing.T) {
		e := newNodeEnv(t)
		id := e.staged("v", mountCap(""))
		e.must(e.publish(id, e.target(id, "p"), mountCap(""), false))
		wantCode(t, e.unstage(id), codes.FailedPrecondition)
		if len(e.devs.attached) != 1 || !e.mounts.mounted(e.target(id, "p")) {
			t.Fatal("a published volume was detached")
		}
	})
	t.Run("refuses a foreign mount at the staging path", func(t *testing.T) {
		e := newNodeEnv(t)
		id := e.create("v", mountCap(""))
		e.must(e.mounts.Bind("/elsewhere", e.staging(id), nil))
		wantCode(t, e.unstage(id), codes.FailedPrecondition)
		if !e.mounts.mounted(e.staging(id)) {
			t.Fatal("a foreign mount was unmounted")
		}
	})
	t.Run("bad arguments", func(t *testing.T) {
		e := newNodeEnv(t)
		id := e.create("v", mountCap(""))
		for _, tc := range []struct {
			id, staging string
			want        codes.Code
		}{
			{"", e.staging(id), codes.InvalidArgument},
			{id, "", codes.InvalidArgument},
			{id, "staging", codes.InvalidArgument},
			{id, "/elsewhere/staging", codes.InvalidArgument},
			{pool.IDFor("default", "nope").String(), e.staging(id), codes.NotFound},
		} {
			_, err := e.node.NodeUnstageVolume(e.ctx, &csi.NodeUnstageVolumeRequest{VolumeId: tc.id, StagingTargetPath: tc.staging})
			wantCode(t, err, tc.want)
		}
	})
}

func TestNodeExpandVolume(t *testing.T) {
	expand := func(e *nodeEnv, id, path string, req, lim int64) (int64, error) {
		resp, err := e.node.NodeExpandVolume(e.ctx, &csi.NodeExpandVolumeRequest{VolumeId: id, VolumePath: path,
			StagingTargetPath: e.staging(id), CapacityRange: &csi.CapacityRange{RequiredBytes: req, LimitBytes: lim}})
		return resp.GetCapacityBytes(), err
	}
	t.Run("grows the storage and the mounted filesystem", func(t *testing.T) {
		e := newNodeEnv(t)
		id := e.staged("v", mountCap("ext4"))
		target := e.target(id, "p")
		e.must(e.publish(id, target, mountCap("ext4"), false))
		dev := e.dev(id)
		e.mounts.extNeedsGrow[dev] = true
		size, err := expand(e, id, target, 6*mib+1, 0)
		if err != nil || size != 7*mib || e.vol(id).SizeBytes != 7*mib {
			t.Fatalf("expand: %d %v", size, err)
		}
		if !slices.Equal(e.src.resized, []string{dev}) || !e.mounts.did("grow "+dev+" "+target) {
			t.Fatalf("resized %q, calls %q", e.src.resized, e.mounts.calls)
		}
	})
	t.Run("never shrinks", func(t *testing.T) {
		e := newNodeEnv(t)
		id := e.staged("v", mountCap(""))
		if size, err := expand(e, id, e.staging(id), mib, 0); err != nil || size != testSize {
			t.Fatalf("expand to less: %d %v", size, err)
		}
	})
	t.Run("rounded size above the limit", func(t *testing.T) {
		e := newNodeEnv(t)
		id := e.staged("v", mountCap(""))
		_, err := expand(e, id, e.staging(id), 6*mib+1, 6*mib+1)
		wantCode(t, err, codes.OutOfRange)
	})
	t.Run("not staged grows the storage only", func(t *testing.T) {
		e := newNodeEnv(t)
		id := e.create("v", mountCap(""))
		if size, err := expand(e, id, e.target(id, "p"), 8*mib, 0); err != nil || size != 8*mib {
			t.Fatalf("expand: %d %v", size, err)
		}
		if len(e.mounts.calls)+len(e.src.resized)+len(e.devs.attached) != 0 {
			t.Fatalf("node touched: %q %q %v", e.mounts.calls, e.src.resized, e.devs.attached)
		}
	})
	t.Run("block volume is refreshed, no filesystem grown", func(t *testing.T) {
		e := newNodeEnv(t)
		id := e.staged("v", blockCap())
		if size, err := expand(e, id, e.target(id, "p"), 8*mib, 0); err != nil || size != 8*mib || len(e.src.resized) != 1 {
			t.Fatalf("expand: %d %v, resized %q", size, err, e.src.resized)
		}
		if e.count("grow") != 0 {
			t.Fatalf("calls %q", e.mounts.calls)
		}
	})
	t.Run("ext4 that cannot grow while mounted", func(t *testing.T) {
		e := newNodeEnv(t)
		e.mounts.growOnline = false
		id := e.staged("v", mountCap("ext4"))
		e.mounts.extNeedsGrow[e.dev(id)] = true
		_, err := expand(e, id, e.staging(id), 8*mib, 0)
		wantCode(t, err, codes.FailedPrecondition)
	})
	t.Run("bad arguments", func(t *testing.T) {
		e := newNodeEnv(t)
		id := e.create("v", mountCap("ext4"))
		path := e.target(id, "p")
		for _, tc := range []struct {
			name string
			req  *csi.NodeExpandVolumeRequest
			want codes.Code
		}{
			{"missing volume ID", &csi.NodeExpandVolumeRequest{VolumePath: path}, codes.InvalidArgument},
			{"missing path", &csi.NodeExpandVolumeRequest{VolumeId: id}, codes.InvalidArgument},
			{"path outside", &csi.NodeExpandVolumeRequest{VolumeId: id, VolumePath: "/elsewhere"}, codes.InvalidArgument},
			{"unknown volume", &csi.NodeExpandVolumeRequest{VolumeId: pool.IDFor("default", "nope").String(), VolumePath: "/elsewhere"}, codes.NotFound},
			{"no capacity range", &csi.NodeExpandVolumeRequest{VolumeId: id, VolumePath: path}, codes.InvalidArgument},
			{"negative capacity", &csi.NodeExpandVolumeRequest{VolumeId: id, VolumePath: path, CapacityRange: &csi.CapacityRange{RequiredBytes: -1}}, codes.InvalidArgument},
			{"wrong capability", &csi.NodeExpandVolumeRequest{VolumeId: id, VolumePath: path, CapacityRange: &csi.CapacityRange{RequiredBytes: 8 * mib}, VolumeCapability: blockCap()}, codes.InvalidArgument},
		} {
			_, err := e.node.NodeExpandVolume(e.ctx, tc.req)
			if status.Code(err) != tc.want {
				t.Errorf("%s: got %v, want %s", tc.name, err, tc.want)
			}
		}
		if v := e.vol(id); v.SizeBytes != testSize {
			t.Fatalf("a refused expansion grew the volume to %d", v.SizeBytes)
		}
	})
}

func TestNodeGetInfo(t *testing.T) {
	e := newNodeEnv(t)
	resp, err := e.node.NodeGetInfo(e.ctx, &csi.NodeGetInfoRequest{})
	e.must(err)
	if resp.GetNodeId() != "n1" || resp.GetMaxVolumesPerNode() != 10 || resp.GetAccessibleTopology().GetSegments()[TopologyKey] != "n1" {
		t.Fatalf("info %v", resp)
	}
}

func TestNodeGetCapabilities(t *testing.T) {
	e := newNodeEnv(t)
	resp, err := e.node.NodeGetCapabilities(e.ctx, &csi.NodeGetCapabilitiesRequest{})
	e.must(err)
	got := map[csi.NodeServiceCapability_RPC_Type]bool{}
	for _, c := range resp.GetCapabilities() {
		got[c.GetRpc().GetType()] = true
	}
	for _, want := range []csi.NodeServiceCapability_RPC_Type{
		csi.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME,
		csi.NodeServiceCapability_RPC_EXPAND_VOLUME,
		csi.NodeServiceCapability_RPC_GET_VOLUME_STATS,
		csi.NodeServiceCapability_RPC_GET_VOLUME_HEALTH,
		csi.NodeServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
	} {
		if !got[want] {
			t.Errorf("capability %s missing", want)
		}
	}
}

func TestNodeGetStorageHealth(t *testing.T) {
	e := newNodeEnv(t)
	resp, err := e.node.NodeGetStorageHealth(e.ctx, &csi.NodeGetStorageHealthRequest{})
	if err != nil || len(resp.GetBackendHealth()) != 0 {
		t.Fatalf("healthy pool: %v %v", resp, err)
	}
	e.must(os.RemoveAll(e.d.pools["default"].Pool.(*pool.ImagePool).Dir()))
	resp, err = e.node.NodeGetStorageHealth(e.ctx, &csi.NodeGetStorageHealthRequest{})
	e.must(err)
	if h := resp.GetBackendHealth(); len(h) != 1 || h[0].GetStatus() != csi.StorageHealthErrorType_STORAGE_UNREACHABLE {
		t.Fatalf("pool gone: %v", h)
	}
}
