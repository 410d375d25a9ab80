package driver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flashpv/flashpv/pkg/diskformat"
	"github.com/flashpv/flashpv/pkg/loopdev"
	"github.com/flashpv/flashpv/pkg/pool"
)

func TestToStatus(t *testing.T) {
	for _, tc := range []struct {
		err  error
		code codes.Code
	}{
		{fmt.Errorf("x: %w", pool.ErrInvalid), codes.InvalidArgument},
		{fmt.Errorf("x: %w", errUnsupported), codes.InvalidArgument},
		{fmt.Errorf("x: %w", pool.ErrNotFound), codes.NotFound},
		{fmt.Errorf("x: %w", pool.ErrAlreadyExists), codes.AlreadyExists},
		{fmt.Errorf("x: %w", pool.ErrNoSpace), codes.ResourceExhausted},
		{errNotThisNode, codes.ResourceExhausted},
		{errTooMany, codes.ResourceExhausted},
		{pool.ErrOutOfRange, codes.OutOfRange},
		{errAborted, codes.Aborted},
		{errPrecondition, codes.FailedPrecondition},
		{loopdev.ErrBusy, codes.FailedPrecondition},
		{errors.New("disk on fire"), codes.Internal},
		{status.Error(codes.Unavailable, "kept"), codes.Unavailable},
		{fmt.Errorf("x: %w", pool.ErrUnusable), codes.Unavailable},
		// A pool refused for records of a newer format: no wait ends that.
		{pool.NewUnusable("fast", pool.KindImage, fmt.Errorf("%w: %w", pool.ErrUnusable, diskformat.ErrNewer)).Probe(context.Background()), codes.FailedPrecondition},
	} {
		if got := status.Code(toStatus(tc.err)); got != tc.code {
			t.Errorf("toStatus(%v) = %v, want %v", tc.err, got, tc.code)
		}
	}
	if toStatus(nil) != nil {
		t.Error("toStatus(nil) != nil")
	}
}

func TestVolumeSize(t *testing.T) {
	for _, tc := range []struct {
		req, lim, min int64
		size          int64
		err           error
	}{
		{0, 0, mib, gib, nil},
		{1, 0, mib, mib, nil},
		{mib + 1, 0, mib, 2 * mib, nil},
		{0, 100 * mib, mib, 100 * mib, nil},
		{0, 100*mib + 5, mib, 100 * mib, nil},
		{10 * mib, 0, 300 * mib, 300 * mib, nil},
		{0, 200 * mib, 300 * mib, 0, pool.ErrOutOfRange},
		{mib + 1, mib + 100, mib, 0, pool.ErrOutOfRange},
		{10, 5, mib, 0, pool.ErrInvalid},
		{-1, 0, mib, 0, pool.ErrInvalid},
	} {
		size, _, _, err := volumeSize(&csi.CapacityRange{RequiredBytes: tc.req, LimitBytes: tc.lim}, tc.min)
		if size != tc.size || !errors.Is(err, tc.err) || (tc.err == nil) != (err == nil) {
			t.Errorf("volumeSize(%d, %d, min %d) = %d, %v; want %d, %v", tc.req, tc.lim, tc.min, size, err, tc.size, tc.err)
		}
	}
}

