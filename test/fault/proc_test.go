package fault

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// What /proc says about the driver's processes. Children are found through
// /proc/PID/task/TID/children, which costs a few reads, so the watcher can
// poll it every millisecond while a call runs.

// descendants returns the processes below pid (children, their children...)
// with their command names.
func descendants(pid int) map[int]string {
	out := map[int]string{}
	var walk func(p int)
	walk = func(p int) {
		tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", p))
		if err != nil {
			return
		}
		for _, task := range tasks {
			data, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", p, task.Name()))
			if err != nil {
				continue
			}
			for _, f := range strings.Fields(string(data)) {
				c, err := strconv.Atoi(f)
				if err != nil || c <= 0 {
					continue
				}
				if _, seen := out[c]; seen {
					continue
				}
				out[c] = comm(c)
				walk(c)
			}
		}
	}
	walk(pid)
	return out
}

// comm is a process's command name ("mkfs.xfs"), or "" when it is gone.
func comm(pid int) string {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(data))
}

// inSyscall reports whether a thread of pid is blocked in system call nr.
func inSyscall(pid int, nr int) bool {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return false
	}
	want := []byte(strconv.Itoa(nr) + " ")
	for _, task := range tasks {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/syscall", pid, task.Name()))
		if err == nil && bytes.HasPrefix(data, want) {
			return true
		}
	}
	return false
}

// procStat is what the test needs from /proc/PID/stat.
type procStat struct {
	state byte
	ppid  int
	pgrp  int
}

func readStat(pid int) (procStat, bool) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStat{}, false
	}
	// The command name may hold spaces and parentheses: fields start after
	// the last ')'.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return procStat{}, false
	}
	f := strings.Fields(string(data[i+1:]))
	if len(f) < 3 || len(f[0]) != 1 {
		return procStat{}, false
	}
	ppid, _ := strconv.Atoi(f[1])
	pgrp, _ := strconv.Atoi(f[2])
	return procStat{state: f[0][0], ppid: ppid, pgrp: pgrp}, true
}

// groupMembers lists the live processes of process group pgid.
func groupMembers(pgid int) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st, ok := readStat(pid); ok && st.pgrp == pgid && st.state != 'Z' {
			out = append(out, pid)
		}
	}
	return out
}

// alive tells whether pid still runs (a zombie holds no files or devices).
func alive(pid int) bool {
	st, ok := readStat(pid)
	return ok && st.state != 'Z'
}

// fallocateNr is the fallocate system call's number, which the driver makes
// itself (no child command) to reserve an image's blocks.
const fallocateNr = unix.SYS_FALLOCATE
