package pool

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/flashpv/flashpv/pkg/diskformat"
	"github.com/flashpv/flashpv/pkg/lvm"
)

// TestLVMTagsRoundTrip stores a volume's metadata in tags and reads it back,
// also when it needs several tags, and refuses LVs that are not the pool's.
func TestLVMTagsRoundTrip(t *testing.T) {
	p := &LVMPool{mirror: newMirror("db"), cfg: Config{Name: "db", VG: "vg0"}, extent: 4 << 20}
	key := KeyForName("pvc-1")
	v := &Volume{ID: VolumeID{"db", key}.String(), Name: "pvc-1", SizeBytes: 8 << 20, Mode: ModeFilesystem, FsType: "xfs",
		Parameters: map[string]string{"pool": "db", "note": strings.Repeat("long value ", 300)}, Created: time.Unix(1700000000, 0).UTC()}
	tags, err := p.tags(v)
	if err != nil {
		t.Fatal(err)
	}
	if len(tags) < 4 {
		t.Fatalf("%d tags for %d bytes of parameters; want the metadata split", len(tags), len(v.Parameters["note"]))
	}
	for _, tag := range tags {
		if !lvm.ValidTag(tag) {
			t.Fatalf("invalid LVM tag %q", tag)
		}
	}
	l := lvm.LV{Name: p.lvName(key), VG: "vg0", Size: 12 << 20, Tags: tags}
	if k, ok := p.keyOf(l); !ok || k != key {
		t.Fatalf("keyOf(%s) = %q %v", l.Name, k, ok)
	}
	got, err := p.decode(l)
	if err != nil {
		t.Fatal(err)
	}
	if got.SizeBytes != 12<<20 || got.Name != v.Name || got.Parameters["note"] != v.Parameters["note"] || !got.Created.Equal(v.Created) {
		t.Fatalf("decoded %+v", got)
	}
	// A chunk missing is an error, not a truncated volume.
	if _, err := p.decode(lvm.LV{Name: l.Name, Tags: append([]string{tags[0]}, tags[2:]...)}); err == nil {
		t.Fatal("decoded metadata with a chunk missing")
	}
	// Without the pool's tag, or under another pool's name, it is not ours.
	for _, foreign := range []lvm.LV{
		{Name: l.Name, Tags: tags[1:]},
		{Name: "flashpv-other-" + key, Tags: tags},
		{Name: "data", Tags: tags},
	} {
		if _, ok := p.keyOf(foreign); ok {
			t.Errorf("LV %s with tags %d claimed", foreign.Name, len(foreign.Tags))
		}
	}
	if got := p.roundExtent(1); got != 4<<20 {
		t.Fatalf("1 byte rounds to %d", got)
	}
	if !lvm.ValidName(p.lvName(key)) {
		t.Fatalf("LV name %s invalid", p.lvName(key))
	}
}

// An lvm pool reads records without a version and of version 1, writes
// version 1, and refuses the pool when any of its LVs, an incomplete copy
// included, holds a newer record: before Open removes incomplete LVs.
func TestLVMRecordVersions(t *testing.T) {
	p := &LVMPool{mirror: newMirror("db"), cfg: Config{Name: "db", VG: "vg0"}, extent: 4 << 20}
	key, skey := KeyForName("pvc-1"), KeyForName("snap-1")
	lv := func(name, record string, extra ...string) lvm.LV {
		tags, err := p.metaTags(json.RawMessage(record))
		if err != nil {
			t.Fatal(err)
		}
		return lvm.LV{Name: name, VG: "vg0", Size: 8 << 20, Tags: append(tags, extra...)}
	}
	vol := func(version string) lvm.LV {
		return lv(p.lvName(key), `{`+version+`"id":"db.`+key+`","name":"pvc-1","sizeBytes":8388608,"mode":"block","created":"2026-11-30T10:00:00Z"}`)
	}
	snap := func(version string, extra ...string) lvm.LV {
		return lv(p.snapLVName(skey), `{`+version+`"id":"db.`+skey+`","name":"snap-1","sourceVolumeID":"db.`+key+`","sizeBytes":8388608,"mode":"block","created":"2026-11-30T10:00:00Z"}`, extra...)
	}
	for _, version := range []string{``, `"formatVersion":1,`} {
		v, err := p.decode(vol(version))
		if err != nil || v.FormatVersion != 1 || v.Name != "pvc-1" {
			t.Errorf("volume record %q: %+v, %v", version, v, err)
		}
		s, err := p.decodeSnapshot(snap(version), skey)
		if err != nil || s.FormatVersion != 1 {
			t.Errorf("snapshot record %q: %+v, %v", version, s, err)
		}
		if err := p.refuseNewerLVs([]lvm.LV{vol(version), snap(version)}); err != nil {
			t.Errorf("records %q refused: %v", version, err)
		}
	}
	newer := `"formatVersion":3,`
	if _, err := p.decode(vol(newer)); !errors.Is(err, diskformat.ErrNewer) {
		t.Errorf("newer volume record: %v", err)
	}
	for name, lvs := range map[string][]lvm.LV{
		"volume":             {vol(newer), snap("")},
		"incomplete copy":    {vol(""), snap(newer, lvTagIncomplete)},
		"snapshot, no other": {snap(newer)},
	} {
		err := p.refuseNewerLVs(lvs)
		if !errors.Is(err, ErrUnusable) || !errors.Is(err, diskformat.ErrNewer) || !strings.Contains(err.Error(), "version 3") {
			t.Errorf("%s of a newer format: %v", name, err)
		}
	}
	// What the pool writes carries its version.
	tags, err := p.tags(&Volume{ID: "db." + key, Name: "pvc-1", Mode: ModeBlock})
	if err != nil {
		t.Fatal(err)
	}
	data, err := metaJSON(lvm.LV{Name: p.lvName(key), Tags: tags})
	if err != nil || !strings.Contains(string(data), `"formatVersion":1,`) {
		t.Errorf("written record %s, %v", data, err)
	}
}

// A thin pool's fill is LVM's percentages as fractions, and unknown (nil,
// not an empty pool) while the thin pool is inactive.
func TestThinFill(t *testing.T) {
	active := &lvm.LV{Name: "tp", Attr: "twi-aotz--", Active: true, DataPercent: 96.5, MetadataPercent: 12.25}
	if got := thinFill(active); got == nil || *got != (ThinFill{Data: 0.965, Metadata: 0.1225}) {
		t.Errorf("active thin pool: fill %+v, want 0.965 and 0.1225", got)
	}
	if got := thinFill(&lvm.LV{Name: "tp", Attr: "twi---tz--"}); got != nil {
		t.Errorf("inactive thin pool: fill %+v, want none", *got)
	}
}
