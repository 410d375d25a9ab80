package mounter

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// The superblock reader agrees with mkfs.ext4 on sizes and block sizes,
// with and without the 64bit feature, and refuses what is not ext4.
func TestExtSize(t *testing.T) {
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		t.Skip("no mkfs.ext4")
	}
	for _, tc := range []struct {
		size, block int64
		opts        []string
	}{
		{64 << 20, 4096, []string{"-b", "4096", "-O", "64bit"}},
		{64 << 20, 4096, []string{"-b", "4096", "-O", "^64bit"}},
		{16 << 20, 1024, []string{"-b", "1024"}},
	} {
		img := filepath.Join(t.TempDir(), "fs.img")
		if err := os.WriteFile(img, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		os.Truncate(img, tc.size)
		args := append(append([]string{"-q", "-F"}, tc.opts...), img)
		if out, err := exec.Command("mkfs.ext4", args...).CombinedOutput(); err != nil {
			t.Fatalf("mkfs.ext4 %v: %v %s", args, err, out)
		}
		size, block, err := extSize(img)
		if err != nil || size != tc.size || block != tc.block {
			t.Errorf("%v: size %d block %d (%v), want %d %d", tc.opts, size, block, err, tc.size, tc.block)
		}
	}
	if _, _, err := parseExtSuperblock(make([]byte, 1024)); err == nil {
		t.Error("a zeroed superblock parsed")
	}
}
