package pool

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

func TestVolumeIDs(t *testing.T) {
	id := IDFor("fast", "pvc-1")
	got, err := ParseVolumeID(id.String())
	if err != nil || got != id {
		t.Fatalf("round trip of %s: %v %v", id, got, err)
	}
	if IDFor("fast", "pvc-1") != id || IDFor("fast", "pvc-2") == id {
		t.Fatal("IDs are not a function of the name")
	}
	for _, tc := range []struct {
		name string
		ok   bool
	}{{"pvc-1", true}, {"", false}, {strings.Repeat("x", 128), true}, {strings.Repeat("x", 129), false}, {"a\x00", false}, {"../x", true}} {
		if err := ValidateName(tc.name); (err == nil) != tc.ok {
			t.Errorf("ValidateName(%q) = %v", tc.name, err)
		}
	}
}

// fakeFS reports a filesystem of total bytes that had free bytes before the
// pool's images took their blocks.
func fakeFS(total, free int64) func(string, *unix.Statfs_t) error {
	return func(dir string, st *unix.Statfs_t) error {
		entries, err := os.ReadDir(dir)
		if err != nil {
			return err
		}
		used := int64(0)
		for _, e := range entries {
			var fst unix.Stat_t
			if (strings.HasSuffix(e.Name(), imageSuffix) || strings.HasSuffix(e.Name(), snapSuffix)) && unix.Stat(filepath.Join(dir, e.Name()), &fst) == nil {
				used += fst.Blocks * 512
			}
		}
		st.Bsize = 4096
		st.Blocks = uint64(total / 4096)
		st.Bavail = uint64(max(free-used, 0) / 4096)
		st.Bfree = st.Bavail
		return nil
	}
}

func newTestPool(t *testing.T, reserve int64) *ImagePool {
	t.Helper()
	p, err := OpenImage("test", t.TempDir(), reserve)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func spec(name string, size int64) Spec {
	return Spec{Name: name, SizeBytes: size, MinBytes: size, Mode: ModeBlock}
}

func TestCapacityAccountsForHolesAndReserve(t *testing.T) {
	p := newTestPool(t, 10<<20)
	p.statfs = fakeFS(1<<30, 500<<20)
	// A volume whose image is 64 MiB but has only 16 MiB of blocks: 48 MiB of
	// its reservation are not backed and must not be handed out again.
	key := KeyForName("holey")
	img := p.ImagePath(key)
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	os.Truncate(img, 64<<20)
	if err := allocate(context.Background(), img, 0, 16<<20, false); err != nil {
		t.Fatal(err)
	}
	writeVolume(&p.mirror, p.metaPath(key), key, &Volume{ID: VolumeID{"test", key}.String(), Name: "holey", SizeBytes: 64 << 20, Mode: ModeBlock})
	c, err := p.Capacity(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if want := int64(500<<20 - 16<<20 - 48<<20 - 10<<20); c.Available != want {
		t.Errorf("available %d, want %d (free - unbacked - reserve)", c.Available, want)
	}
	if c.Total != 1<<30-10<<20 || c.Allocated != 64<<20 || c.Volumes != 1 {
		t.Errorf("capacity %+v", c)
	}
	p.statfs = fakeFS(1<<30, 20<<20)
	if c, _ := p.Capacity(context.Background()); c.Available != 0 {
		t.Errorf("available %d when holes and reserve exceed free space, want 0", c.Available)
	}
}

func TestCreateIsIdempotentAndAtomic(t *testing.T) {
	p := newTestPool(t, 0)
	v, created, err := p.Create(context.Background(), spec("a", 1<<20))
	if err != nil || !created {
		t.Fatal(created, err)
	}
	again, created, err := p.Create(context.Background(), spec("a", 1<<20))
	if err != nil || created || again.ID != v.ID {
		t.Fatalf("repeat: %v %v %v", again, created, err)
	}
	for what, s := range map[string]Spec{
		"bigger":     spec("a", 2<<20),
		"filesystem": {Name: "a", SizeBytes: 1 << 20, MinBytes: 1 << 20, Mode: ModeFilesystem, FsType: "ext4"},
		"params":     {Name: "a", SizeBytes: 1 << 20, MinBytes: 1 << 20, Mode: ModeBlock, Parameters: map[string]string{"pool": "x"}},
		"limit":      {Name: "a", SizeBytes: 1 << 19, MinBytes: 1 << 19, MaxBytes: 1 << 19, Mode: ModeBlock},
	} {
		if _, _, err := p.Create(context.Background(), s); !errors.Is(err, ErrAlreadyExists) {
			t.Errorf("%s: %v, want ErrAlreadyExists", what, err)
		}
	}
	// Metadata round trip.
	got, err := p.Get(KeyForName("a"))
	if err != nil || got.Name != "a" || got.SizeBytes != 1<<20 || got.Created.IsZero() {
		t.Fatalf("Get: %+v %v", got, err)
	}
	// Concurrent creates against 10 MiB of space: exactly as many as fit.
	p.statfs = fakeFS(1<<30, 10<<20)
	var wg sync.WaitGroup
	var mu sync.Mutex
	made := 0
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _, err := p.Create(context.Background(), spec(string(rune('A'+i)), 4<<20))
			mu.Lock()
			defer mu.Unlock()
			if err == nil {
				made++
			} else if !errors.Is(err, ErrNoSpace) {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if made != 2 {
		t.Fatalf("%d creates of 4 MiB succeeded with 10 MiB free", made)
	}
}

func TestDeleteExpandList(t *testing.T) {
	p := newTestPool(t, 0)
	for _, n := range []string{"x", "y", "z"} {
		if _, _, err := p.Create(context.Background(), spec(n, 1<<20)); err != nil {
			t.Fatal(err)
		}
	}
	vols, err := p.List()
	if err != nil || len(vols) != 3 || vols[0].ID > vols[1].ID {
		t.Fatalf("List: %v %v", vols, err)
	}
	key := KeyForName("x")
	v, err := p.Expand(context.Background(), key, 3<<20)
	if err != nil || v.SizeBytes != 3<<20 {
		t.Fatalf("Expand: %v %v", v, err)
	}
	if v, _ := p.Expand(context.Background(), key, 2<<20); v.SizeBytes != 3<<20 {
		t.Fatal("Expand shrank the volume")
	}
	if st, _ := os.Stat(p.ImagePath(key)); st.Size() != 3<<20 {
		t.Fatalf("image %d bytes", st.Size())
	}
	if err := p.Delete(context.Background(), key); err != nil {
		t.Fatal(err)
	}
	if err := p.Delete(context.Background(), key); err != nil {
		t.Fatal("second delete:", err)
	}
	if _, err := p.Get(key); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get after delete: %v", err)
	}
	if _, err := p.Expand(context.Background(), key, 4<<20); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Expand after delete: %v", err)
	}
	p.statfs = fakeFS(1<<30, 1<<20)
	if _, err := p.Expand(context.Background(), KeyForName("y"), 64<<20); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("Expand beyond the pool: %v", err)
	}
}

