// Package fsfreeze freezes mounted filesystems (FIFREEZE) for point-in-time
// copies and makes sure they are thawed again, also by the next process when
// this one dies while a filesystem is frozen: a frozen filesystem left behind
// would hang every application writing to it.
//
// Before a freeze, a record naming the mount point is written atomically into
// a record directory; it is removed after the thaw. A process calls ThawAll at
// start to thaw whatever a predecessor left frozen. The record directory must
// be on a filesystem that is never frozen through it.
package fsfreeze

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"golang.org/x/sys/unix"
)

// The ioctls of linux/fs.h: _IOWR('X', 119, int) and _IOWR('X', 120, int).
const (
	fiFreeze = 0xC0045877
	fiThaw   = 0xC0045878
)

var (
	// ErrFrozen: the filesystem is frozen already, by this Freezer or by
	// someone else (fsfreeze(8), another program).
	ErrFrozen = errors.New("filesystem already frozen")
	// ErrRecordOnTarget: the record directory is on the filesystem to be
	// frozen, so its record could not be removed, nor others written.
	ErrRecordOnTarget = errors.New("freeze record directory is on the filesystem to freeze")
)

// Freezer freezes and thaws filesystems and keeps their records in one
// directory. It is safe for concurrent use.
type Freezer struct {
	dir string

	mu sync.Mutex
	// busy holds the mount points being frozen, frozen or being thawed
	// by this Freezer.
	busy map[string]bool
}

// New returns a Freezer keeping its records in recordDir, which it makes if
// needed. It thaws nothing: call ThawAll for that.
func New(recordDir string) (*Freezer, error) {
	if err := os.MkdirAll(recordDir, 0o700); err != nil {
		return nil, err
	}
	return &Freezer{dir: recordDir, busy: map[string]bool{}}, nil
}

// Freeze freezes the filesystem mounted at mountpoint (an absolute path) once
// its record is durable. A filesystem frozen already fails with ErrFrozen.
// Freezing flushes the filesystem's dirty data and can take long; when ctx
// ends first, Freeze returns ctx's error at once and thaws the filesystem as
// soon as the freeze completes.
func (f *Freezer) Freeze(ctx context.Context, mountpoint string) error {
	mp, err := clean(mountpoint)
	if err != nil {
		return err
	}
	if err := f.claim(mp); err != nil {
		return err
	}
	release := true
	defer func() {
		if release {
			f.release(mp)
		}
	}()
	// A record without a frozen filesystem of ours in this process: a
	// predecessor died with it frozen (or about to be). Thaw it first.
	if _, err := f.thawRecorded(mp); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	fd, dev, err := openMount(mp)
	if err != nil {
		return err
	}
	var rst unix.Stat_t
	if err := unix.Stat(f.dir, &rst); err != nil {
		unix.Close(fd)
		return &os.PathError{Op: "stat", Path: f.dir, Err: err}
	}
	if rst.Dev == dev {
		unix.Close(fd)
		return fmt.Errorf("freeze %s: %w (%s)", mp, ErrRecordOnTarget, f.dir)
	}
	if err := writeRecord(f.dir, record{Mountpoint: mp, Dev: dev}); err != nil {
		unix.Close(fd)
		return err
	}
	done := make(chan error, 1)
	go func() {
		done <- ioctl(fd, fiFreeze)
	}()
	select {
	case err := <-done:
		unix.Close(fd)
		if err != nil {
			if rerr := removeRecord(f.dir, mp); rerr != nil {
				err = errors.Join(err, rerr)
			}
			if errors.Is(err, unix.EBUSY) {
				return fmt.Errorf("freeze %s: %w", mp, ErrFrozen)
			}
			return &os.PathError{Op: "FIFREEZE", Path: mp, Err: err}
		}
		release = false
		return nil
	case <-ctx.Done():
		// The mount point stays claimed until the late freeze is undone.
		release = false
		go func() {
			defer f.release(mp)
			defer unix.Close(fd)
			if err := <-done; err == nil && ioctl(fd, fiThaw) != nil {
				return // the record stays for ThawAll
			}
			removeRecord(f.dir, mp)
		}()
		return ctx.Err()
	}
}

