package pool

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flashpv/flashpv/pkg/diskformat"
)

// A volume and a snapshot record as flashpv wrote them before records had
// a version, with %s standing for a "formatVersion" member (or nothing).
const (
	oldVolumeJSON = `{%s
  "id": "test.VKEY",
  "name": "pvc-old",
  "sizeBytes": 1048576,
  "mode": "filesystem",
  "fsType": "ext4",
  "created": "2026-11-30T10:00:00Z",
  "format": "done"
}`
	oldSnapshotJSON = `{%s
  "id": "test.SKEY",
  "name": "snap-old",
  "sourceVolumeID": "test.VKEY",
  "sizeBytes": 1048576,
  "mode": "filesystem",
  "fsType": "ext4",
  "created": "2026-11-30T10:05:00Z",
  "format": "done"
}`
)

// formatPool fills dir with the volume pvc-old and the snapshot snap-old,
// each record carrying volVersion and snapVersion ("" for none), and with
// leftovers that an Open of a pool it can read collects. It returns the
// leftovers' names.
func formatPool(t *testing.T, dir, volVersion, snapVersion string) []string {
	t.Helper()
	// An earlier Open made the lock file, as on any node.
	p, err := OpenImage("test", dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	p.Close()
	vkey, skey := KeyForName("pvc-old"), KeyForName("snap-old")
	record := func(tmpl, version string) string {
		if version != "" {
			version = "\n  \"formatVersion\": " + version + ","
		}
		r := strings.Replace(tmpl, "%s", version, 1)
		return strings.NewReplacer("VKEY", vkey, "SKEY", skey).Replace(r)
	}
	files := map[string]string{
		vkey + metaSuffix:                          record(oldVolumeJSON, volVersion),
		vkey + imageSuffix:                         strings.Repeat("v", 4096),
		skey + snapSuffix + metaSuffix:             record(oldSnapshotJSON, snapVersion),
		skey + snapSuffix:                          strings.Repeat("s", 4096),
		KeyForName("half") + imageSuffix:           "an image whose create never finished",
		KeyForName("tmp") + metaSuffix + tmpSuffix: "{",
		KeyForName("snaphalf") + snapSuffix:        "a snapshot copy whose create never finished",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return []string{KeyForName("half") + imageSuffix, KeyForName("tmp") + metaSuffix + tmpSuffix, KeyForName("snaphalf") + snapSuffix}
}

// dirContent maps every entry of dir to a hash of its bytes and its mode.
func dirContent(t *testing.T, dir string) map[string]string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, e := range entries {
		info, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(data)
		out[e.Name()] = info.Mode().String() + " " + hex.EncodeToString(sum[:])
	}
	return out
}

func sameContent(t *testing.T, what string, before, after map[string]string) {
	t.Helper()
	for name, h := range before {
		if after[name] != h {
			t.Errorf("%s: %s changed or removed", what, name)
		}
	}
	for name := range after {
		if _, ok := before[name]; !ok {
			t.Errorf("%s: %s added", what, name)
		}
	}
}

// Records without a version (every release before versions) and records of
// version 1 read as version 1; Open rewrites none of them and still
// collects leftovers; what is written afterwards carries the version.
func TestUnversionedAndV1RecordsRead(t *testing.T) {
	for _, version := range []string{"", "1"} {
		t.Run("version="+version, func(t *testing.T) {
			dir := t.TempDir()
			leftovers := formatPool(t, dir, version, version)
			vkey, skey := KeyForName("pvc-old"), KeyForName("snap-old")
			records := []string{vkey + metaSuffix, skey + snapSuffix + metaSuffix}
			before := dirContent(t, dir)
			p, err := OpenImage("test", dir, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			after := dirContent(t, dir)
			for _, r := range records {
				if after[r] != before[r] {
					t.Errorf("Open rewrote %s", r)
				}
			}
			for _, l := range leftovers {
				if _, ok := after[l]; ok {
					t.Errorf("leftover %s not collected", l)
				}
			}
			v, err := p.Get(vkey)
			if err != nil || v.Name != "pvc-old" || v.Format != FormatDone || v.FormatVersion != 1 {
				t.Fatalf("Get: %+v, %v", v, err)
			}
			s, err := p.GetSnapshot(skey)
			if err != nil || s.SourceVolumeID != v.ID || s.FormatVersion != 1 {
				t.Fatalf("GetSnapshot: %+v, %v", s, err)
			}
			if _, err := p.Expand(context.Background(), vkey, 2<<20); err != nil {
				t.Fatal(err)
			}
			nv, _, err := p.Create(context.Background(), spec("pvc-new", 1<<20))
			if err != nil {
				t.Fatal(err)
			}
			for _, key := range []string{vkey, nv.Key()} {
				data, err := os.ReadFile(p.metaPath(key))
				if err != nil || !strings.Contains(string(data), `"formatVersion": 1,`) {
					t.Errorf("record %s as written: %s %v", key, data, err)
				}
			}
		})
	}
}

// A record of a newer format makes the pool unusable, says which record,
// which version and the newest known, and nothing in the pool is touched:
// not by Open's collection of leftovers, not by a delete through the
// stand-in the node plugin puts in its place.
func TestNewerRecordRefusesPool(t *testing.T) {
	for _, tc := range []struct {
		name                    string
		volVersion, snapVersion string
		record                  string
	}{
		{"volume", "2", "1", KeyForName("pvc-old") + metaSuffix},
		{"snapshot", "", "7", KeyForName("snap-old") + snapSuffix + metaSuffix},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			formatPool(t, dir, tc.volVersion, tc.snapVersion)
			before := dirContent(t, dir)
			_, err := Open(context.Background(), Config{Name: "test", Kind: KindImage, Path: dir})
			if !errors.Is(err, ErrUnusable) || !errors.Is(err, diskformat.ErrNewer) {
				t.Fatalf("Open: %v; want an unusable pool of a newer format", err)
			}
			found := max(tc.volVersion, tc.snapVersion)
			for _, part := range []string{tc.record, "format version " + found, "up to 1"} {
				if !strings.Contains(err.Error(), part) {
					t.Errorf("error %q does not name %q", err, part)
				}
			}
			sameContent(t, "Open", before, dirContent(t, dir))

			u := NewUnusable("test", KindImage, err)
			derr := u.Delete(context.Background(), KeyForName("pvc-old"))
			if !errors.Is(derr, diskformat.ErrNewer) {
				t.Errorf("Delete on the stand-in: %v", derr)
			}
			if _, err := u.Get(KeyForName("pvc-old")); !errors.Is(err, diskformat.ErrNewer) {
				t.Errorf("Get on the stand-in: %v", err)
			}
			sameContent(t, "the stand-in", before, dirContent(t, dir))
		})
	}
}