func TestOpenRejectsBadPools(t *testing.T) {
	for _, tc := range []struct{ name, dir string }{
		{"Bad", t.TempDir()}, {"ok", "relative/dir"}, {"", t.TempDir()},
	} {
		if _, err := OpenImage(tc.name, tc.dir, 0); err == nil {
			t.Errorf("OpenImage(%q, %q) succeeded", tc.name, tc.dir)
		}
	}
	dir := t.TempDir()
	p, err := OpenImage("one", dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := OpenImage("two", dir, 0); err == nil {
		t.Error("a second pool opened the same directory")
	}
	p.Close()
	if p2, err := OpenImage("two", dir, 0); err != nil {
		t.Errorf("reopening after Close: %v", err)
	} else {
		p2.Close()
	}
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, nil, 0o600)
	if _, err := OpenImage("ok", file, 0); err == nil {
		t.Error("Open on a regular file succeeded")
	}
}

// While a create of a volume is allocating its image (outside the pool's
// lock), nothing else may touch that volume, and its size is already
// taken from what the pool offers.
func TestCreateInProgress(t *testing.T) {
	p := newTestPool(t, 0)
	p.statfs = fakeFS(1<<30, 10<<20)
	key := KeyForName("busy")
	p.mu.Lock()
	p.creating[key] = claim{size: 4 << 20}
	p.mu.Unlock()
	if _, _, err := p.Create(context.Background(), spec("busy", 4<<20)); !errors.Is(err, ErrInProgress) {
		t.Errorf("second create: %v, want ErrInProgress", err)
	}
	if err := p.Delete(context.Background(), key); !errors.Is(err, ErrInProgress) {
		t.Errorf("delete: %v, want ErrInProgress", err)
	}
	if _, err := p.Expand(context.Background(), key, 8<<20); !errors.Is(err, ErrInProgress) {
		t.Errorf("expand: %v, want ErrInProgress", err)
	}
	if c, err := p.Capacity(context.Background()); err != nil || c.Available != 6<<20 {
		t.Errorf("available %d (%v), want 6 MiB", c.Available, err)
	}
	if _, _, err := p.Create(context.Background(), spec("other", 8<<20)); !errors.Is(err, ErrNoSpace) {
		t.Errorf("create beyond what is left: %v, want ErrNoSpace", err)
	}
}

