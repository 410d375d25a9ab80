package fault

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// Data a pod wrote must survive every kill, restart, unstage, restage and
// expansion. Filesystem volumes get files, Block volumes 64 KiB blocks, each
// filled from a seed so it can be checked without a copy.

const (
	fileSize  = 256 << 10
	blockSize = 64 << 10
	maxFiles  = 12
)

type fileRecord struct {
	name string
	seed uint64
	size int // 0: fileSize
}

func (f fileRecord) bytes() int {
	if f.size > 0 {
		return f.size
	}
	return fileSize
}

// patternStream is the PCG stream of every pattern.
const patternStream = 0x6661756c74

// pattern is n bytes generated from seed.
func pattern(seed uint64, n int) []byte {
	b := make([]byte, n)
	fillPattern(rand.NewPCG(seed, patternStream), b)
	return b
}

// fillPattern fills b (a multiple of 8 bytes long) with g's next values.
// The generator is used directly, not through rand.Rand: bulk data is
// checked on every publish, and this is three times faster.
func fillPattern(g *rand.PCG, b []byte) {
	for i := 0; i+8 <= len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], g.Uint64())
	}
}

// holdsPattern tells whether the file at path holds exactly the pattern of
// seed of its size, compared a MiB at a time.
func holdsPattern(path string, seed uint64, size int) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil || st.Size() != int64(size) {
		return false, err
	}
	g := rand.NewPCG(seed, patternStream)
	want, got := make([]byte, min(size, 1<<20)), make([]byte, min(size, 1<<20))
	for off := 0; off < size; off += len(want) {
		n := min(len(want), size-off)
		fillPattern(g, want[:n])
		if _, err := io.ReadFull(f, got[:n]); err != nil {
			return false, err
		}
		if !bytes.Equal(want[:n], got[:n]) {
			return false, nil
		}
	}
	return true, nil
}

// writeData writes a new file or block to a published volume and makes it
// durable, as a database in the pod would.
func (r *run) writeData(v *volume) {
	if v.state != published || r.writeBulk(v) {
		return
	}
	seed := r.opRng.Uint64()
	if v.kind == "block" {
		slot := r.opRng.Int64N(v.size / blockSize)
		if err := writeAt(v.target, slot*blockSize, pattern(seed, blockSize)); err != nil {
			r.failf(v, "writing to the published block device %s: %v", v.target, err)
			return
		}
		if v.blocks == nil {
			v.blocks = map[int64]uint64{}
		}
		v.blocks[slot] = seed
		return
	}
	if len(v.files) >= maxFiles {
		return
	}
	name := fmt.Sprintf("data-%d", len(v.files))
	if err := writeFile(filepath.Join(v.target, name), pattern(seed, fileSize)); err != nil {
		r.failf(v, "writing to the published filesystem at %s: %v", v.target, err)
		return
	}
	v.files = append(v.files, fileRecord{name: name, seed: seed})
}

// verifyData checks everything written to v so far.
func (r *run) verifyData(v *volume) {
	if v.state != published {
		return
	}
	r.stats.verified++
	if v.kind == "block" {
		dev, err := os.Open(v.target)
		if err != nil {
			r.failf(v, "opening %s: %v", v.target, err)
			return
		}
		defer dev.Close()
		got := make([]byte, blockSize)
		for _, slot := range slices.Sorted(maps.Keys(v.blocks)) {
			_, err := dev.ReadAt(got, slot*blockSize)
			if err != nil {
				r.failf(v, "reading block %d of %s: %v", slot, v.target, err)
				return
			}
			if !bytes.Equal(got, pattern(v.blocks[slot], blockSize)) {
				r.failf(v, "DATA LOST: block %d (offset %d) of %s does not hold what was written", slot, slot*blockSize, v.name)
			}
		}
		return
	}
	for _, f := range v.files {
		ok, err := holdsPattern(filepath.Join(v.target, f.name), f.seed, f.bytes())
		if err != nil {
			r.failf(v, "DATA LOST: %s of %s: %v", f.name, v.name, err)
			continue
		}
		if !ok {
			r.failf(v, "DATA LOST: %s of %s does not hold the %d bytes written", f.name, v.name, f.bytes())
		}
	}
}

