// Package lvm runs LVM2 commands for the lvm pool backend: reports parsed
// from their JSON output, logical volumes created, grown, tagged and removed,
// and the failures that matter (no such VG or LV, no space, name taken)
// told apart by LVM's own messages.
package lvm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"k8s.io/klog/v2"
)

var (
	ErrNotFound = errors.New("not found")          // VG or LV does not exist
	ErrNoSpace  = errors.New("insufficient space") // not enough free extents, or thin pool over its threshold
	ErrExists   = errors.New("already exists")     // lvcreate of a name the VG already has
	ErrInvalid  = errors.New("invalid argument")   // refused before running anything

	// ErrNoThinDevice is an activation of a thin LV whose pool has no thin
	// device for it: the kernel refuses the table with ENODATA. LVM commits
	// a new thin LV to the VG's metadata before it asks the pool to make its
	// device, so an lvcreate killed in between leaves such an LV. It never
	// held data; lvremove removes it.
	ErrNoThinDevice = errors.New("thin device missing from its pool")

	// ErrVGNotFound is the ErrNotFound of a missing VG (a disk that is not
	// there, say), for callers that must not take it for a missing LV.
	ErrVGNotFound = fmt.Errorf("volume group %w", ErrNotFound)
)

// VG is a volume group as vgs reports it.
type VG struct {
	Name       string
	Size, Free int64 // bytes
	ExtentSize int64 // bytes
	PVCount    int
	Tags       []string
}

// LV is a logical volume as lvs reports it.
type LV struct {
	Name, VG        string
	Path            string // lv_path, /dev/vg/lv; empty for thin pools, which have no device of their own
	Size            int64  // bytes; the virtual size of a thin LV
	Attr            string // lv_attr, e.g. -wi-a----- or twi-aotz--
	Tags            []string
	Pool            string // pool_lv: the thin pool of a thin LV
	SegType         string // segtype of the first segment: linear, striped, thin, thin-pool...
	Stripes         int    // of the first segment
	DataPercent     float64
	MetadataPercent float64 // both of thin pools and thin LVs, when active; 0 when not reported
	Zero            bool    // a thin pool (or a thin LV's pool) zeroes blocks before handing them out
	Active          bool
}

// IsThinPool tells whether the LV is a thin pool.
func (l LV) IsThinPool() bool { return l.SegType == "thin-pool" || attrChar(l.Attr, 0) == 't' }

// IsThin tells whether the LV is a thin volume (in a thin pool).
func (l LV) IsThin() bool { return l.SegType == "thin" || attrChar(l.Attr, 0) == 'V' }

// ZeroesNewBlocks tells whether a thin pool (or the pool of a thin LV)
// zeroes each block the first time it is written, so that no LV ever reads
// what an earlier one left there.
func (l LV) ZeroesNewBlocks() bool { return l.Zero }

func attrChar(attr string, i int) byte {
	if len(attr) <= i {
		return 0
	}
	return attr[i]
}

// CreateOptions describes a new LV.
type CreateOptions struct {
	VG, Name   string
	Size       int64 // bytes, passed exactly; LVM rounds up to whole extents
	Tags       []string
	ThinPool   string // non-empty: a thin LV of virtual size Size in this thin pool
	Stripes    int    // >1: striped over that many PVs (thick only)
	StripeSize int64  // bytes; 0 leaves LVM's default
	Activate   bool   // false creates it inactive (and so not zeroed)
}

// DefaultTimeout bounds each command unless WithTimeout says otherwise.
const DefaultTimeout = 2 * time.Minute

// Runner runs lvm commands. Mutating commands are serialised per volume
// group; reports run concurrently.
type Runner struct {
	binary    string
	args      []string
	timeout   time.Duration
	killGrace time.Duration
	exec      execFunc

	mu    sync.Mutex
	locks map[string]chan struct{} // one slot per VG; a channel so waiting heeds the context
}

// New returns a Runner of the lvm binary found in PATH.
func New() *Runner {
	r := &Runner{binary: "lvm", timeout: DefaultTimeout, killGrace: 10 * time.Second, locks: map[string]chan struct{}{}}
	r.exec = r.realExec
	return r
}

