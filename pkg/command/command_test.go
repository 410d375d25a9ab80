package command

import (
	"context"
	"errors"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	utilexec "k8s.io/utils/exec"
)

// A cancelled call takes down the whole process group of its command, the
// children it forked included.
func TestCancelKillsTheGroup(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	pidFile := t.TempDir() + "/child"
	c := Command(ctx, "sh", "-c", "sleep 60 & echo $! > "+pidFile+"; wait")
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	var child int
	for deadline := time.Now().Add(10 * time.Second); child == 0; {
		if data, err := os.ReadFile(pidFile); err == nil && strings.TrimSpace(string(data)) != "" {
			child, _ = strconv.Atoi(strings.TrimSpace(string(data)))
		} else if time.Now().After(deadline) {
			t.Fatal("the command did not start its child")
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := c.Wait(); err == nil {
		t.Fatal("a cancelled command reported success")
	}
	// The child is reparented to init, which may be slow to reap it: a
	// zombie counts as gone.
	for deadline := time.Now().Add(10 * time.Second); alive(child); {
		if time.Now().After(deadline) {
			syscall.Kill(child, syscall.SIGKILL)
			t.Fatalf("child %d outlived its cancelled group", child)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A non-zero exit is an ExitError that mount-utils understands.
func TestExitStatus(t *testing.T) {
	_, err := Output(context.Background(), "sh", "-c", "exit 3")
	var ee utilexec.ExitError
	if !errors.As(err, &ee) || ee.ExitStatus() != 3 {
		t.Fatalf("got %v, want exit status 3", err)
	}
	out, err := Exec(context.Background()).Command("sh", "-c", "echo hi").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "hi" {
		t.Fatalf("Exec: %q %v", out, err)
	}
}

func alive(pid int) bool {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// The state follows the command name in parentheses.
	s := string(data)
	rest := s[strings.LastIndexByte(s, ')')+1:]
	f := strings.Fields(rest)
	return len(f) > 0 && f[0] != "Z" && f[0] != "X"
}
