package fault

import (
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// poolContents lists what the pool holds: the files of an image or quota
// pool's directory, the logical volumes of an lvm pool's volume group.
func (r *run) poolContents() []string {
	var out []string
	switch {
	case r.poolDir != "":
		entries, err := os.ReadDir(r.poolDir)
		if err != nil {
			r.fatal(err)
		}
		for _, e := range entries {
			out = append(out, e.Name())
		}
	case strings.HasPrefix(r.poolArg, "lvm:"):
		vg, _, _ := strings.Cut(strings.TrimPrefix(r.poolArg, "lvm:"), ",")
		data, err := exec.Command("lvm", "lvs", "--noheadings", "-o", "lv_name", vg).Output()
		if err != nil {
			r.fatal(fmt.Errorf("lvm lvs %s: %v", vg, err))
		}
		out = strings.Fields(string(data))
	}
	slices.Sort(out)
	return out
}

// mountsUnder lists the mount points below dir, deepest last.
func mountsUnder(dir string) []string {
	data, _ := os.ReadFile("/proc/self/mountinfo")
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			out = append(out, f[4])
		}
	}
	return out
}

// poolLoopDevices lists the loop devices whose backing file is (or was) in
// the pool directory.
func (r *run) poolLoopDevices() []string {
	if r.poolDir == "" {
		return nil
	}
	var out []string
	for dev, file := range loopBacking() {
		if strings.HasPrefix(file, r.poolDir+"/") {
			out = append(out, dev+" ("+file+")")
		}
	}
	sort.Strings(out)
	return out
}

// checkLeftovers fails the run for anything the volumes left behind once all
// were deleted and the driver stopped.
func (r *run) checkLeftovers() {
	if m := mountsUnder(r.root); len(m) > 0 {
		r.failf(nil, "mounts left after every volume was deleted: %v", m)
	}
	if devs := r.poolLoopDevices(); len(devs) > 0 {
		r.failf(nil, "loop devices left attached to pool images: %v", devs)
	}
	// The state directory keeps freeze records and the metadata copies of
	// offline ext4 growths only while they are needed.
	if left := filesUnder(r.stateDir); len(left) > 0 {
		r.failf(nil, "the driver's state directory holds %v after every volume was deleted", left)
	}
	if got := r.poolContents(); !slices.Equal(got, r.baseline) {
		r.failf(nil, "the pool holds %v after every volume was deleted; empty it held %v", got, r.baseline)
	}
}

// cleanup undoes whatever the run left, also when it failed: it kills the
// driver it started, unmounts everything below the run's directory and
// detaches the loop devices of the pool's images. The pool itself goes with
// the harness's cleanup, which runs after this one.
func (r *run) cleanup() {
	if r.drv != nil {
		victims := r.drv.signalGroup(nil)
		if err := r.drv.waitGone(victims); err != nil {
			r.t.Logf("cleanup: %v", err)
		}
		r.drv = nil
	}
	m := mountsUnder(r.root)
	for i := len(m) - 1; i >= 0; i-- {
		if err := unix.Unmount(m[i], 0); err != nil {
			r.t.Logf("cleanup: unmount %s: %v; detaching it", m[i], err)
			unix.Unmount(m[i], unix.MNT_DETACH)
		}
	}
	if r.poolDir == "" {
		return
	}
	for dev, file := range loopBacking() {
		if strings.HasPrefix(file, r.poolDir+"/") {
			if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
				r.t.Logf("cleanup: losetup -d %s: %v: %s", dev, err, out)
			}
		}
	}
}

// filesUnder lists the regular files below dir.
func filesUnder(dir string) []string {
	var out []string
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			out = append(out, p)
		}
		return nil
	})
	return out
}
