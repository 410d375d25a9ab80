package auth

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func openTestReplay(t *testing.T, path string) *Replay {
	t.Helper()
	r, err := OpenReplay(path)
	if err != nil {
		t.Fatalf("OpenReplay: %v", err)
	}
	return r
}

func TestReplayUse(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	exp := now.Add(10 * time.Minute)
	type use struct {
		id      string
		expires time.Time
		now     time.Time
		wantErr error
	}
	tests := []struct {
		name string
		uses []use
	}{
		{"second use refused", []use{
			{"a", exp, now, nil},
			{"a", exp, now.Add(time.Minute), ErrReplayed},
		}},
		{"refused until it expires", []use{
			{"a", exp, now, nil},
			{"a", exp, exp, ErrReplayed},
		}},
		{"another ID is fine", []use{
			{"a", exp, now, nil},
			{"b", exp, now, nil},
		}},
		{"an expired capability is refused", []use{
			{"a", exp, exp.Add(time.Second), ErrExpired},
		}},
		{"no ID", []use{
			{"", exp, now, ErrForged},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := openTestReplay(t, filepath.Join(t.TempDir(), "used.json"))
			for i, u := range tt.uses {
				err := r.Use(u.id, u.expires, u.now)
				if !errors.Is(err, u.wantErr) || (err != nil) != (u.wantErr != nil) {
					t.Errorf("use %d of %q: Use = %v, want %v", i, u.id, err, u.wantErr)
				}
			}
		})
	}
}

func TestReplaySurvivesReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "used.json")
	now := time.Unix(1_800_000_000, 0)
	exp := now.Add(10 * time.Minute)
	if err := openTestReplay(t, path).Use("a", exp, now); err != nil {
		t.Fatal(err)
	}
	r := openTestReplay(t, path)
	if err := r.Use("a", exp, now.Add(time.Minute)); !errors.Is(err, ErrReplayed) {
		t.Errorf("after reopening: Use = %v, want ErrReplayed", err)
	}
	if _, err := os.Stat(path + ".tmp"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("temporary file left behind: %v", err)
	}
}

func TestReplayPrunes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "used.json")
	now := time.Unix(1_800_000_000, 0)
	r := openTestReplay(t, path)
	if err := r.Use("short", now.Add(time.Minute), now); err != nil {
		t.Fatal(err)
	}
	if err := r.Use("long", now.Add(time.Hour), now); err != nil {
		t.Fatal(err)
	}
	later := now.Add(2 * time.Minute)
	if err := r.Use("new", later.Add(time.Minute), later); err != nil {
		t.Fatal(err)
	}
	if got := r.Len(); got != 2 {
		t.Errorf("in memory: Len = %d, want 2 (short pruned)", got)
	}
	if got := openTestReplay(t, path).Len(); got != 2 {
		t.Errorf("in the file: Len = %d, want 2 (short pruned)", got)
	}
}

func TestReplayBounded(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	r := openTestReplay(t, filepath.Join(t.TempDir(), "used.json"))
	if r.max != MaxReplayEntries {
		t.Errorf("max = %d, want %d", r.max, MaxReplayEntries)
	}
	r.max = 2
	steps := []struct {
		id      string
		expires time.Time
		now     time.Time
		wantErr error
	}{
		{"a", now.Add(time.Minute), now, nil},
		{"b", now.Add(time.Hour), now, nil},
		{"c", now.Add(time.Hour), now, ErrBusy},
		{"c", now.Add(time.Hour), now.Add(2 * time.Minute), nil}, // a expired
	}
	for i, s := range steps {
		err := r.Use(s.id, s.expires, s.now)
		if !errors.Is(err, s.wantErr) || (err != nil) != (s.wantErr != nil) {
			t.Errorf("step %d: Use(%q) = %v, want %v", i, s.id, err, s.wantErr)
		}
	}
}

func TestOpenReplayFiles(t *testing.T) {
	tests := []struct {
		name    string
		content *string // nil: no file
		wantLen int
		wantErr bool
	}{
		{"missing", nil, 0, false},
		{"two IDs", ptr(`{"used":{"a":1800000000,"b":1800000001}}`), 2, false},
		{"version 1", ptr(`{"formatVersion":1,"used":{"a":1800000000}}`), 1, false},
		{"newer format", ptr(`{"formatVersion":2,"used":{}}`), 0, true},
		{"corrupt", ptr(`{"used":{"a":`), 0, true},
		{"empty", ptr(``), 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "used.json")
			if tt.content != nil {
				write(t, path, []byte(*tt.content))
			}
			r, err := OpenReplay(path)
			if tt.wantErr {
				if err == nil {
					t.Errorf("OpenReplay succeeded, want an error")
				}
				// Refused, never rewritten.
				if data, _ := os.ReadFile(path); string(data) != *tt.content {
					t.Errorf("the file became %q", data)
				}
				return
			}
			if err != nil {
				t.Fatalf("OpenReplay: %v", err)
			}
			if r.Len() != tt.wantLen {
				t.Errorf("Len = %d, want %d", r.Len(), tt.wantLen)
			}
		})
	}
}

func TestReplayWriteFails(t *testing.T) {
	dir := t.TempDir()
	r := openTestReplay(t, filepath.Join(dir, "missing-dir", "used.json"))
	now := time.Unix(1_800_000_000, 0)
	if err := r.Use("a", now.Add(time.Minute), now); err == nil {
		t.Fatalf("Use succeeded without a place to record it")
	}
	if r.Len() != 0 {
		t.Errorf("an unrecorded use is remembered: Len = %d", r.Len())
	}
}

func ptr(s string) *string { return &s }
