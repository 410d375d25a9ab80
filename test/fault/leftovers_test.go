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
func (n *node) poolContents() []string {
	var out []string
	switch {
	case n.poolDir != "":
		entries, err := os.ReadDir(n.poolDir)
		if err != nil {
			n.r.fatal(err)
		}
		for _, e := range entries {
			out = append(out, e.Name())
		}
	case strings.HasPrefix(n.poolArg, "lvm:"):
		vg, _, _ := strings.Cut(strings.TrimPrefix(n.poolArg, "lvm:"), ",")
		data, err := exec.Command("lvm", "lvs", "--noheadings", "-o", "lv_name", vg).Output()
		if err != nil {
			n.r.fatal(fmt.Errorf("lvm lvs %s: %v", vg, err))
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
func (n *node) poolLoopDevices() []string {
	if n.poolDir == "" {
		return nil
	}
	var out []string
	for dev, file := range loopBacking() {
		if strings.HasPrefix(file, n.poolDir+"/") {
			out = append(out, dev+" ("+file+")")
		}
	}
	sort.Strings(out)
	return out
}

// checkLeftovers fails the run for anything the volumes left behind once all
// were deleted and the drivers stopped.
func (r *run) checkLeftovers() {
	for _, n := range r.nodes() {
		if m := mountsUnder(n.root); len(m) > 0 {
			r.failf(nil, "%s: mounts left after every volume was deleted: %v", n.name, m)
		}
		if devs := n.poolLoopDevices(); len(devs) > 0 {
			r.failf(nil, "%s: loop devices left attached to pool images: %v", n.name, devs)
		}
		// The state directory keeps freeze records and the metadata copies
		// of offline ext4 growths only while they are needed.
		if left := n.stateLeftovers(); len(left) > 0 {
			r.failf(nil, "%s: the driver's state directory holds %v after every volume was deleted", n.name, left)
		}
		if left := n.incomingLeftovers(); len(left) > 0 {
			r.failf(nil, "%s: incoming volumes left after every copy was deleted: %v", n.name, left)
		}
		if got := n.poolContents(); !slices.Equal(got, n.baseline) {
			r.failf(nil, "%s: the pool holds %v after every volume was deleted; empty it held %v", n.name, got, n.baseline)
		}
	}
}

// cleanup undoes whatever the run left, also when it failed: it kills the
// drivers it started, unmounts everything below their directories and
// detaches the loop devices of their pools' images. The pools themselves go
// with the harness's cleanup, which runs after this one.
func (r *run) cleanup() {
	for _, n := range r.nodes() {
		n.cleanup()
	}
}

func (n *node) cleanup() {
	t := n.r.t
	if n.drv != nil {
		victims := n.drv.signalGroup(nil)
		if err := n.drv.waitGone(victims); err != nil {
			t.Logf("cleanup: %s: %v", n.name, err)
		}
		n.drv = nil
	}
	m := mountsUnder(n.root)
	for i := len(m) - 1; i >= 0; i-- {
		if err := unix.Unmount(m[i], 0); err != nil {
			t.Logf("cleanup: unmount %s: %v; detaching it", m[i], err)
			unix.Unmount(m[i], unix.MNT_DETACH)
		}
	}
	if n.poolDir == "" {
		return
	}
	for dev, file := range loopBacking() {
		if strings.HasPrefix(file, n.poolDir+"/") {
			if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
				t.Logf("cleanup: losetup -d %s: %v: %s", dev, err, out)
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