// checkSize checks that a published volume shows its whole size: the device
// of a Block volume, the filesystem of a Filesystem volume. An ext4's size is
// read from its superblock (what it keeps for itself varies with how it
// grew); xfs and btrfs report their size through statfs, less what they keep
// at these sizes (xfs its 64 MiB log, btrfs none).
func (r *run) checkSize(v *volume, when string) {
	if v.state != published || v.fsBehind {
		return
	}
	if v.kind == "block" {
		f, err := os.Open(v.target)
		if err != nil {
			r.failf(v, "%s: %v", when, err)
			return
		}
		defer f.Close()
		size, err := f.Seek(0, io.SeekEnd)
		if err == nil && size != v.size {
			r.failf(v, "%s: the block device has %d bytes, the volume %d", when, size, v.size)
		}
		return
	}
	if v.kind == "ext4" {
		dev := sourceOf(v.target)
		if !strings.HasPrefix(dev, "/dev/") {
			return // not on a device of its own (a quota pool)
		}
		size, block, err := ext4Size(dev)
		if err != nil {
			r.failf(v, "%s: %v", when, err)
		} else if size < v.size-block {
			r.failf(v, "%s: the ext4 filesystem has %d MiB, its volume %d MiB: it did not grow", when, size/mib, v.size/mib)
		}
		return
	}
	var st unix.Statfs_t
	if err := unix.Statfs(v.target, &st); err != nil {
		r.failf(v, "%s: statfs %s: %v", when, v.target, err)
		return
	}
	total := int64(st.Blocks) * int64(st.Bsize)
	keep := map[string]int64{"xfs": 72 * mib, "btrfs": 16 * mib}[v.kind]
	if total < v.size-keep {
		r.failf(v, "%s: the %s filesystem has %d MiB, its volume %d MiB: it did not grow", when, v.kind, total/mib, v.size/mib)
	}
}

// sourceOf is the source of the mount at path ("/dev/loop3").
func sourceOf(path string) string {
	infos, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(path))
	if err != nil || len(infos) == 0 {
		return ""
	}
	return infos[len(infos)-1].Source
}

// ext4Size reads an ext4's size and block size from its superblock (1024
// bytes at offset 1024, little endian: block count at 4, log2 of the block
// size less 10 at 24, the count's high half at 0x150 with the 64bit
// feature, 0x80 of the incompatible features at 0x60).
func ext4Size(dev string) (size, block int64, err error) {
	sb, err := readAt(dev, 1024, 1024)
	if err != nil {
		return 0, 0, err
	}
	if binary.LittleEndian.Uint16(sb[0x38:]) != 0xEF53 {
		return 0, 0, fmt.Errorf("%s holds no ext4 superblock", dev)
	}
	block = 1024 << binary.LittleEndian.Uint32(sb[0x18:])
	count := uint64(binary.LittleEndian.Uint32(sb[0x04:]))
	if binary.LittleEndian.Uint32(sb[0x60:])&0x80 != 0 {
		count |= uint64(binary.LittleEndian.Uint32(sb[0x150:])) << 32
	}
	return int64(count) * block, block, nil
}

func writeFile(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func writeAt(path string, off int64, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteAt(data, off); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func readAt(path string, off int64, n int) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b := make([]byte, n)
	_, err = f.ReadAt(b, off)
	return b, err
}

func isMountPoint(path string) bool {
	ok, err := mountinfo.Mounted(path)
	return err == nil && ok
}

// loopDevicesOf lists the loop devices attached to v's image (image pools).
func (r *run) loopDevicesOf(v *volume) []string {
	if r.cfg.backend != "image" {
		return nil
	}
	_, key, _ := strings.Cut(v.id, ".")
	var out []string
	for dev, file := range loopBacking() {
		if strings.HasPrefix(file, r.on(v).poolDir+"/"+key+".") {
			out = append(out, dev)
		}
	}
	slices.Sort(out)
	return out
}

// loopBacking maps every attached loop device to its backing file, as the
// kernel names it (with " (deleted)" once the file is gone).
func loopBacking() map[string]string {
	out := map[string]string{}
	paths, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		dev := "/dev/" + filepath.Base(filepath.Dir(filepath.Dir(p)))
		out[dev] = strings.TrimSpace(string(data))
	}
	return out
}
