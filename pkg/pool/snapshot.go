package pool

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"time"

	"github.com/flashpv/flashpv/pkg/diskformat"
	"github.com/flashpv/flashpv/pkg/durable"
)

// Snapshot is the persistent record of a snapshot: a point-in-time copy of a
// volume's data in the volume's pool, independent of the volume (deleting
// either leaves the other intact). Its ID has the form of volume IDs,
// "<pool>.<key of the snapshot name>", so a retried CreateSnapshot finds it.
type Snapshot struct {
	// FormatVersion is the on-disk format the record was written in
	// (package diskformat); it is written as this binary's own.
	FormatVersion int `json:"formatVersion,omitempty"`

	ID             string `json:"id"`
	Name           string `json:"name"`
	SourceVolumeID string `json:"sourceVolumeID"`
	// SizeBytes is the source's size when the snapshot was taken: the
	// smallest volume it can be restored to.
	SizeBytes int64     `json:"sizeBytes"`
	Mode      Mode      `json:"mode"`
	FsType    string    `json:"fsType,omitempty"`
	Created   time.Time `json:"created"`
	// Format is the source's Format then: a volume restored from the
	// snapshot holds the same filesystem, never to be made again.
	Format string `json:"format,omitempty"`
	// ProjectID is the XFS project of a quota pool's snapshot directory.
	ProjectID uint32 `json:"projectID,omitempty"`
	// Shared: the snapshot shares its blocks with its source (a reflink),
	// so it reserves its size in the pool: every shared block of the
	// source may be rewritten, and each rewrite takes a new block.
	Shared bool `json:"shared,omitempty"`
}

// Key is the snapshot's key in its pool.
func (s *Snapshot) Key() string {
	id, _ := ParseVolumeID(s.ID)
	return id.Key
}

// SnapshotSpec is what CreateSnapshot asks for.
type SnapshotSpec struct {
	Name string
	// Source is the volume to snapshot, as its pool has it.
	Source *Volume
	// Quiesce runs the step that copies the source's data (nil: run it as
	// it is); see Quiesce.
	Quiesce Quiesce
}

// Quiesce runs step, the part of a snapshot or clone that reads a volume's
// data, so that what it reads is one point in time: the driver freezes a
// filesystem staged on the node around it, or refuses when no point-in-time
// copy is possible. instant tells that step is one atomic operation on the
// storage (a reflink, a thin snapshot) rather than a copy that takes time.
type Quiesce func(ctx context.Context, instant bool, step func(context.Context) error) error

func (q Quiesce) run(ctx context.Context, instant bool, step func(context.Context) error) error {
	if q == nil {
		return step(ctx)
	}
	return q(ctx, instant, step)
}

// Content is where a new volume's data comes from: a snapshot, or a volume
// (a clone) whose reading Quiesce wraps.
type Content struct {
	Snapshot *Snapshot
	Volume   *Volume
	Quiesce  Quiesce
}

// ID is the snapshot or volume ID the content comes from.
func (c Content) ID() string {
	if c.Snapshot != nil {
		return c.Snapshot.ID
	}
	if c.Volume != nil {
		return c.Volume.ID
	}
	return ""
}

// size is the smallest volume the content fits in, format the state of the
// filesystem it holds.
func (c Content) size() (int64, string) {
	if c.Snapshot != nil {
		return c.Snapshot.SizeBytes, c.Snapshot.Format
	}
	return c.Volume.SizeBytes, c.Volume.Format
}

// Snapshotter is implemented by pools that can snapshot their volumes.
type Snapshotter interface {
	// CreateSnapshot snapshots s.Source, or returns the existing snapshot
	// of the same name when it is of the same source; created tells which.
	CreateSnapshot(ctx context.Context, s SnapshotSpec) (snap *Snapshot, created bool, err error)
	// DeleteSnapshot removes a snapshot; a missing one is not an error.
	DeleteSnapshot(ctx context.Context, key string) error
	GetSnapshot(key string) (*Snapshot, error)
	// ListSnapshots returns every snapshot of the pool, ordered by ID.
	ListSnapshots() ([]*Snapshot, error)
}

// Cloner is implemented by pools that can make a volume from a snapshot or
// from another volume of theirs.
type Cloner interface {
	// CreateFrom makes a volume as Create does, holding a copy of the
	// content's data. s.SizeBytes must be at least the content's size; the
	// volume's own filesystem, if it is bigger, grows when it is staged.
	CreateFrom(ctx context.Context, s Spec, c Content) (v *Volume, created bool, err error)
}

