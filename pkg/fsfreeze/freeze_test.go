package fsfreeze

// Integration tests on real filesystems on loop devices (root only).

import (
	"bufio"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/flashpv/flashpv/test/loopfs"
)

var freezeFS = []struct {
	fstype string
	size   int64
}{{"ext4", 64 << 20}, {"xfs", 320 << 20}}

// write starts a write and fsync of a new file in dir and reports its end.
func write(dir, name string) <-chan error {
	done := make(chan error, 1)
	go func() {
		f, err := os.Create(filepath.Join(dir, name))
		if err == nil {
			_, err = f.Write([]byte("written"))
		}
		if err == nil {
			err = f.Sync()
		}
		if f != nil {
			f.Close()
		}
		done <- err
	}()
	return done
}

// blocked checks that a write is still waiting, a while after it started.
func blocked(t *testing.T, done <-chan error, what string) {
	t.Helper()
	select {
	case err := <-done:
		t.Fatalf("%s: a write completed (%v) on a frozen filesystem", what, err)
	case <-time.After(300 * time.Millisecond):
	}
}

// completes waits for a write that a thaw released.
func completes(t *testing.T, done <-chan error, what string) {
	t.Helper()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("%s: write: %v", what, err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("%s: the write is still blocked: the filesystem was not thawed", what)
	}
}

func records(t *testing.T, dir string) int {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	return len(entries)
}

func TestFreezeBlocksWritesUntilThaw(t *testing.T) {
	for _, fsys := range freezeFS {
		t.Run(fsys.fstype, func(t *testing.T) {
			mnt := loopfs.Mount(t, fsys.fstype, fsys.size)
			f, err := New(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			if err := f.Freeze(context.Background(), mnt); err != nil {
				t.Fatal(err)
			}
			if records(t, f.dir) != 1 {
				t.Error("no record of the frozen filesystem")
			}
			done := write(mnt, "f")
			blocked(t, done, "frozen")
			if err := f.Freeze(context.Background(), mnt); !errors.Is(err, ErrFrozen) {
				t.Errorf("second freeze: %v, want ErrFrozen", err)
			}
			if err := f.Thaw(mnt); err != nil {
				t.Fatal(err)
			}
			completes(t, done, "thawed")
			if records(t, f.dir) != 0 {
				t.Error("the record outlived the thaw")
			}
			if err := f.Thaw(mnt); err != nil {
				t.Errorf("thaw of a filesystem that is not frozen: %v", err)
			}
			// Frozen by someone else: refused, and left to them.
			loopfs.Run(t, "fsfreeze", "-f", mnt)
			err = f.Freeze(context.Background(), mnt)
			if !errors.Is(err, ErrFrozen) {
				t.Errorf("freeze of a filesystem frozen by fsfreeze(8): %v, want ErrFrozen", err)
			}
			if records(t, f.dir) != 0 {
				t.Error("a refused freeze left a record")
			}
			loopfs.Run(t, "fsfreeze", "-u", mnt)
		})
	}
}

func TestRecordDirOnTargetRefused(t *testing.T) {
	mnt := loopfs.Mount(t, "ext4", 64<<20)
	f, err := New(filepath.Join(mnt, "records"))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Freeze(context.Background(), mnt); !errors.Is(err, ErrRecordOnTarget) {
		t.Fatalf("freeze with the records on the target: %v, want ErrRecordOnTarget", err)
	}
	completes(t, write(mnt, "f"), "refused freeze")
}

func TestWithFrozen(t *testing.T) {
	mnt := loopfs.Mount(t, "ext4", 64<<20)
	f, _ := New(t.TempDir())

	t.Run("returns", func(t *testing.T) {
		var done <-chan error
		err := f.WithFrozen(context.Background(), mnt, func(context.Context) error {
			done = write(mnt, "a")
			blocked(t, done, "inside WithFrozen")
			return errors.New("fn failed")
		})
		if err == nil || err.Error() != "fn failed" {
			t.Errorf("WithFrozen returned %v, want fn's error", err)
		}
		completes(t, done, "after WithFrozen")
	})

	t.Run("panics", func(t *testing.T) {
		var done <-chan error
		func() {
			defer func() {
				if r := recover(); r != "boom" {
					t.Errorf("recovered %v, want fn's panic", r)
				}
			}()
			f.WithFrozen(context.Background(), mnt, func(context.Context) error {
				done = write(mnt, "b")
				panic("boom")
			})
		}()
		completes(t, done, "after a panic in fn")
		if records(t, f.dir) != 0 {
			t.Error("the record outlived the thaw")
		}
	})

	// The filesystem is thawed when ctx ends, while a slow fn still runs;
	// WithFrozen then waits for fn and reports ctx's end.
	t.Run("context ends", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		inside, release := make(chan struct{}), make(chan struct{})
		res := make(chan error, 1)
		go func() {
			res <- f.WithFrozen(ctx, mnt, func(context.Context) error {
				close(inside)
				<-release
				return nil
			})
		}()
		<-inside
		done := write(mnt, "c")
		blocked(t, done, "before the context ends")
		cancel()
		completes(t, done, "after the context ended, fn still running")
		select {
		case err := <-res:
			t.Fatalf("WithFrozen returned (%v) before fn did", err)
		default:
		}
		close(release)
		if err := <-res; !errors.Is(err, context.Canceled) {
			t.Errorf("WithFrozen: %v, want context.Canceled", err)
		}
	})
}