// A create in flight reserves its size until its volume (or snapshot) is
// recorded; from then on the volume counts among the recorded ones, also
// while the create waits to leave the in-flight set, so it is never
// counted twice for long (which refused concurrent creates that fit).
func TestReservedCountsUnrecordedCreatesOnly(t *testing.T) {
	p := newDirPool("p", t.TempDir(), 0, nil)
	k1, k2, k3 := KeyForName("a"), KeyForName("b"), KeyForName("c")
	p.creating[k1] = claim{size: 10}
	p.creating[k2] = claim{size: 100}
	p.creating[snapClaim(k3)] = claim{size: 1000}
	if got := p.reserved(); got != 1110 {
		t.Fatalf("reserved %d with nothing recorded, want 1110", got)
	}
	p.remember(k2, &Volume{ID: "p." + k2, SizeBytes: 100})
	p.vmu.Lock()
	p.snaps[k3] = &Snapshot{SizeBytes: 1000}
	p.vmu.Unlock()
	if got := p.reserved(); got != 10 {
		t.Fatalf("reserved %d once b and snapshot c are recorded, want 10", got)
	}
	// A volume recorded under a snapshot's key is not that snapshot.
	p.creating[snapClaim(k1)] = claim{size: 5}
	p.remember(k1, &Volume{ID: "p." + k1, SizeBytes: 10})
	if got := p.reserved(); got != 5 {
		t.Fatalf("reserved %d, want the unrecorded snapshot's 5", got)
	}
}

// An image pool's creates in flight count once each, as what they are: the
// part of a copy not written yet, a reflink copy whole (its blocks are
// shared), and, once recorded, as the recorded volume or snapshot they are.
func TestImageCapacityCountsCreatesInFlightOnce(t *testing.T) {
	ctx := context.Background()
	p := newTestPool(t, 0)
	p.statfs = fakeFS(1<<30, 500<<20)
	expect := func(when string, wantMiB int64) {
		t.Helper()
		c, err := p.Capacity(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if c.Available != wantMiB<<20 {
			t.Errorf("%s: available %d MiB, want %d MiB", when, c.Available>>20, wantMiB)
		}
	}
	file := func(path string, allocated int64) {
		t.Helper()
		if err := os.WriteFile(path, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := allocate(ctx, path, 0, allocated, false); err != nil {
			t.Fatal(err)
		}
	}

	// A snapshot being copied: 16 of its 64 MiB written so far.
	snapKey := KeyForName("snap")
	file(p.snapPath(snapKey), 16<<20)
	p.creating[snapClaim(snapKey)] = claim{size: 64 << 20, file: p.snapPath(snapKey)}
	expect("copy in flight (its written part used, the rest claimed)", 500-16-48)
	// Recorded, not yet out of the in-flight set: a sparse copy holds
	// what it has written and nothing more.
	p.rememberSnapshot(snapKey, &Snapshot{ID: VolumeID{"test", snapKey}.String(), SizeBytes: 64 << 20})
	expect("copy recorded", 500-16)
	delete(p.creating, snapClaim(snapKey))
	expect("copy done", 500-16)

	// A reflink clone of 32 MiB: its image's blocks are its source's, so
	// the claim counts whole, and once recorded shared, the image whole.
	cloneKey := KeyForName("clone")
	file(p.ImagePath(cloneKey), 32<<20)
	// Its blocks are shared with the source's, so they took no free space.
	p.statfs = fakeFS(1<<30, 532<<20)
	p.creating[cloneKey] = claim{size: 32 << 20}
	expect("clone in flight", 500-16-32)
	writeVolume(&p.mirror, p.metaPath(cloneKey), cloneKey, &Volume{ID: VolumeID{"test", cloneKey}.String(), Name: "clone", SizeBytes: 32 << 20, Mode: ModeBlock, Shared: true})
	expect("clone recorded, in flight (counted once)", 500-16-32)
	delete(p.creating, cloneKey)
	expect("clone done", 500-16-32)
}
