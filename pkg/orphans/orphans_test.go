package orphans

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/flashpv/flashpv/pkg/pool"
	"github.com/flashpv/flashpv/pkg/volumelist"
)

type fakeDeleter struct {
	deleted []string
	err     error
}

func (d *fakeDeleter) DeleteOrphan(_ context.Context, id string) error {
	if d.err != nil {
		return d.err
	}
	d.deleted = append(d.deleted, id)
	return nil
}

type fixture struct {
	t       *testing.T
	dir     string
	pool    pool.Pool
	vols    map[string]*pool.Volume
	now     time.Time
	deleter *fakeDeleter
}

func newFixture(t *testing.T, names ...string) *fixture {
	t.Helper()
	p, err := pool.OpenImage("default", t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	f := &fixture{t: t, dir: t.TempDir(), pool: p, vols: map[string]*pool.Volume{}, deleter: &fakeDeleter{}}
	for _, n := range names {
		v, _, err := p.Create(context.Background(), pool.Spec{Name: n, SizeBytes: 1 << 20, MinBytes: 1 << 20, Mode: pool.ModeBlock})
		if err != nil {
			t.Fatal(err)
		}
		f.vols[n] = v
	}
	f.now = time.Now().Add(time.Hour)
	return f
}

// writeList writes the node's list as of asOf with the named volumes.
func (f *fixture) writeList(asOf time.Time, names ...string) {
	f.t.Helper()
	var ids []string
	for _, n := range names {
		ids = append(ids, f.vols[n].ID)
	}
	s, err := volumelist.Encode(volumelist.List{AsOf: asOf, Volumes: ids})
	if err != nil {
		f.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(f.dir, "n1"), []byte(s), 0o644); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) finder(del bool) (*Finder, *prometheus.Registry) {
	f.t.Helper()
	reg := prometheus.NewRegistry()
	fd, err := New(Config{Node: "n1", ListDir: f.dir, Pools: []pool.Pool{f.pool}, Deleter: f.deleter,
		Delete: map[string]bool{"default": del}, Grace: 10 * time.Minute, Metrics: reg, Now: func() time.Time { return f.now }})
	if err != nil {
		f.t.Fatal(err)
	}
	return fd, reg
}

func ids(os []Orphan) []string {
	var out []string
	for _, o := range os {
		out = append(out, o.ID)
	}
	return out
}

// Reported, never deleted, where the pool does not opt in; nothing judged
// without a list.
func TestReportOnly(t *testing.T) {
	f := newFixture(t, "kept", "lost")
	fd, _ := f.finder(false)
	ctx := context.Background()
	if got := fd.Scan(ctx); len(got) != 0 {
		t.Fatalf("orphans without a list: %v", got)
	}
	f.writeList(f.now, "kept")
	got := fd.Scan(ctx)
	if len(got) != 1 || got[0].ID != f.vols["lost"].ID {
		t.Fatalf("orphans %v", ids(got))
	}
	if v := testutil.ToFloat64(fd.gauge.WithLabelValues("default")); v != 1 {
		t.Errorf("flashpv_orphan_volumes = %v", v)
	}
	if w := strings.Join(fd.Warnings(), "\n"); !strings.Contains(w, f.vols["lost"].ID) || strings.Contains(w, f.vols["kept"].ID) {
		t.Errorf("warnings %q", w)
	}
	f.now = f.now.Add(24 * time.Hour)
	f.writeList(f.now, "kept")
	fd.Scan(ctx)
	if len(f.deleter.deleted) != 0 {
		t.Fatalf("deleted without opt-in: %v", f.deleter.deleted)
	}
}

// Deleted once orphaned for the grace period, where the pool opts in; a
// volume that gets its PV back in the meantime is left alone; a volume too
// young for the list is not judged.
func TestDeleteAfterGrace(t *testing.T) {
	f := newFixture(t, "kept", "lost", "back")
	fd, _ := f.finder(true)
	ctx := context.Background()
	f.writeList(f.now, "kept")
	if got := fd.Scan(ctx); len(got) != 2 {
		t.Fatalf("orphans %v", ids(got))
	}
	f.now = f.now.Add(9 * time.Minute)
	f.writeList(f.now, "kept", "back")
	fd.Scan(ctx)
	if len(f.deleter.deleted) != 0 {
		t.Fatalf("deleted within the grace period: %v", f.deleter.deleted)
	}
	f.now = f.now.Add(time.Minute)
	f.writeList(f.now, "kept")
	got := fd.Scan(ctx)
	if len(f.deleter.deleted) != 1 || f.deleter.deleted[0] != f.vols["lost"].ID {
		t.Fatalf("deleted %v", f.deleter.deleted)
	}
	// "back" was named again, so its grace period started over.
	if len(got) != 1 || got[0].ID != f.vols["back"].ID {
		t.Fatalf("orphans left %v", ids(got))
	}
}

func TestYoungVolumeNotJudged(t *testing.T) {
	f := newFixture(t, "new")
	fd, _ := f.finder(true)
	f.writeList(f.vols["new"].Created.Add(DefaultMargin - time.Second))
	f.now = f.vols["new"].Created.Add(DefaultMargin)
	if got := fd.Scan(context.Background()); len(got) != 0 {
		t.Fatalf("a volume younger than the margin judged: %v", ids(got))
	}
}

// A stale list (controller not running) judges nothing and restarts every
// grace period; a refused delete (mounted) keeps the orphan reported.
func TestStaleListAndRefusedDelete(t *testing.T) {
	f := newFixture(t, "lost")
	fd, _ := f.finder(true)
	ctx := context.Background()
	f.writeList(f.now)
	fd.Scan(ctx)
	f.now = f.now.Add(DefaultMaxAge + time.Second)
	if got := fd.Scan(ctx); len(got) != 0 || len(fd.Warnings()) != 0 {
		t.Fatalf("stale list judged: %v", ids(got))
	}
	f.writeList(f.now)
	fd.Scan(ctx)
	f.now = f.now.Add(9 * time.Minute)
	f.writeList(f.now)
	fd.Scan(ctx)
	if len(f.deleter.deleted) != 0 {
		t.Fatal("grace period did not restart after a stale list")
	}
	f.deleter.err = errors.New("volume is still mounted")
	f.now = f.now.Add(time.Minute)
	f.writeList(f.now)
	if got := fd.Scan(ctx); len(got) != 1 {
		t.Fatalf("refused delete: orphans %v", ids(got))
	}
	if v := testutil.ToFloat64(fd.deleted.WithLabelValues("default", "error")); v != 1 {
		t.Errorf("deleted{error} = %v", v)
	}
}

// A pool whose records a newer flashpv wrote is opened as an unusable
// stand-in: its volumes are not judged, and nothing is deleted, however
// long they have been missing from the list.
func TestNewerFormatPoolNotCollected(t *testing.T) {
	f := newFixture(t, "lost")
	dir := f.pool.(*pool.ImagePool).Dir()
	f.pool.Close()
	meta := filepath.Join(dir, f.vols["lost"].Key()+".json")
	data, err := os.ReadFile(meta)
	if err != nil {
		t.Fatal(err)
	}
	newer := strings.Replace(string(data), `"formatVersion": 1,`, `"formatVersion": 2,`, 1)
	if newer == string(data) {
		t.Fatalf("no format version in %s", data)
	}
	if err := os.WriteFile(meta, []byte(newer), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = pool.Open(context.Background(), pool.Config{Name: "default", Kind: pool.KindImage, Path: dir})
	if !errors.Is(err, pool.ErrUnusable) {
		t.Fatalf("Open of a pool of a newer format: %v", err)
	}
	f.pool = pool.NewUnusable("default", pool.KindImage, err)
	fd, _ := f.finder(true)
	f.writeList(f.now)
	fd.Scan(context.Background())
	f.now = f.now.Add(24 * time.Hour)
	f.writeList(f.now)
	if got := fd.Scan(context.Background()); len(got) != 0 || len(f.deleter.deleted) != 0 {
		t.Fatalf("orphans %v, deleted %v", ids(got), f.deleter.deleted)
	}
	if after, err := os.ReadFile(meta); err != nil || string(after) != newer {
		t.Fatalf("record after the scans: %s %v", after, err)
	}
}
