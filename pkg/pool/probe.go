package pool

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"time"
	"unsafe"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// ErrNotAnswering: the pool's storage did not answer a probe in time (a
// device that stopped answering keeps the probe in the kernel).
var ErrNotAnswering = errors.New("storage not answering")

// probeWait bounds how long a caller waits for a probe or a volume check,
// whatever its own deadline: health answers must come while they matter.
const probeWait = 5 * time.Second

// probeRun bounds the commands a probe runs once its caller stopped waiting.
const probeRun = time.Minute

// blockSize is what O_DIRECT reads and writes are aligned to.
const blockSize = 4096

// flights runs one check per key at a time on a goroutine of its own and
// never keeps a caller past its context: a check stuck in the kernel on a
// device that stopped answering stays the only one for its key, and every
// caller meanwhile learns that it is stuck. Callers asking while a check
// runs share its result.
type flights struct {
	mu sync.Mutex
	m  map[string]*flight
}

type flight struct {
	done    chan struct{}
	started time.Time
	val     any
	err     error
}

func (f *flights) do(ctx context.Context, key string, fn func() (any, error)) (any, error) {
	f.mu.Lock()
	if f.m == nil {
		f.m = map[string]*flight{}
	}
	c := f.m[key]
	if c == nil {
		c = &flight{done: make(chan struct{}), started: time.Now()}
		f.m[key] = c
		go func() {
			c.val, c.err = fn()
			f.mu.Lock()
			delete(f.m, key)
			f.mu.Unlock()
			close(c.done)
		}()
	}
	f.mu.Unlock()
	select {
	case <-c.done:
		return c.val, c.err
	case <-ctx.Done():
		select {
		case <-c.done:
			return c.val, c.err
		default:
		}
		return nil, fmt.Errorf("%w: no answer after %s", ErrNotAnswering, time.Since(c.started).Round(100*time.Millisecond))
	}
}

// check is do for checks without a result.
func (f *flights) check(ctx context.Context, key string, fn func() error) error {
	_, err := f.do(ctx, key, func() (any, error) { return nil, fn() })
	return err
}

// boundedWait limits ctx to probeWait.
func boundedWait(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, probeWait)
}

// probeDir checks that a pool directory can be listed, written and read
// back from its device: a small file is written, synced (a device that
// fails writes fails the sync), read back with O_DIRECT (past the page
// cache, so from the device) and removed. A filesystem too full for the
// file passes.
func probeDir(dir string) error {
	if _, err := os.ReadDir(dir); err != nil {
		return err
	}
	var rnd [8]byte
	rand.Read(rnd[:])
	name := filepath.Join(dir, fmt.Sprintf(probePrefix+"%x", rnd))
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if full(err) {
		return nil
	}
	if err != nil {
		return err
	}
	defer os.Remove(name)
	buf := alignedBlock()
	copy(buf, "flashpv probe "+name)
	_, werr := f.WriteAt(buf, 0)
	if werr == nil {
		werr = f.Sync()
	}
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if full(werr) {
		return nil // a full filesystem answered: capacity says it is full
	}
	if werr != nil {
		return fmt.Errorf("writing probe file %s: %w", name, werr)
	}
	if err := readFirstBlock(name); err != nil {
		return err
	}
	if err := os.Remove(name); err != nil {
		return err
	}
	return nil
}

// full tells whether err says the filesystem has no room: the device
// works, and a full pool is not a failing one.
func full(err error) bool {
	return errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT)
}

// probePrefix starts the name of a probe's file; a crash in a probe leaves
// one, which the pool's next Open removes (probeLeftover).
const probePrefix = ".probe-"

var probeRE = regexp.MustCompile(`^\.probe-[0-9a-f]{16}$`)

// probeLeftover tells a file a probe made, by its name.
func probeLeftover(name string) bool { return probeRE.MatchString(name) }

// readFirstBlock reads the first block of a file or device with O_DIRECT,
// so from the device rather than the page cache (where the filesystem or
// device refuses O_DIRECT, through the cache).
func readFirstBlock(path string) error {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_DIRECT|unix.O_NOATIME, 0)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EPERM) {
		f, err = os.Open(path)
	}
	if err != nil {
		return err
	}
	defer f.Close()
	buf := alignedBlock()
	if _, err := f.ReadAt(buf, 0); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("reading the first block of %s: %w", path, err)
	}
	return nil
}

// alignedBlock returns a block-sized buffer aligned for O_DIRECT.
func alignedBlock() []byte {
	b := make([]byte, 2*blockSize)
	off := int(uintptr(unsafe.Pointer(&b[0])) & (blockSize - 1))
	if off != 0 {
		off = blockSize - off
	}
	return b[off : off+blockSize]
}

// FilesystemFailing tells whether err says that a pool's filesystem or
// device fails: I/O errors, or a filesystem the kernel made read-only or
// shut down after them.
func FilesystemFailing(err error) bool {
	return errors.Is(err, unix.EIO) || errors.Is(err, unix.EROFS) || errors.Is(err, unix.EUCLEAN)
}

// explainFailing adds to a failing filesystem's error which filesystem it
// is and what brings it back: ext4 turns read-only after an I/O error on
// its journal and XFS shuts itself down after one on its metadata, and
// both stay so when the device heals, until they are mounted again.
func explainFailing(dir string, err error) error {
	if !FilesystemFailing(err) {
		return err
	}
	fs := "the filesystem"
	if m := mountOf(dir); m != nil {
		fs = fmt.Sprintf("the %s filesystem on %s at %s", m.FSType, m.Source, m.Mountpoint)
	}
	return fmt.Errorf("%w; if %s went read-only or shut down after I/O errors, it stays so until it is mounted again: "+
		"once the device is healthy, stop the pods using the pool's volumes so that they are unstaged, unmount it, repair it (e2fsck -f, xfs_repair) and mount it again; "+
		"flashpv lets go of it meanwhile and reports the pool healthy once it can write there", err, fs)
}

// mountOf returns the mount that holds dir, or nil.
func mountOf(dir string) *mountinfo.Info {
	mounts, err := mountinfo.GetMounts(mountinfo.ParentsFilter(dir))
	if err != nil {
		return nil
	}
	var best *mountinfo.Info
	for _, m := range mounts {
		if best == nil || len(m.Mountpoint) >= len(best.Mountpoint) {
			best = m
		}
	}
	return best
}
