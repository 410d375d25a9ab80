package pool

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/flashpv/flashpv/pkg/diskformat"
)

// Mode is how a volume is consumed.
type Mode string

const (
	ModeFilesystem Mode = "filesystem"
	ModeBlock      Mode = "block"
)

// Volume is the persistent record of one volume. It is stored as JSON next to
// the volume's image and is the only source of truth about it.
type Volume struct {
	// FormatVersion is the on-disk format the record was written in
	// (package diskformat); it is written as this binary's own.
	FormatVersion int `json:"formatVersion,omitempty"`

	ID         string            `json:"id"`
	Name       string            `json:"name"`
	SizeBytes  int64             `json:"sizeBytes"`
	Mode       Mode              `json:"mode"`
	FsType     string            `json:"fsType,omitempty"`
	Parameters map[string]string `json:"parameters,omitempty"`
	Created    time.Time         `json:"created"`
	// ProjectID is the XFS project of a quota pool's volume.
	ProjectID uint32 `json:"projectID,omitempty"`
	// Source is the snapshot or volume the volume was made from.
	Source string `json:"source,omitempty"`
	// Shared: the volume's data may share blocks with another volume or
	// snapshot (a reflink), so it reserves its whole size besides the
	// blocks it has: each of its shared blocks takes a new one when written.
	Shared bool `json:"shared,omitempty"`
	NodeState
}

// Format states of a volume's own filesystem.
const (
	// FormatPending: the volume has no filesystem flashpv has mounted yet;
	// whatever is on it (what a killed mkfs left) is formatted over.
	FormatPending = "pending"
	// FormatDone: flashpv mounted the filesystem it made; it is never
	// formatted again.
	FormatDone = "done"
)

// NodeState is what the node side records of a volume, so that the retry of
// a call that a restart cut short finishes what it began.
type NodeState struct {
	// Format is FormatPending or FormatDone for a Filesystem volume with a
	// filesystem of its own; "" where there is none, and for volumes made
	// before it was recorded, which are judged by what their device holds.
	Format string `json:"format,omitempty"`
	// Remount, when set, is a staging mount taken down for an offline step
	// (an ext4 growth); the next call on the volume puts it back.
	Remount *Remount `json:"remount,omitempty"`
	// Incoming, when set, is a transfer from another node that has not
	// finished: the volume's data is not complete, and nothing may stage,
	// snapshot or copy it until a retried CreateVolume has finished it.
	Incoming *Incoming `json:"incoming,omitempty"`
	// Move, when set, ties the volume to a move between nodes
	// (docs/moving.md): the copy a move brought or brings here, or the
	// source's volume it fenced. Older flashpv ignores it, and so does not
	// hold a fenced volume.
	Move *Move `json:"move,omitempty"`
}

// Move is a volume's part in a move to another node.
type Move struct {
	// ID is the move's (the controller's record).
	ID string `json:"id"`
	// Fenced: this node is the move's source, and the volume may not be
	// staged or published here until the move unfences it.
	Fenced bool `json:"fenced,omitempty"`
	// Peer is the other node: the target of a fenced volume, the source
	// of a copy.
	Peer string `json:"peer,omitempty"`
}

// Remount is a mount to restore.
type Remount struct {
	Path  string   `json:"path"`
	Flags []string `json:"flags,omitempty"`
}

// Key is the volume's file key in its pool (the part of its ID after the pool).
func (v *Volume) Key() string {
	_, key, _ := strings.Cut(v.ID, ".")
	return key
}

// Spec is what CreateVolume asks for, after validation and rounding.
type Spec struct {
	Name       string
	SizeBytes  int64 // the size to allocate
	MinBytes   int64 // an existing volume must be at least this big...
	MaxBytes   int64 // ...and at most this (0: unbounded)
	Mode       Mode
	FsType     string
	Parameters map[string]string
	// Source is the ID of the snapshot or volume a volume is made from.
	Source string
	// Incoming marks a volume whose data a transfer from another node
	// writes (see Importer).
	Incoming *Incoming
	// Move marks the copy a move makes (see NodeState.Move).
	Move *Move
}

// compatible reports whether an existing volume satisfies spec, which makes a
// repeated CreateVolume return it instead of failing.
func (v *Volume) compatible(s Spec) error {
	switch {
	case v.Name != s.Name:
		return fmt.Errorf("%w: ID collision between %q and %q", ErrAlreadyExists, v.Name, s.Name)
	case v.SizeBytes < s.MinBytes || (s.MaxBytes > 0 && v.SizeBytes > s.MaxBytes):
		return fmt.Errorf("%w: volume %q has %d bytes, outside the requested range", ErrAlreadyExists, v.Name, v.SizeBytes)
	case v.Mode != s.Mode:
		return fmt.Errorf("%w: volume %q is a %s volume", ErrAlreadyExists, v.Name, v.Mode)
	case v.FsType != s.FsType:
		return fmt.Errorf("%w: volume %q has fsType %q", ErrAlreadyExists, v.Name, v.FsType)
	case v.Source != s.Source:
		return fmt.Errorf("%w: volume %q was made from %q", ErrAlreadyExists, v.Name, v.Source)
	case !maps.Equal(v.Parameters, s.Parameters) && !(len(v.Parameters) == 0 && len(s.Parameters) == 0):
		return fmt.Errorf("%w: volume %q was created with other parameters", ErrAlreadyExists, v.Name)
	}
	return nil
}

func (v *Volume) clone() *Volume {
	c := *v
	c.Parameters = maps.Clone(v.Parameters)
	if v.Remount != nil {
		r := *v.Remount
		r.Flags = slices.Clone(r.Flags)
		c.Remount = &r
	}
	if v.Incoming != nil {
		in := *v.Incoming
		c.Incoming = &in
	}
	if v.Move != nil {
		m := *v.Move
		c.Move = &m
	}
	return &c
}

func readVolume(path string) (*Volume, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return parseVolume(data, "volume metadata "+path)
}

// parseVolume is the one reader of volume records, from a file or from LV
// tags: a record of a newer format is refused (diskformat.ErrNewer).
func parseVolume(data []byte, what string) (*Volume, error) {
	var v Volume
	version, err := diskformat.Unmarshal(what, data, &v)
	if err != nil {
		return nil, err
	}
	v.FormatVersion = version
	return &v, nil
}

// stamped is v as this binary writes it: in its own format version.
func (v *Volume) stamped() *Volume {
	c := *v
	c.FormatVersion = diskformat.Current
	return &c
}

func encodeVolume(v *Volume) ([]byte, error) {
	return json.MarshalIndent(v.stamped(), "", "  ")
}
