package stream

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"
)

func TestLimiter(t *testing.T) {
	if NewLimiter(0) != nil || NewLimiter(-1) != nil {
		t.Error("a limiter without a rate is not nil")
	}
	const size = 2 * mib
	src := DeviceSource(&memTarget{b: bytes.Repeat([]byte{1}, int(size))}, size)
	tests := []struct {
		name    string
		lim     *Limiter
		atLeast time.Duration // a lower bound only: a loaded machine is slower
	}{
		{"none", nil, 0},
		// The first MiB is the burst; the second waits a second.
		{"1 MiB/s", NewLimiter(mib), 900 * time.Millisecond},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			var w discard
			if _, err := Send(t.Context(), &w, src, size, 0, DefaultSegment, tc.lim); err != nil {
				t.Fatal(err)
			}
			if d := time.Since(start); d < tc.atLeast {
				t.Errorf("2 MiB took %v, want at least %v", d, tc.atLeast)
			}
			if w.n < size {
				t.Errorf("%d bytes written", w.n)
			}
		})
	}
}

func TestLimiterWait(t *testing.T) {
	cancelled, cancel := context.WithCancel(t.Context())
	cancel()
	tests := []struct {
		name string
		lim  *Limiter
		ctx  context.Context
		n    int
		want error
	}{
		{"nil", nil, t.Context(), 1 << 30, nil},
		{"nil, cancelled", nil, cancelled, 1, context.Canceled},
		{"within the burst", NewLimiter(1 << 40), t.Context(), minBurst, nil},
		{"beyond the burst", NewLimiter(1 << 40), t.Context(), 10 * minBurst, nil},
		{"cancelled", NewLimiter(1), cancelled, 1, context.Canceled},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.lim.Wait(tc.ctx, tc.n); !errors.Is(err, tc.want) {
				t.Errorf("Wait: %v, want %v", err, tc.want)
			}
		})
	}
}

func TestSlots(t *testing.T) {
	s := NewSlots(2)
	r1, ok1 := s.TryAcquire()
	r2, ok2 := s.TryAcquire()
	_, ok3 := s.TryAcquire()
	if !ok1 || !ok2 || ok3 {
		t.Fatalf("acquired %v %v %v of 2 slots, want true true false", ok1, ok2, ok3)
	}
	r1()
	r1() // a second release gives nothing back
	if _, ok := s.TryAcquire(); !ok {
		t.Error("no slot after a release")
	}
	if _, ok := s.TryAcquire(); ok {
		t.Error("a double release freed two slots")
	}
	r2()
	if _, ok := s.TryAcquire(); !ok {
		t.Error("no slot after the second release")
	}
	for _, n := range []int{0, -1} {
		unbounded := NewSlots(n)
		for range 100 {
			if _, ok := unbounded.TryAcquire(); !ok {
				t.Fatalf("NewSlots(%d) refused", n)
			}
		}
	}
}
