// Package loopdev attaches image files as loop devices with direct I/O and
// finds them again by the identity of their backing file, using the kernel's
// ioctls directly (no losetup process per call).
package loopdev

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// Flags of struct loop_info64, from <linux/loop.h>.
const (
	loFlagsDirectIO = 16
	// BlockSize is the logical block size of every device: it matches the
	// block size of the filesystems inside and of the pool's filesystem, so
	// direct I/O to the image is always aligned.
	BlockSize = 4096
)

// fileID identifies a backing file by device and inode, as the kernel reports
// it for a loop device (LOOP_GET_STATUS64). Unlike the path in sysfs, which is
// printed relative to the reader's mount namespace, it is the same seen from
// any container or after a restart of the driver's pod.
type fileID struct{ dev, ino uint64 }

func statID(file string) (fileID, error) {
	var st unix.Stat_t
	if err := unix.Stat(file, &st); err != nil {
		return fileID{}, err
	}
	return fileID{uint64(st.Dev), st.Ino}, nil
}

// Manager attaches and detaches loop devices. Its cache maps backing files to
// devices; every hit is verified with the kernel, and a miss rescans all loop
// devices unless the file is provably open nowhere else (then no device can
// hold it), so the kernel stays the source of truth: restarts, and devices
// attached or detached by others, are seen.
type Manager struct {
	sysBlock string // /sys/block
	devDir   string // /dev

	mu      sync.Mutex
	byID    map[fileID]string
	scanned bool // byID was built by a scan once, then kept up to date
}

// New returns a manager for the host's loop devices.
func New() *Manager {
	return &Manager{sysBlock: "/sys/block", devDir: "/dev", byID: map[fileID]string{}}
}

// Find returns the device a file is attached to, or "" when it is not.
func (m *Manager) Find(file string) (string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	f, err := os.Open(file)
	if errors.Is(err, os.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		// A filesystem that shut down after I/O errors refuses to open
		// the file; its device must still be found to be taken down.
		if dev := m.findByPath(file); dev != "" {
			return dev, nil
		}
		return "", err
	}
	defer f.Close()
	return m.find(f)
}

// findByPath looks for the device bound to file by the backing file path
// sysfs shows (relative to this process's mount namespace, so only a
// fallback for a file that cannot be opened), or "".
func (m *Manager) findByPath(file string) string {
	entries, err := os.ReadDir(m.sysBlock)
	if err != nil {
		return ""
	}
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), "loop") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(m.sysBlock, e.Name(), "loop", "backing_file"))
		if err == nil && strings.TrimSuffix(string(b), "\n") == file {
			return filepath.Join(m.devDir, e.Name())
		}
	}
	return ""
}

// idOf is statID of an open file.
func idOf(f *os.File) (fileID, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return fileID{}, err
	}
	return fileID{uint64(st.Dev), st.Ino}, nil
}

// find looks up the device of the open file f.
func (m *Manager) find(f *os.File) (string, error) {
	id, err := idOf(f)
	if err != nil {
		return "", err
	}
	if dev, ok := m.byID[id]; ok {
		if got, ok := backingID(dev); ok && got == id {
			return dev, nil
		}
		delete(m.byID, id)
	}
	// Scanning costs an open and an ioctl per bound loop device. A device
	// holds its backing file open; a file that nobody else has open is
	// attached nowhere. The kernel grants a write lease only to a file's
	// sole opener, which makes the lease a cheap test.
	if m.scanned && soleOpener(f) {
		return "", nil
	}
	if err := m.scan(); err != nil {
		return "", err
	}
	return m.byID[id], nil
}

// soleOpener reports whether f is the only open file of its inode.
func soleOpener(f *os.File) bool {
	fd := int(f.Fd())
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETLEASE, unix.F_WRLCK); err != nil {
		return false // someone has it open, or leases are off here
	}
	unix.FcntlInt(uintptr(fd), unix.F_SETLEASE, unix.F_UNLCK)
	return true
}