// helperEnv makes the test binary a process that freezes a filesystem and
// waits to be killed.
const helperEnv = "FSFREEZE_TEST_HELPER"

func TestMain(m *testing.M) {
	if arg := os.Getenv(helperEnv); arg != "" {
		os.Exit(freezeAndWait(arg))
	}
	os.Exit(m.Run())
}

func freezeAndWait(arg string) int {
	f, err := New(os.Getenv(helperEnv + "_RECORDS"))
	if err == nil {
		err = f.Freeze(context.Background(), arg)
	}
	if err != nil {
		os.Stdout.WriteString("error: " + err.Error() + "\n")
		return 1
	}
	os.Stdout.WriteString("frozen\n")
	select {}
}

// A process killed with a filesystem frozen leaves it frozen (the kernel
// keeps it so); the next process's ThawAll thaws it.
func TestThawAllAfterKill(t *testing.T) {
	for _, fsys := range freezeFS {
		t.Run(fsys.fstype, func(t *testing.T) {
			mnt := loopfs.Mount(t, fsys.fstype, fsys.size)
			recordDir := t.TempDir()
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), helperEnv+"="+mnt, helperEnv+"_RECORDS="+recordDir)
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			line, _ := bufio.NewReader(out).ReadString('\n')
			if line != "frozen\n" {
				cmd.Process.Kill()
				cmd.Wait()
				t.Fatalf("helper: %q", line)
			}
			cmd.Process.Kill()
			cmd.Wait()

			done := write(mnt, "after-kill")
			blocked(t, done, "after the freezer was killed")
			f, err := New(recordDir)
			if err != nil {
				t.Fatal(err)
			}
			thawed, err := f.ThawAll()
			if err != nil || !slices.Equal(thawed, []string{mnt}) {
				t.Fatalf("ThawAll: %v %v, want [%s]", thawed, err, mnt)
			}
			completes(t, done, "after ThawAll")
			if records(t, recordDir) != 0 {
				t.Error("ThawAll left the record")
			}
			// A second start finds nothing to do.
			if thawed, err := f.ThawAll(); err != nil || len(thawed) != 0 {
				t.Errorf("second ThawAll: %v %v", thawed, err)
			}
		})
	}
}

// A freeze whose record is left (a predecessor died frozen, or between the
// record and the ioctl) thaws first, then freezes again.
func TestFreezeOverStaleRecord(t *testing.T) {
	mnt := loopfs.Mount(t, "ext4", 64<<20)
	recordDir := t.TempDir()
	old, _ := New(recordDir)
	if err := old.Freeze(context.Background(), mnt); err != nil {
		t.Fatal(err)
	}
	// old is forgotten, as if its process had died.
	f, _ := New(recordDir)
	if err := f.Freeze(context.Background(), mnt); err != nil {
		t.Fatalf("freeze over a stale record: %v", err)
	}
	done := write(mnt, "f")
	blocked(t, done, "frozen again")
	if err := f.Thaw(mnt); err != nil {
		t.Fatal(err)
	}
	completes(t, done, "thawed")
}
