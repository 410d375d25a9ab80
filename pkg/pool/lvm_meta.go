package pool

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/flashpv/flashpv/pkg/lvm"
)

// An lvm pool keeps each volume's metadata in its LV's tags: base64url JSON
// split over numbered tags, beside the pool's own tag. A change of the
// metadata is one lvchange, one LVM metadata commit.

// tags encodes a volume's metadata as LV tags.
func (p *LVMPool) tags(v *Volume) ([]string, error) { return p.metaTags(v.stamped()) }

// snapshotTags encodes a snapshot's metadata as LV tags.
func (p *LVMPool) snapshotTags(s *Snapshot) ([]string, error) { return p.metaTags(s.stamped()) }

// metaTags encodes a volume's or a snapshot's record, stamped with this
// binary's format version, as LV tags.
func (p *LVMPool) metaTags(v any) ([]string, error) {
	data, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	enc := base64.RawURLEncoding.EncodeToString(data)
	tags := []string{lvTagPool + p.name}
	for i := 0; len(enc) > 0; i++ {
		n := min(len(enc), lvTagChunk)
		tags = append(tags, lvTagMeta+strconv.Itoa(i)+"="+enc[:n])
		enc = enc[n:]
	}
	return tags, nil
}

// decode reads a volume back from its LV: metadata from the tags, the size
// from the LV itself.
func (p *LVMPool) decode(l lvm.LV) (*Volume, error) {
	data, err := metaJSON(l)
	if err != nil {
		return nil, err
	}
	v, err := parseVolume(data, "volume metadata of LV "+l.Name)
	if err != nil {
		return nil, err
	}
	key, _ := p.keyOf(l)
	if v.ID != (VolumeID{p.name, key}).String() {
		return nil, fmt.Errorf("LV %s: metadata names volume %s", l.Name, v.ID)
	}
	v.SizeBytes = l.Size
	return v, nil
}

// metaJSON reassembles the metadata of an LV from its tags.
func metaJSON(l lvm.LV) ([]byte, error) {
	chunks := map[int]string{}
	for _, t := range l.Tags {
		rest, ok := strings.CutPrefix(t, lvTagMeta)
		if !ok {
			continue
		}
		i, chunk, ok := strings.Cut(rest, "=")
		n, err := strconv.Atoi(i)
		if !ok || err != nil {
			return nil, fmt.Errorf("LV %s: malformed metadata tag %q", l.Name, t)
		}
		chunks[n] = chunk
	}
	var enc strings.Builder
	for i := 0; i < len(chunks); i++ {
		c, ok := chunks[i]
		if !ok {
			return nil, fmt.Errorf("LV %s: metadata tag %d missing", l.Name, i)
		}
		enc.WriteString(c)
	}
	data, err := base64.RawURLEncoding.DecodeString(enc.String())
	if err != nil {
		return nil, fmt.Errorf("LV %s: metadata: %w", l.Name, err)
	}
	return data, nil
}

// SetNodeState rewrites the volume's metadata tags in one LVM metadata
// commit.
func (p *LVMPool) SetNodeState(ctx context.Context, key string, st NodeState) (*Volume, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	v, err := p.Get(key)
	if err != nil {
		return nil, err
	}
	// The LV's own tags, not v's encoding: the size in them is the one at
	// creation.
	l, err := p.lvm.LV(ctx, p.cfg.VG, p.lvName(key))
	if err != nil {
		return nil, err
	}
	var old []string
	for _, t := range l.Tags {
		if strings.HasPrefix(t, lvTagMeta) {
			old = append(old, t)
		}
	}
	v.NodeState = st
	tags, err := p.tags(v)
	if err != nil {
		return nil, err
	}
	add, del := tagChanges(old, tags)
	if err := p.lvm.SetTags(ctx, p.cfg.VG, p.lvName(key), add, del); err != nil {
		return nil, err
	}
	return p.reload(ctx, key)
}

// tagChanges lists the tags to add and delete to go from old to tags.
func tagChanges(old, tags []string) (add, del []string) {
	have := map[string]bool{}
	for _, t := range old {
		have[t] = true
	}
	want := map[string]bool{}
	for _, t := range tags {
		want[t] = true
		if !have[t] {
			add = append(add, t)
		}
	}
	for _, t := range old {
		if !want[t] {
			del = append(del, t)
		}
	}
	return add, del
}

// refuseNewerLVs fails (see refuseNewer) when any LV of the pool, complete
// or not, holds a record of a newer format than this binary reads. It runs
// before Open removes anything: what a newer flashpv made (an incomplete
// copy included) is left as it is.
func (p *LVMPool) refuseNewerLVs(lvs []lvm.LV) error {
	for _, l := range lvs {
		var err error
		if key, ok := p.snapKeyOf(l); ok {
			_, err = p.decodeSnapshot(l, key)
		} else if _, ok := p.keyOf(l); ok {
			_, err = p.decode(l)
		}
		if err := refuseNewer(err); err != nil {
			return fmt.Errorf("pool %s: %w", p.name, err)
		}
	}
	return nil
}
