package pool

import (
	"context"
	"errors"
	"testing"
)

// TestQuotaPoolNeedsXFSWithPrjquota opens a quota pool on a filesystem that
// is not XFS (a test's temp dir): it is unusable, not half used.
func TestQuotaPoolNeedsXFSWithPrjquota(t *testing.T) {
	dir := t.TempDir()
	_, err := Open(context.Background(), Config{Name: "q", Kind: KindQuota, Path: dir})
	if !errors.Is(err, ErrUnusable) {
		t.Fatalf("quota pool on %s: %v, want ErrUnusable", dir, err)
	}
	// Its lock is released: an image pool may take the directory.
	p, err := Open(context.Background(), Config{Name: "i", Kind: KindImage, Path: dir})
	if err != nil {
		t.Fatal(err)
	}
	p.Close()
	u := NewUnusable("q", KindQuota, err)
	if _, _, err := u.Create(context.Background(), Spec{Name: "x", SizeBytes: 1}); !errors.Is(err, ErrUnusable) {
		t.Fatalf("create in an unusable pool: %v", err)
	}
	if c, err := u.Capacity(context.Background()); err != nil || c.Available != 0 {
		t.Fatalf("capacity of an unusable pool: %+v %v", c, err)
	}
	if u.Probe(context.Background()) == nil {
		t.Fatal("an unusable pool probes fine")
	}
}
