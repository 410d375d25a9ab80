package pool

import (
	"strings"
	"testing"
	"time"

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