// checkSnapshotSpec validates a snapshot request and returns its key.
func checkSnapshotSpec(s SnapshotSpec) (string, error) {
	if err := ValidateName(s.Name); err != nil {
		return "", err
	}
	if s.Source == nil {
		return "", fmt.Errorf("%w: snapshot %q has no source volume", ErrInvalid, s.Name)
	}
	return KeyForName(s.Name), nil
}

// checkContent validates a create from c and returns the volume's size
// (s's, at least the content's).
func checkContent(s Spec, c Content) error {
	if (c.Snapshot == nil) == (c.Volume == nil) {
		return fmt.Errorf("%w: a volume comes from one snapshot or one volume", ErrInvalid)
	}
	size, _ := c.size()
	if s.SizeBytes < size {
		return fmt.Errorf("%w: %d bytes requested, the source %s has %d", ErrOutOfRange, s.SizeBytes, c.ID(), size)
	}
	if s.Source != c.ID() {
		return fmt.Errorf("%w: spec and content name different sources", ErrInvalid)
	}
	return nil
}

// newSnapshot is the record of a snapshot of s.Source in pool with key.
func newSnapshot(pool, key string, s SnapshotSpec) *Snapshot {
	return &Snapshot{
		ID: VolumeID{pool, key}.String(), Name: s.Name, SourceVolumeID: s.Source.ID,
		SizeBytes: s.Source.SizeBytes, Mode: s.Source.Mode, FsType: s.Source.FsType,
		Format: s.Source.Format, Created: time.Now().UTC().Truncate(time.Second),
	}
}

// sameSnapshot makes a repeated CreateSnapshot return the snapshot it made.
func (s *Snapshot) sameSnapshot(spec SnapshotSpec) error {
	switch {
	case s.Name != spec.Name:
		return fmt.Errorf("%w: ID collision between snapshots %q and %q", ErrAlreadyExists, s.Name, spec.Name)
	case s.SourceVolumeID != spec.Source.ID:
		return fmt.Errorf("%w: snapshot %q exists, of volume %s", ErrAlreadyExists, s.Name, s.SourceVolumeID)
	}
	return nil
}

func (s *Snapshot) clone() *Snapshot {
	c := *s
	return &c
}

func readSnapshot(path string) (*Snapshot, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return parseSnapshot(data, "snapshot metadata "+path)
}

// parseSnapshot is the one reader of snapshot records, from a file or
// from LV tags: a record of a newer format is refused (diskformat.ErrNewer).
func parseSnapshot(data []byte, what string) (*Snapshot, error) {
	var s Snapshot
	version, err := diskformat.Unmarshal(what, data, &s)
	if err != nil {
		return nil, err
	}
	s.FormatVersion = version
	return &s, nil
}

// stamped is s as this binary writes it: in its own format version.
func (s *Snapshot) stamped() *Snapshot {
	c := *s
	c.FormatVersion = diskformat.Current
	return &c
}

// writeSnapshot stores a snapshot's metadata file atomically, then
// remembers it.
func writeSnapshot(m *mirror, path, key string, s *Snapshot) error {
	data, err := json.MarshalIndent(s.stamped(), "", "  ")
	if err != nil {
		return err
	}
	if err := durable.WriteFile(path, data); err != nil {
		return err
	}
	m.rememberSnapshot(key, s)
	return nil
}

// rememberSnapshot records what was just written for key (or, with s nil,
// removed).
func (m *mirror) rememberSnapshot(key string, s *Snapshot) {
	m.vmu.Lock()
	defer m.vmu.Unlock()
	delete(m.badSnaps, key)
	if s == nil {
		delete(m.snaps, key)
	} else {
		m.snaps[key] = s.clone()
	}
}

// GetSnapshot returns the snapshot with the given key.
func (m *mirror) GetSnapshot(key string) (*Snapshot, error) {
	if !keyRE.MatchString(key) {
		return nil, fmt.Errorf("%w: malformed snapshot key", ErrInvalid)
	}
	m.vmu.RLock()
	defer m.vmu.RUnlock()
	if err := m.badSnaps[key]; err != nil {
		return nil, err
	}
	s, ok := m.snaps[key]
	if !ok {
		return nil, fmt.Errorf("%w: snapshot %s", ErrNotFound, VolumeID{m.name, key})
	}
	return s.clone(), nil
}

// ListSnapshots returns every snapshot of the pool, ordered by ID.
func (m *mirror) ListSnapshots() ([]*Snapshot, error) {
	m.vmu.RLock()
	defer m.vmu.RUnlock()
	for _, err := range m.badSnaps {
		return nil, err
	}
	out := make([]*Snapshot, 0, len(m.snaps))
	for _, s := range m.snaps {
		out = append(out, s.clone())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}