// Limit caps how many files of some directories may be attached.
type Limit struct {
	Dirs []string
	// Check gets how many files of Dirs are attached and refuses one more
	// with an error.
	Check func(attached int) error
}

// Attached returns the files in dirs that are attached, with their devices,
// from one scan of the loop devices.
func (m *Manager) Attached(dirs ...string) (map[string]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.scan(); err != nil {
		return nil, err
	}
	return m.attachedIn(dirs, false)
}

// attachedIn looks up the files of dirs in the cache. With skipUnreadable,
// a directory that cannot be read (its filesystem failed) counts nothing
// rather than refusing the answer, so that it does not stop the others.
func (m *Manager) attachedIn(dirs []string, skipUnreadable bool) (map[string]string, error) {
	out := map[string]string{}
	for _, dir := range dirs {
		entries, err := os.ReadDir(dir)
		if err != nil && skipUnreadable {
			klog.InfoS("Counting attached files without an unreadable directory", "dir", dir, "err", err)
			continue
		}
		if err != nil {
			return nil, err
		}
		for _, e := range entries {
			file := filepath.Join(dir, e.Name())
			if id, err := statID(file); err == nil && m.byID[id] != "" {
				out[file] = m.byID[id]
			}
		}
	}
	return out, nil
}

// scan rebuilds the cache from every bound loop device.
func (m *Manager) scan() error {
	entries, err := os.ReadDir(m.sysBlock)
	if err != nil {
		return err
	}
	found := map[fileID]string{}
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), "loop") {
			continue
		}
		// Only bound devices have a backing_file; skipping the others saves
		// opening every idle device.
		if _, err := os.Stat(filepath.Join(m.sysBlock, e.Name(), "loop", "backing_file")); err != nil {
			continue
		}
		dev := filepath.Join(m.devDir, e.Name())
		if id, ok := backingID(dev); ok {
			found[id] = dev
		}
	}
	m.byID = found
	m.scanned = true
	return nil
}

// backingID asks the kernel which file a device is bound to.
func backingID(dev string) (fileID, bool) {
	f, err := os.OpenFile(dev, os.O_RDONLY, 0)
	if err != nil {
		return fileID{}, false
	}
	defer f.Close()
	info, err := unix.IoctlLoopGetStatus64(int(f.Fd()))
	if err != nil {
		return fileID{}, false
	}
	return fileID{info.Device, info.Inode}, true
}

// Attach binds file to a free loop device, or returns the device it is already
// bound to.
func (m *Manager) Attach(file string) (string, error) {
	return m.AttachLimited(file, nil)
}

// AttachLimited is Attach with a limit: when file is not attached yet, limit
// (if not nil) gets the attached files of the directories it names and may
// refuse. It scans the loop devices once, however many there are.
func (m *Manager) AttachLimited(file string, limit *Limit) (string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	img, err := os.OpenFile(file, os.O_RDWR, 0)
	if err != nil {
		return "", err
	}
	defer img.Close()
	id, err := idOf(img)
	if err != nil {
		return "", err
	}
	if dev, err := m.find(img); err != nil || dev != "" {
		return dev, err
	}
	// The cache holds every device bound since the last scan (find made
	// sure there was one); stale entries can only count too many.
	if limit != nil {
		att, err := m.attachedIn(limit.Dirs, true)
		if err != nil {
			return "", err
		}
		if err := limit.Check(len(att)); err != nil {
			return "", err
		}
	}
	ctl, err := os.OpenFile(filepath.Join(m.devDir, "loop-control"), os.O_RDWR, 0)
	if err != nil {
		return "", err
	}
	defer ctl.Close()
	// Another program may take the free device between GET_FREE and
	// CONFIGURE; the kernel then answers EBUSY and we ask again.
	for attempt := 0; attempt < 16; attempt++ {
		n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return "", fmt.Errorf("LOOP_CTL_GET_FREE: %w", err)
		}
		dev := filepath.Join(m.devDir, "loop"+strconv.Itoa(n))
		err = configure(dev, img)
		if errors.Is(err, unix.EBUSY) {
			continue
		}
		if err != nil {
			return "", err
		}
		m.byID[id] = dev
		m.tune(dev)
		return dev, nil
	}
	return "", fmt.Errorf("no free loop device for %s after repeated attempts", file)
}