// WithTimeout sets the time each command may take; it returns r.
func (r *Runner) WithTimeout(d time.Duration) *Runner {
	r.timeout = d
	return r
}

// WithArgs adds arguments that every command gets after its subcommand, such
// as --devices (limit LVM to some devices) or --config (override lvm.conf);
// it returns r.
func (r *Runner) WithArgs(args ...string) *Runner {
	r.args = append(r.args, args...)
	return r
}

// VG reports a volume group; ErrVGNotFound when there is none of that name.
func (r *Runner) VG(ctx context.Context, name string) (*VG, error) {
	if err := checkNames(name); err != nil {
		return nil, err
	}
	var rep report
	if err := r.report(ctx, &rep, "vgs", vgFields, name); err != nil {
		return nil, err
	}
	vgs, err := rep.vgs()
	if err != nil {
		return nil, fmt.Errorf("lvm vgs %s: %w", name, err)
	}
	if len(vgs) == 0 {
		return nil, fmt.Errorf("volume group %s: %w", name, ErrVGNotFound)
	}
	return &vgs[0], nil
}

// LVs reports the visible LVs of a volume group, thin pools included (their
// data and metadata sub-LVs are hidden); ErrVGNotFound when there is no VG.
func (r *Runner) LVs(ctx context.Context, vg string) ([]LV, error) {
	if err := checkNames(vg); err != nil {
		return nil, err
	}
	var rep report
	if err := r.report(ctx, &rep, "lvs", lvFields, vg); err != nil {
		return nil, err
	}
	lvs, err := rep.lvs()
	if err != nil {
		return nil, fmt.Errorf("lvm lvs %s: %w", vg, err)
	}
	return lvs, nil
}

// LV reports one LV; ErrNotFound when it does not exist, ErrVGNotFound
// (which is an ErrNotFound too) when its VG does not.
func (r *Runner) LV(ctx context.Context, vg, name string) (*LV, error) {
	if err := checkNames(vg, name); err != nil {
		return nil, err
	}
	var rep report
	if err := r.report(ctx, &rep, "lvs", lvFields, vg+"/"+name); err != nil {
		return nil, err
	}
	lvs, err := rep.lvs()
	if err != nil {
		return nil, fmt.Errorf("lvm lvs %s/%s: %w", vg, name, err)
	}
	if len(lvs) == 0 {
		return nil, fmt.Errorf("logical volume %s/%s: %w", vg, name, ErrNotFound)
	}
	return &lvs[0], nil
}

// Create makes an LV with its tags in one metadata commit. It fails with
// ErrExists when the name is taken, ErrNoSpace when the VG lacks the extents
// (or the thin pool is over its threshold), ErrNotFound without the VG or
// thin pool.
func (r *Runner) Create(ctx context.Context, o CreateOptions) error {
	args, err := createArgs(o)
	if err != nil {
		return err
	}
	return r.mutate(ctx, o.VG, "lvcreate", args...)
}

func createArgs(o CreateOptions) ([]string, error) {
	if err := checkNames(o.VG, o.Name); err != nil {
		return nil, err
	}
	if err := checkTags(o.Tags); err != nil {
		return nil, err
	}
	switch {
	case o.Size <= 0:
		return nil, fmt.Errorf("%w: size %d", ErrInvalid, o.Size)
	case o.Stripes < 0 || o.StripeSize < 0:
		return nil, fmt.Errorf("%w: stripes %d of %d bytes", ErrInvalid, o.Stripes, o.StripeSize)
	case o.ThinPool != "" && o.Stripes > 1:
		return nil, fmt.Errorf("%w: a thin LV is striped by its pool", ErrInvalid)
	}
	// -y answers LVM's questions (wipe a signature found on the new LV?).
	args := []string{"-y", "-n", o.Name}
	if o.ThinPool != "" {
		if err := checkNames(o.ThinPool); err != nil {
			return nil, err
		}
		args = append(args, "-V", bytesArg(o.Size), "--thinpool", o.ThinPool)
	} else {
		args = append(args, "-L", bytesArg(o.Size))
		if o.Stripes > 1 {
			args = append(args, "-i", strconv.Itoa(o.Stripes))
			if o.StripeSize > 0 {
				args = append(args, "-I", bytesArg(o.StripeSize))
			}
		}
	}
	for _, t := range o.Tags {
		args = append(args, "--addtag", t)
	}
	switch {
	case o.Activate:
		args = append(args, "-ay")
	case o.ThinPool == "":
		// An inactive LV cannot be zeroed or wiped; LVM 2.03 skips both on
		// its own, 2.02 refuses -an without --zero n.
		args = append(args, "-an", "--zero", "n", "--wipesignatures", "n")
	default:
		// For a thin LV --zero is the pool's setting and refused here.
		args = append(args, "-an")
	}
	return append(args, o.VG), nil
}

