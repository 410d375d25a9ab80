// Package loopdev attaches image files as loop devices with direct I/O and
// finds them again by their backing file, using the kernel's ioctls directly
// (no losetup process per call).
package loopdev

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
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

// Manager attaches and detaches loop devices. Its cache maps a backing file to
// its device; every hit is verified against sysfs, and a miss rescans sysfs, so
// the kernel stays the source of truth (restarts and detaches done by others
// are seen).
type Manager struct {
	sysBlock string // /sys/block
	devDir   string // /dev

	mu     sync.Mutex
	byFile map[string]string
}

// New returns a manager for the host's loop devices.
func New() *Manager {
	return &Manager{sysBlock: "/sys/block", devDir: "/dev", byFile: map[string]string{}}
}

// Find returns the device a file is attached to, or "" when it is not.
func (m *Manager) Find(file string) (string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.find(file)
}

func (m *Manager) find(file string) (string, error) {
	if dev, ok := m.byFile[file]; ok {
		if m.backingFile(dev) == file {
			return dev, nil
		}
		delete(m.byFile, file)
	}
	if err := m.scan(); err != nil {
		return "", err
	}
	return m.byFile[file], nil
}

// Attached returns the backing files under dir that are attached, with their
// devices.
func (m *Manager) Attached(dir string) (map[string]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.scan(); err != nil {
		return nil, err
	}
	out := map[string]string{}
	prefix := filepath.Clean(dir) + "/"
	for f, d := range m.byFile {
		if strings.HasPrefix(f, prefix) {
			out[f] = d
		}
	}
	return out, nil
}

func (m *Manager) scan() error {
	entries, err := os.ReadDir(m.sysBlock)
	if err != nil {
		return err
	}
	found := map[string]string{}
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), "loop") {
			continue
		}
		dev := filepath.Join(m.devDir, e.Name())
		if f := m.backingFile(dev); f != "" {
			found[f] = dev
		}
	}
	m.byFile = found
	return nil
}

// backingFile reads a device's backing file from sysfs ("" when unbound).
func (m *Manager) backingFile(dev string) string {
	data, err := os.ReadFile(filepath.Join(m.sysBlock, filepath.Base(dev), "loop", "backing_file"))
	if err != nil {
		return ""
	}
	return strings.TrimSuffix(string(data), "\n")
}

// Attach binds file to a free loop device, or returns the device it is already
// bound to.
func (m *Manager) Attach(file string) (string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if dev, err := m.find(file); err != nil || dev != "" {
		return dev, err
	}
	img, err := os.OpenFile(file, os.O_RDWR, 0)
	if err != nil {
		return "", err
	}
	defer img.Close()
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
		m.byFile[file] = dev
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
	dev, err := m.find(file)
	if err != nil || dev == "" {
		return err
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
	delete(m.byFile, file)
	if m.backingFile(dev) == file {
		return fmt.Errorf("%w: %s stays attached until its last user closes it", ErrBusy, dev)
	}
	return nil
}

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