func TestCheckCapability(t *testing.T) {
	mountCap := func(fs string, mode csi.VolumeCapability_AccessMode_Mode, flags ...string) *csi.VolumeCapability {
		return &csi.VolumeCapability{
			AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: fs, MountFlags: flags}},
			AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode},
		}
	}
	snw := csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER
	for _, tc := range []struct {
		c      *csi.VolumeCapability
		mode   pool.Mode
		fsType string
		ok     bool
	}{
		{mountCap("", snw), pool.ModeFilesystem, "xfs", true},
		{mountCap("btrfs", csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY), pool.ModeFilesystem, "btrfs", true},
		{mountCap("ext4", snw, "noatime", "discard"), pool.ModeFilesystem, "ext4", true},
		{&csi.VolumeCapability{AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}}, AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER}}, pool.ModeBlock, "", true},
		{mountCap("ext4", csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY), "", "", false},
		{mountCap("ext4", csi.VolumeCapability_AccessMode_UNKNOWN), "", "", false},
		{mountCap("zfs", snw), "", "", false},
		{mountCap("ext4", snw, "a\x00b"), "", "", false},
		{&csi.VolumeCapability{AccessMode: &csi.VolumeCapability_AccessMode{Mode: snw}}, "", "", false},
		{nil, "", "", false},
	} {
		mode, fsType, err := checkCapability(tc.c, "xfs")
		if (err == nil) != tc.ok || mode != tc.mode || fsType != tc.fsType {
			t.Errorf("checkCapability(%v) = %q %q %v", tc.c, mode, fsType, err)
		}
	}
}

func TestCheckPath(t *testing.T) {
	root := t.TempDir()
	kubelet := filepath.Join(root, "kubelet")
	outside := filepath.Join(root, "outside")
	os.MkdirAll(filepath.Join(kubelet, "pods"), 0o750)
	os.MkdirAll(outside, 0o750)
	os.Symlink(outside, filepath.Join(kubelet, "pods", "link"))
	os.Symlink(filepath.Join(kubelet, "pods"), filepath.Join(kubelet, "inner"))
	d := &Driver{kubeletDir: kubelet}
	for _, tc := range []struct {
		p  string
		ok bool
	}{
		{filepath.Join(kubelet, "pods", "a", "mount"), true},
		{filepath.Join(kubelet, "inner", "a"), true},
		{kubelet + "/pods/../../outside", false},
		{filepath.Join(kubelet, "pods", "link", "x"), false},
		{filepath.Join(kubelet, "pods", "link"), false},
		{outside, false},
		{kubelet + "2/x", false},
		{"pods/a", false},
		{"", false},
		{kubelet + "/a\x00", false},
		{kubelet, false}, // a mount there covers it all; an unpublish removes it
		{kubelet + "/pods/" + strings.Repeat("a", 255), true},
		{kubelet + "/pods/" + strings.Repeat("a", 256) + "/x", false}, // ENAMETOOLONG
	} {
		if err := d.checkPath(tc.p, "path"); (err == nil) != tc.ok {
			t.Errorf("checkPath(%q) = %v", tc.p, err)
		}
	}
}

func TestCreateParameters(t *testing.T) {
	got, err := createParameters(map[string]string{"pool": "fast", "csi.storage.k8s.io/pvc/name": "x"})
	if err != nil || len(got) != 1 || got["pool"] != "fast" {
		t.Fatalf("%v %v", got, err)
	}
	if _, err := createParameters(map[string]string{"fstype": "ext4"}); !errors.Is(err, pool.ErrInvalid) {
		t.Fatalf("unknown parameter: %v", err)
	}
}

func TestKeyLocks(t *testing.T) {
	l := newKeyLocks()
	release, err := l.acquire("v")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.acquire("v"); !errors.Is(err, errAborted) {
		t.Fatalf("second acquire: %v", err)
	}
	if r, err := l.acquire("w"); err != nil {
		t.Fatal("other key blocked:", err)
	} else {
		r()
	}
	release()
	if _, err := l.acquire("v"); err != nil {
		t.Fatal("acquire after release:", err)
	}
}

func TestWithoutSecrets(t *testing.T) {
	req := &csi.NodeStageVolumeRequest{VolumeId: "v", Secrets: map[string]string{"password": "hunter2"}}
	clean := withoutSecrets(req).(*csi.NodeStageVolumeRequest)
	if len(clean.GetSecrets()) != 0 || clean.GetVolumeId() != "v" {
		t.Fatalf("secrets kept or fields lost: %v", clean)
	}
	if req.GetSecrets()["password"] != "hunter2" {
		t.Fatal("the request itself was changed")
	}
}