// Extend grows an LV to size bytes (rounded up to extents by LVM); the
// filesystem on it is not touched. An LV already that large or larger is not
// an error: lvextend never shrinks, and a retry after a timeout that was not
// one must succeed.
func (r *Runner) Extend(ctx context.Context, vg, name string, size int64) error {
	if err := checkNames(vg, name); err != nil {
		return err
	}
	if size <= 0 {
		return fmt.Errorf("%w: size %d", ErrInvalid, size)
	}
	err := r.mutate(ctx, vg, "lvextend", "-L", bytesArg(size), vg+"/"+name)
	var e *Error
	if errors.As(err, &e) && e.ExitCode > 0 &&
		(strings.Contains(e.Stderr, "matches existing size") || strings.Contains(e.Stderr, "not larger than existing size")) {
		return nil
	}
	return err
}

// Remove removes an LV, active or not; ErrNotFound when it does not exist,
// ErrVGNotFound when its VG does not.
func (r *Runner) Remove(ctx context.Context, vg, name string) error {
	if err := checkNames(vg, name); err != nil {
		return err
	}
	return r.mutate(ctx, vg, "lvremove", "-y", vg+"/"+name)
}

// Activate activates an LV, so that /dev/vg/lv exists.
func (r *Runner) Activate(ctx context.Context, vg, name string) error {
	if err := checkNames(vg, name); err != nil {
		return err
	}
	return r.mutate(ctx, vg, "lvchange", "-ay", vg+"/"+name)
}

// SetTags adds and deletes tags of an LV in one metadata commit. Adding a tag
// it has, or deleting one it lacks, is not an error.
func (r *Runner) SetTags(ctx context.Context, vg, name string, add, del []string) error {
	if err := checkNames(vg, name); err != nil {
		return err
	}
	if err := checkTags(append(add[:len(add):len(add)], del...)); err != nil {
		return err
	}
	if len(add)+len(del) == 0 {
		return nil
	}
	var args []string
	for _, t := range add {
		args = append(args, "--addtag", t)
	}
	for _, t := range del {
		args = append(args, "--deltag", t)
	}
	return r.mutate(ctx, vg, "lvchange", append(args, vg+"/"+name)...)
}

// bytesArg is a size in bytes as LVM reads it: "b" is the bytes unit.
func bytesArg(n int64) string { return strconv.FormatInt(n, 10) + "b" }

// mutate runs a command that changes a VG, one at a time per VG. LVM's own
// file lock would serialise them too, but waiting in lvm for that lock counts
// against the command's timeout, and a queue of goroutines each holding a
// process is worse than a queue here.
func (r *Runner) mutate(ctx context.Context, vg, cmd string, args ...string) error {
	r.mu.Lock()
	slot, ok := r.locks[vg]
	if !ok {
		slot = make(chan struct{}, 1)
		r.locks[vg] = slot
	}
	r.mu.Unlock()
	select {
	case slot <- struct{}{}:
		defer func() { <-slot }()
	case <-ctx.Done():
		return fmt.Errorf("lvm %s %s: waiting for other commands on the VG: %w", cmd, args[len(args)-1], ctx.Err())
	}
	_, err := r.run(ctx, cmd, args...)
	return err
}

