package pool

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flashpv/flashpv/pkg/lvm"
)

// TestFlightsNeverHoldCallers checks that a check stuck in the kernel
// keeps no caller past its context, is not started twice, and that the
// next check after it returns runs afresh.
func TestFlightsNeverHoldCallers(t *testing.T) {
	var f flights
	release := make(chan struct{})
	starts := 0
	stuck := func() error { starts++; <-release; return errors.New("late") }
	for range 3 {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		err := f.check(ctx, "k", stuck)
		cancel()
		if !errors.Is(err, ErrNotAnswering) {
			t.Fatalf("a stuck check: %v, want ErrNotAnswering", err)
		}
	}
	close(release)
	// Once it returns, its result (or a fresh run's) is what callers get...
	if err := f.check(context.Background(), "k", stuck); err == nil || err.Error() != "late" {
		t.Fatalf("after the stuck check returned: %v", err)
	}
	// ...and a later check runs again.
	if err := f.check(context.Background(), "k", func() error { return nil }); err != nil {
		t.Fatalf("a check after the stuck one returned: %v", err)
	}
	if starts > 2 {
		t.Fatalf("the stuck check was started %d times", starts)
	}
	// Other keys are not held by a stuck one.
	block := make(chan struct{})
	defer close(block)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	f.check(ctx, "a", func() error { <-block; return nil })
	if err := f.check(context.Background(), "b", func() error { return nil }); err != nil {
		t.Fatalf("key b held by a: %v", err)
	}
}

func TestProbeDir(t *testing.T) {
	dir := t.TempDir()
	if err := probeDir(dir); err != nil {
		t.Fatalf("a writable directory: %v", err)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".probe-*")); len(left) != 0 {
		t.Fatalf("probe files left: %v", left)
	}
	if err := probeDir(filepath.Join(dir, "gone")); err == nil {
		t.Fatal("a missing directory probes fine")
	}
	if err := readFirstBlock(filepath.Join(dir, "gone")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("reading a missing file: %v", err)
	}
	short := filepath.Join(dir, "short")
	os.WriteFile(short, []byte("x"), 0o600)
	if err := readFirstBlock(short); err != nil {
		t.Fatalf("reading a file shorter than a block: %v", err)
	}
}

func TestThinPoolHealth(t *testing.T) {
	for attr, want := range map[string]string{
		"twi-aotz--": "",
		"twi-aotzF-": "has failed",
		"twi-aotzM-": "metadata",
		"twi-aotzD-": "out of data",
		"twi-aotzp-": "partial",
		"twi":        "",
	} {
		err := thinPoolHealth(&lvm.LV{VG: "vg", Name: "tp", Attr: attr})
		if (want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), want)) {
			t.Errorf("attr %s: %v, want %q", attr, err, want)
		}
	}
}

// TestFailingPoolLetsGo checks that an image pool lets go of its
// directory's lock when its filesystem fails (so that it can be unmounted),
// takes it back when a probe passes, and never after Close.
func TestFailingPoolLetsGo(t *testing.T) {
	dir := t.TempDir()
	p, err := OpenImage("p", dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	free := func() bool {
		l, err := lockDir(dir)
		if err != nil {
			return false
		}
		l.Close()
		return true
	}
	if free() {
		t.Fatal("an open pool's lock is free")
	}
	err = p.holdLock(fmt.Errorf("sync: %w", unix.EIO))
	if !errors.Is(err, unix.EIO) || !strings.Contains(err.Error(), "mounted again") || !free() {
		t.Fatalf("a failing filesystem: %v, lock free %v", err, free())
	}
	if err := p.holdLock(nil); err != nil || free() {
		t.Fatalf("a passing probe: %v, lock free %v", err, free())
	}
	if err := p.holdLock(errors.New("not a failing filesystem")); err == nil || free() {
		t.Fatalf("another failure let go of the lock: %v", err)
	}
	p.Close()
	if err := p.holdLock(nil); err != nil || !free() {
		t.Fatalf("a probe after Close took the lock: %v", err)
	}
}

// A probe's file left by a crash goes at the pool's next Open; a file of
// another name stays.
func TestOpenRemovesProbeLeftovers(t *testing.T) {
	dir := t.TempDir()
	left := filepath.Join(dir, probePrefix+"0123456789abcdef")
	other := filepath.Join(dir, probePrefix+"notours")
	for _, f := range []string{left, other} {
		if err := os.WriteFile(f, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	p, err := OpenImage("test", dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if _, err := os.Stat(left); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a probe's leftover survived Open: %v", err)
	}
	if _, err := os.Stat(other); err != nil {
		t.Errorf("a file flashpv did not make was removed: %v", err)
	}
}
