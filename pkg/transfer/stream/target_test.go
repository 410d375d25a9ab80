package stream

import (
	"bytes"
	"crypto/rand"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/flashpv/flashpv/test/loopfs"
)

// loopDevice attaches a loop device to a file of size bytes of random data
// and returns the device opened read-write (root only).
func loopDevice(t *testing.T, size int64) *os.File {
	t.Helper()
	loopfs.RequireRoot(t)
	img := filepath.Join(t.TempDir(), "disk.img")
	b := make([]byte, size)
	rand.Read(b)
	if err := os.WriteFile(img, b, 0o600); err != nil {
		t.Fatal(err)
	}
	dev := loopfs.Run(t, "losetup", "--find", "--show", img)
	t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func TestTargetZero(t *testing.T) {
	const size = 256 * kib
	ranges := []Extent{{0, 4 * kib}, {5000, 3000}, {12 * kib, 100}, {20*kib + 1, 70 * kib}, {size - 513, 513}, {100 * kib, 0}}
	targets := []struct {
		name string
		open func(t *testing.T) (*os.File, BlockTarget)
		kind string // the target's type
		// slow: whether it falls back to writing zeros
		slow bool
	}{
		{"file", func(t *testing.T) (*os.File, BlockTarget) {
			f := makeTarget(t, size)
			return f, FileTarget(f)
		}, "file", false},
		{"device that cannot zero", func(t *testing.T) (*os.File, BlockTarget) {
			f := makeTarget(t, size)
			return f, &deviceTarget{zeroWriter: zeroWriter{f: f}}
		}, "device", true},
		{"loop device", func(t *testing.T) (*os.File, BlockTarget) {
			f := loopDevice(t, size)
			return f, FileTarget(f)
		}, "device", false},
	}
	for _, tt := range targets {
		t.Run(tt.name, func(t *testing.T) {
			f, dst := tt.open(t)
			if _, isDev := dst.(*deviceTarget); isDev != (tt.kind == "device") {
				t.Fatalf("target %T, want a %s target", dst, tt.kind)
			}
			want := make([]byte, size)
			if _, err := f.ReadAt(want, 0); err != nil {
				t.Fatal(err)
			}
			for _, r := range ranges {
				if err := dst.Zero(r.Off, r.Len); err != nil {
					t.Fatalf("Zero(%d, %d): %v", r.Off, r.Len, err)
				}
				clear(want[r.Off:r.End()])
			}
			switch d := dst.(type) {
			case *fileTarget:
				if d.noZeroRange != tt.slow {
					t.Errorf("fell back to writing zeros: %v, want %v", d.noZeroRange, tt.slow)
				}
			case *deviceTarget:
				if d.noZeroOut != tt.slow {
					t.Errorf("fell back to writing zeros: %v, want %v", d.noZeroOut, tt.slow)
				}
			}
			if err := dst.Sync(); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, size+1)
			n, _ := f.ReadAt(got, 0)
			if int64(n) != size || !bytes.Equal(got[:n], want) {
				t.Errorf("content after zeroing differs (%d bytes)", n)
			}
		})
	}
}

// TestDeviceRoundTrip copies a loop device into another.
func TestDeviceRoundTrip(t *testing.T) {
	const size = 3*mib + 512
	src, dst := loopDevice(t, size), loopDevice(t, size)
	if _, err := src.WriteAt(make([]byte, mib), mib); err != nil {
		t.Fatal(err)
	}
	sent, _, _ := transfer(t, DeviceSource(src, size), FileTarget(dst), size, 0, mib)
	sameContent(t, src, dst)
	if sent.DataBytes != size-mib || sent.ZeroBytesSkipped != mib {
		t.Errorf("sent %+v, want %d bytes of data and %d of zeros skipped", sent, size-mib, mib)
	}
}