// Error is a failed lvm command.
type Error struct {
	Cmd      string        // the subcommand and its target, e.g. "lvcreate vg0"
	ExitCode int           // -1 when it did not exit by itself
	Stderr   string        // its lines trimmed, joined by "; "
	Timeout  time.Duration // the Runner's, when that ran out
	Err      error         // ErrNotFound, ErrVGNotFound, ErrNoSpace, ErrExists, a context's error, or nil
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("lvm " + e.Cmd + ": ")
	switch {
	case e.Timeout > 0:
		fmt.Fprintf(&b, "timed out after %v", e.Timeout)
	case e.ExitCode >= 0:
		fmt.Fprintf(&b, "exit code %d", e.ExitCode)
	case e.Err != nil:
		b.WriteString(e.Err.Error())
	default:
		b.WriteString("failed")
	}
	if e.Stderr != "" {
		b.WriteString(": " + e.Stderr)
	}
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// result is how a command ended: code is its exit status.
type result struct {
	stdout, stderr []byte
	code           int
}

// execFunc runs a command to its end; an error means it did not exit by
// itself (it could not start, or was killed).
type execFunc func(ctx context.Context, argv []string) (result, error)

// run runs `lvm cmd args...` under the Runner's timeout. The target of the
// command, which names it in errors, is its last argument.
func (r *Runner) run(ctx context.Context, cmd string, args ...string) ([]byte, error) {
	argv := append([]string{r.binary, cmd}, r.args...)
	argv = append(argv, args...)
	name := cmd + " " + args[len(args)-1]
	cctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	start := time.Now()
	res, err := r.exec(cctx, argv)
	klog.V(4).InfoS("lvm", "cmd", name, "duration", time.Since(start), "exit", res.code, "err", err)
	if err == nil && res.code == 0 {
		return res.stdout, nil
	}
	e := &Error{Cmd: name, ExitCode: -1, Stderr: joinLines(res.stderr), Err: err}
	switch {
	case ctx.Err() != nil:
		e.Err = ctx.Err()
	case cctx.Err() != nil:
		e.Err, e.Timeout = cctx.Err(), r.timeout
	case err == nil:
		e.ExitCode, e.Err = res.code, classify(res.stderr)
	}
	return nil, e
}

// realExec runs the command with LVM_SUPPRESS_FD_WARNINGS (lvm complains of
// every inherited descriptor otherwise) and LC_ALL=C (lvm calls setlocale,
// and a decimal comma would break the percentages). On timeout it gets
// SIGTERM, which lvm holds off while it has a VG locked, so a metadata
// update is not cut in half; SIGKILL follows after killGrace.
func (r *Runner) realExec(ctx context.Context, argv []string) (result, error) {
	c := exec.CommandContext(ctx, argv[0], argv[1:]...)
	c.Env = append(os.Environ(), "LVM_SUPPRESS_FD_WARNINGS=1", "LC_ALL=C")
	var stdout, stderr bytes.Buffer
	c.Stdout, c.Stderr = &stdout, &stderr
	// Its own process group, signalled whole; SIGTERM too if flashpv dies
	// (lvm finishes a metadata update it holds a lock for, then stops).
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	c.Cancel = func() error { return syscall.Kill(-c.Process.Pid, syscall.SIGTERM) }
	c.WaitDelay = r.killGrace
	err := c.Run()
	res := result{stdout.Bytes(), stderr.Bytes(), -1}
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.Exited() && ctx.Err() == nil {
		res.code, err = ee.ExitCode(), nil
	} else if err == nil {
		res.code = 0
	}
	return res, err
}

// joinLines makes stderr one line for an error message, keeping its end
// (where the error is) when it is long.
func joinLines(b []byte) string {
	var lines []string
	for _, l := range strings.Split(string(b), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, l)
		}
	}
	s := strings.Join(lines, "; ")
	if len(s) > 2000 {
		s = "..." + s[len(s)-2000:]
	}
	return s
}

