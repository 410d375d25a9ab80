package fsfreeze

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flashpv/flashpv/pkg/diskformat"
)

func TestRecordRoundTrip(t *testing.T) {
	dir := t.TempDir()
	mp := "/var/lib/kubelet/plugins/kubernetes.io/csi/flashpv.dev/" + strings.Repeat("x", 300) + "/globalmount"
	if err := writeRecord(dir, record{Mountpoint: mp, Dev: 2049}); err != nil {
		t.Fatal(err)
	}
	got, err := readRecord(dir, mp)
	if err != nil || got.Mountpoint != mp || got.Dev != 2049 {
		t.Fatalf("read back %+v %v", got, err)
	}
	if recordName(mp) == recordName(mp+"/") || len(recordName(mp)) > 64 {
		t.Errorf("record name %q", recordName(mp))
	}
	if err := removeRecord(dir, mp); err != nil {
		t.Fatal(err)
	}
	if err := removeRecord(dir, mp); err != nil {
		t.Fatal("removing a missing record:", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("left %v", entries)
	}
}

// Records whose mount point is gone are dropped at start; a write a crash
// cut short (its temp file) is cleaned up; a corrupt record is reported and
// kept for a human.
func TestThawAllWithoutFilesystems(t *testing.T) {
	dir := t.TempDir()
	gone := filepath.Join(t.TempDir(), "gone")
	writeRecord(dir, record{Mountpoint: gone, Dev: 1})
	os.WriteFile(filepath.Join(dir, recordName("/half")+tempSuffix), []byte("{"), 0o600)
	f, err := New(dir)
	if err != nil {
		t.Fatal(err)
	}
	thawed, err := f.ThawAll()
	if err != nil || len(thawed) != 0 {
		t.Fatalf("ThawAll: %v %v", thawed, err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("left %v", entries)
	}

	corrupt := filepath.Join(dir, recordName("/x"))
	os.WriteFile(corrupt, []byte("not json"), 0o600)
	if _, err := f.ThawAll(); err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Fatalf("ThawAll with a corrupt record: %v", err)
	}
	if _, err := os.Stat(corrupt); err != nil {
		t.Fatal("the corrupt record was removed")
	}
}

// A record naming another filesystem than the one mounted there now thaws
// nothing and goes.
func TestThawAllSkipsOtherFilesystem(t *testing.T) {
	dir := t.TempDir()
	mp := t.TempDir()
	writeRecord(dir, record{Mountpoint: mp, Dev: 0xdead})
	f, _ := New(dir)
	thawed, err := f.ThawAll()
	if err != nil || len(thawed) != 0 {
		t.Fatalf("ThawAll: %v %v", thawed, err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("left %v", entries)
	}
}

func TestFreezeRefusesBadInput(t *testing.T) {
	f, _ := New(t.TempDir())
	if err := f.Freeze(context.Background(), "relative/path"); err == nil {
		t.Error("froze a relative path")
	}
	if err := f.Thaw("relative"); err == nil {
		t.Error("thawed a relative path")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	mp := t.TempDir()
	if err := f.Freeze(ctx, mp); err != context.Canceled {
		t.Errorf("Freeze with an ended context: %v", err)
	}
	if entries, _ := os.ReadDir(f.dir); len(entries) != 0 {
		t.Errorf("a refused freeze left %v", entries)
	}
	// Nothing is claimed: a later freeze is not refused as a double one.
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.busy) != 0 {
		t.Errorf("still claimed: %v", f.busy)
	}
}

// A record without a version (as written before versions) is read; one of a
// newer format is refused by ThawAll and by Thaw, which keep it as it is;
// a record written now carries the version.
func TestRecordFormatVersions(t *testing.T) {
	dir := t.TempDir()
	old := filepath.Join(t.TempDir(), "old")
	if err := os.WriteFile(filepath.Join(dir, recordName(old)), []byte(`{"mountpoint":"`+old+`","dev":1}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if rec, err := readRecord(dir, old); err != nil || rec.Dev != 1 {
		t.Fatalf("unversioned record: %+v %v", rec, err)
	}
	if err := writeRecord(dir, record{Mountpoint: old, Dev: 1}); err != nil {
		t.Fatal(err)
	}
	if data, _ := os.ReadFile(filepath.Join(dir, recordName(old))); !strings.Contains(string(data), `"formatVersion":1`) {
		t.Errorf("record written: %s", data)
	}

	mp := t.TempDir()
	path := filepath.Join(dir, recordName(mp))
	newer := `{"formatVersion":2,"mountpoint":"` + mp + `","dev":1}`
	if err := os.WriteFile(path, []byte(newer), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := New(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.ThawAll(); !errors.Is(err, diskformat.ErrNewer) || !strings.Contains(err.Error(), "format version 2") {
		t.Errorf("ThawAll with a newer record: %v", err)
	}
	if err := f.Thaw(mp); !errors.Is(err, diskformat.ErrNewer) {
		t.Errorf("Thaw with a newer record: %v", err)
	}
	if data, err := os.ReadFile(path); err != nil || string(data) != newer {
		t.Fatalf("the newer record after ThawAll and Thaw: %q %v", data, err)
	}
}