func configure(dev string, img *os.File) error {
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	cfg := unix.LoopConfig{Fd: uint32(img.Fd()), Size: BlockSize}
	cfg.Info.Flags = loFlagsDirectIO
	copy(cfg.Info.File_name[:len(cfg.Info.File_name)-1], img.Name())
	if err := unix.IoctlLoopConfigure(int(f.Fd()), &cfg); err != nil {
		return fmt.Errorf("LOOP_CONFIGURE %s: %w", dev, err)
	}
	return nil
}

// tune sets what makes a loop device cheap to go through: no I/O scheduler
// (the pool's own device schedules) and a check that direct I/O took effect.
func (m *Manager) tune(dev string) {
	queue := filepath.Join(m.sysBlock, filepath.Base(dev), "queue")
	if err := os.WriteFile(filepath.Join(queue, "scheduler"), []byte("none"), 0); err != nil {
		klog.V(4).InfoS("Could not set I/O scheduler", "device", dev, "err", err)
	}
	dio, _ := os.ReadFile(filepath.Join(m.sysBlock, filepath.Base(dev), "loop", "dio"))
	if strings.TrimSpace(string(dio)) != "1" {
		klog.InfoS("Loop device runs without direct I/O; the pool's filesystem does not support it", "device", dev)
	}
}

// Detach unbinds the device of file. A file that is not attached is fine. If
// the device is still open (a mount, a process), the kernel defers the detach
// until the last user closes it; ErrBusy tells the caller.
func (m *Manager) Detach(file string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	img, err := os.Open(file)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	var id fileID
	var dev string
	if err != nil {
		// The file's filesystem shut down: detach by the path sysfs shows.
		if dev = m.findByPath(file); dev == "" {
			return err
		}
		id, _ = backingID(dev)
	} else {
		defer img.Close()
		if id, err = idOf(img); err != nil {
			return err
		}
		if dev, err = m.find(img); err != nil || dev == "" {
			return err
		}
	}
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	err = unix.IoctlSetInt(int(f.Fd()), unix.LOOP_CLR_FD, 0)
	f.Close()
	if err != nil && !errors.Is(err, unix.ENXIO) {
		return fmt.Errorf("LOOP_CLR_FD %s: %w", dev, err)
	}
	delete(m.byID, id)
	// Programs that look at every loop device (udev's probes, blkid, another
	// flashpv's scan) hold one open for a moment; the kernel then finishes
	// the detach when they close it. Only a device still held after that
	// grace is busy.
	for deadline := time.Now().Add(detachGrace); ; time.Sleep(10 * time.Millisecond) {
		if got, ok := backingID(dev); !ok || got != id {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w: %s stays attached until its last user closes it", ErrBusy, dev)
		}
	}
}

// detachGrace is how long Detach waits for brief openers of a device.
const detachGrace = time.Second

// ErrBusy means a detach was deferred by the kernel.
var ErrBusy = errors.New("loop device busy")

// Refresh makes the device pick up its backing file's new size.
func Refresh(dev string) error {
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.IoctlSetInt(int(f.Fd()), unix.LOOP_SET_CAPACITY, 0); err != nil {
		return fmt.Errorf("LOOP_SET_CAPACITY %s: %w", dev, err)
	}
	return nil
}

// Size returns the size in bytes of a block device.
func Size(dev string) (int64, error) {
	f, err := os.Open(dev)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var size uint64
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.BLKGETSIZE64, uintptr(unsafe.Pointer(&size))); errno != 0 {
		return 0, fmt.Errorf("BLKGETSIZE64 %s: %w", dev, errno)
	}
	return int64(size), nil
}