// Messages of LVM 2.03 (lib/metadata/lv_manip.c, lib/metadata/metadata.c,
// lib/metadata/thin_manip.c, tools/toollib.c, tools/lvcreate.c,
// tools/lvresize.c), matched on the lower-cased lines of stderr.
var failures = []struct {
	re  *regexp.Regexp
	err error
}{
	// Volume group "vg0" not found (but not vgremove's "Volume group "vg0"
	// not found, is inconsistent or has PVs missing.")
	{regexp.MustCompile(`^volume group "[^"]*" not found\.?$`), ErrVGNotFound},
	// Failed to find logical volume "vg0/lv1"
	{regexp.MustCompile(`failed to find logical volume`), ErrNotFound},
	// Logical volume lv1 not found in volume group vg0. (lvextend)
	// Pool tp not found in Volume group vg0. (lvcreate --thinpool)
	{regexp.MustCompile(`not found in volume group`), ErrNotFound},
	// Volume group "vg0" has insufficient free space (10 extents): 25 required.
	// Insufficient free space: 25 extents needed, but only 10 available
	{regexp.MustCompile(`insufficient free space`), ErrNoSpace},
	// Insufficient suitable allocatable extents for logical volume lv1: 28 more required
	{regexp.MustCompile(`insufficient suitable (contiguous )?allocatable extents`), ErrNoSpace},
	// Cannot create new thin volume, free space in thin pool vg0/tp reached threshold.
	// Free space in pool vg0/tp is above threshold, new volumes are not allowed.
	{regexp.MustCompile(`free space in (thin )?pool .* (reached|is above) threshold`), ErrNoSpace},
	// Logical Volume "lv1" already exists in volume group "vg0"
	// Logical volume lv1 already exists in Volume group vg0.
	{regexp.MustCompile(`already exists in volume group`), ErrExists},
	// device-mapper: reload ioctl on  (253:4) failed: No data available
	{regexp.MustCompile(`reload ioctl .*failed: no data available`), ErrNoThinDevice},
}

// classify finds a known failure in a failed command's stderr. Warnings are
// skipped: "Sum of all thin volume sizes ... exceeds the size of thin pools"
// is one, and commands that print it succeed.
func classify(stderr []byte) error {
	for _, l := range strings.Split(strings.ToLower(string(stderr)), "\n") {
		l = strings.TrimSpace(l)
		if strings.HasPrefix(l, "warning:") {
			continue
		}
		for _, f := range failures {
			if f.re.MatchString(l) {
				return f.err
			}
		}
	}
	return nil
}

// SnapshotOptions describe a thin snapshot of a thin LV.
type SnapshotOptions struct {
	VG, Origin, Name string
	Tags             []string
	// Activate activates the snapshot now and lets it be activated later
	// (-kn -ay); otherwise activation is skipped (-ky) until it is cleared:
	// a snapshot that is only kept has no device.
	Activate bool
}

// Snapshot makes a thin snapshot of a thin LV (or of a thin snapshot). An
// active origin is suspended for an instant, which flushes its I/O and
// freezes a filesystem mounted from it.
func (r *Runner) Snapshot(ctx context.Context, o SnapshotOptions) error {
	if err := checkNames(o.VG, o.Origin, o.Name); err != nil {
		return err
	}
	if err := checkTags(o.Tags); err != nil {
		return err
	}
	args := []string{"-y", "-s", "-n", o.Name}
	for _, t := range o.Tags {
		args = append(args, "--addtag", t)
	}
	if o.Activate {
		args = append(args, "-kn", "-ay")
	} else {
		args = append(args, "-ky")
	}
	return r.mutate(ctx, o.VG, "lvcreate", append(args, o.VG+"/"+o.Origin)...)
}

// ActivateSkipped activates an LV even when its activation is skipped (a
// thin snapshot kept inactive), to wipe it, say.
func (r *Runner) ActivateSkipped(ctx context.Context, vg, name string) error {
	if err := checkNames(vg, name); err != nil {
		return err
	}
	return r.mutate(ctx, vg, "lvchange", "-ay", "-K", vg+"/"+name)
}