// Thaw thaws the filesystem mounted at mountpoint and removes its record. A
// filesystem that is not frozen, or no longer mounted there, is no error. A
// record naming another filesystem than the one now mounted there (the one
// frozen was unmounted and something else mounted in its place) thaws
// nothing.
func (f *Freezer) Thaw(mountpoint string) error {
	mp, err := clean(mountpoint)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	rec, err := readRecord(f.dir, mp)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	var want uint64
	if err == nil {
		want = rec.Dev
	}
	if _, err := thaw(mp, want); err != nil {
		return err
	}
	delete(f.busy, mp)
	return removeRecord(f.dir, mp)
}

// WithFrozen runs fn with the filesystem at mountpoint frozen and thaws it
// when fn returns or panics, or as soon as ctx ends: an application must not
// stay blocked for a slow fn. In the last case WithFrozen still waits for fn
// (which should heed ctx) before returning ctx's error, since what fn made
// after the thaw is not point-in-time. A panic in fn is raised again, after
// the thaw.
func (f *Freezer) WithFrozen(ctx context.Context, mountpoint string, fn func(context.Context) error) error {
	if err := f.Freeze(ctx, mountpoint); err != nil {
		return err
	}
	type result struct {
		err      error
		panicked bool
		value    any
	}
	done := make(chan result, 1)
	go func() {
		r := result{panicked: true}
		defer func() {
			if r.panicked {
				r.value = recover()
			}
			done <- r
		}()
		r.err = fn(ctx)
		r.panicked = false
	}()
	var r result
	var thawErr error
	select {
	case r = <-done:
		thawErr = f.Thaw(mountpoint)
	case <-ctx.Done():
		thawErr = f.Thaw(mountpoint)
		r = <-done
		if !r.panicked {
			r.err = errors.Join(ctx.Err(), r.err)
		}
	}
	if r.panicked {
		panic(r.value)
	}
	return errors.Join(r.err, thawErr)
}

// ThawAll thaws every filesystem with a record, as at the start of a process
// whose predecessor may have died with filesystems frozen, and removes the
// records. It returns the mount points it found frozen and thawed, and
// carries on past errors, which it joins.
func (f *Freezer) ThawAll() ([]string, error) {
	recs, err := listRecords(f.dir)
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var thawed []string
	var errs []error
	for _, rec := range recs {
		if f.busy[rec.Mountpoint] {
			continue
		}
		was, err := thaw(rec.Mountpoint, rec.Dev)
		if err == nil {
			err = removeRecord(f.dir, rec.Mountpoint)
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if was {
			thawed = append(thawed, rec.Mountpoint)
		}
	}
	return thawed, errors.Join(errs...)
}

// thawRecorded thaws the filesystem of mp's record, if there is one.
func (f *Freezer) thawRecorded(mp string) (bool, error) {
	rec, err := readRecord(f.dir, mp)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	was, err := thaw(mp, rec.Dev)
	if err != nil {
		return false, err
	}
	return was, removeRecord(f.dir, mp)
}

func (f *Freezer) claim(mp string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.busy[mp] {
		return fmt.Errorf("freeze %s: %w (by this process)", mp, ErrFrozen)
	}
	f.busy[mp] = true
	return nil
}

func (f *Freezer) release(mp string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.busy, mp)
}

// thaw thaws the filesystem at mp if it is the filesystem dev (any, when
// dev is 0), and tells whether it was frozen.
func thaw(mp string, dev uint64) (bool, error) {
	fd, now, err := openMount(mp)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer unix.Close(fd)
	if dev != 0 && now != dev {
		return false, nil
	}
	err = ioctl(fd, fiThaw)
	if errors.Is(err, unix.EINVAL) {
		return false, nil // not frozen
	}
	if err != nil {
		return false, &os.PathError{Op: "FITHAW", Path: mp, Err: err}
	}
	return true, nil
}

// openMount opens mp (the directory itself, not following a symlink there)
// and returns its filesystem's device number.
func openMount(mp string) (int, uint64, error) {
	fd, err := unix.Open(mp, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, 0, &os.PathError{Op: "open", Path: mp, Err: err}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return -1, 0, &os.PathError{Op: "stat", Path: mp, Err: err}
	}
	return fd, st.Dev, nil
}

func ioctl(fd int, req uintptr) error {
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, 0)
	if errno != 0 {
		return errno
	}
	return nil
}

func clean(mp string) (string, error) {
	if !filepath.IsAbs(mp) {
		return "", fmt.Errorf("mount point %q is not an absolute path", mp)
	}
	return filepath.Clean(mp), nil
}
