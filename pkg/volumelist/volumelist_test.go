package volumelist

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestRoundTrip(t *testing.T) {
	asOf := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	s, err := Encode(List{AsOf: asOf, Volumes: []string{"b.2", "a.1", "b.2"}})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "node-a"), []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
	l, err := Read(dir, "node-a")
	if err != nil {
		t.Fatal(err)
	}
	if !l.AsOf.Equal(asOf) || len(l.Volumes) != 2 || !l.Has("a.1") || !l.Has("b.2") || l.Has("c.3") {
		t.Fatalf("%+v", l)
	}
	// An empty list is a statement (no PVs here), not a missing one.
	s, _ = Encode(List{AsOf: asOf})
	if l, err := Decode([]byte(s)); err != nil || len(l.Volumes) != 0 {
		t.Fatalf("empty list: %+v %v", l, err)
	}
}

func TestReadRefuses(t *testing.T) {
	dir := t.TempDir()
	if _, err := Read(dir, "absent"); !errors.Is(err, ErrNoList) {
		t.Errorf("missing file: %v", err)
	}
	for _, bad := range []string{"", "..", "a/b", "."} {
		if _, err := Read(dir, bad); err == nil || errors.Is(err, ErrNoList) {
			t.Errorf("node %q: %v", bad, err)
		}
	}
	for name, data := range map[string]string{"garbage": "{", "noAsOf": `{"volumes":[]}`, "noVolumes": `{"asOf":"2026-01-02T03:04:05Z"}`} {
		if _, err := Decode([]byte(data)); err == nil {
			t.Errorf("%s: decoded", name)
		}
	}
}
