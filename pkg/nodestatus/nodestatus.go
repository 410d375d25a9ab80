// Package nodestatus is what one node's flashpv tells the cluster about
// itself: its version, its pools (kind, space, health), its volumes (used
// space, health) and the orphans it found. The node plugin serves it on
// its health address (Path); the cluster controller fetches it from every
// node plugin pod and writes it, one key per node, into a ConfigMap
// (wellknown.NodeStatusConfigMap), where `kubectl flashpv` reads it. The
// node plugin so still calls no Kubernetes API. The package imports
// nothing of Kubernetes.
package nodestatus

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Path is where the node plugin serves its Status, as JSON.
const Path = "/status"

// MaxBytes bounds one node's document, on the wire and when decoded.
const MaxBytes = 512 << 10

// Status is one node's state as its flashpv sees it.
type Status struct {
	Node    string    `json:"node"`
	Version string    `json:"version"`
	AsOf    time.Time `json:"asOf"`
	Pools   []Pool    `json:"pools"`
	// Volumes are the volumes of usable pools; left out (nil, with
	// VolumesOmitted set) when the cluster's documents grew too big.
	Volumes        []Volume `json:"volumes,omitempty"`
	VolumesOmitted bool     `json:"volumesOmitted,omitempty"`
	Orphans        Orphans  `json:"orphans"`
}

// Pool is one pool's kind, space and health.
type Pool struct {
	Name string `json:"name"`
	Kind string `json:"kind"`
	// Capacity is the pool's size minus its reserve; Allocated the sum of
	// its volumes' sizes (what is promised); Available what can still be
	// promised. -1 when they could not be measured (a failing pool).
	Capacity  int64 `json:"capacity"`
	Allocated int64 `json:"allocated"`
	Available int64 `json:"available"`
	Volumes   int   `json:"volumes"`
	// Healthy is false when the pool's storage fails its probe or is not
	// set up for its kind; Reason (PoolIOError, PoolUnusable...) and
	// Message say why.
	Healthy bool   `json:"healthy"`
	Reason  string `json:"reason,omitempty"`
	Message string `json:"message,omitempty"`
}

// Volume is one volume's used space and health.
type Volume struct {
	ID   string `json:"id"`
	Size int64  `json:"size"`
	// Used is what the volume's filesystem uses; -1 when it is not known
	// here (a Block volume, or a filesystem not mounted on the node).
	Used     int64     `json:"used"`
	Problems []Problem `json:"problems,omitempty"`
}

// Problem is something wrong with a volume, as its health reports it.
type Problem struct {
	Reason  string `json:"reason"`
	Message string `json:"message"`
}

// Orphans are the volumes no PersistentVolume names, as the node's last
// scan found them.
type Orphans struct {
	// Judged is false when the node could not tell (no current volume
	// list from the controller); State then says why.
	Judged  bool     `json:"judged"`
	State   string   `json:"state,omitempty"`
	Volumes []Orphan `json:"volumes,omitempty"`
}

// Orphan is a volume no PersistentVolume names.
type Orphan struct {
	ID      string    `json:"id"`
	Pool    string    `json:"pool"`
	Name    string    `json:"name"`
	Created time.Time `json:"created"`
	Since   time.Time `json:"since"`
}

// Entry is the ConfigMap value for one node: the last Status fetched from
// it, when, and the error of the latest attempt when it failed (the Status
// is then the last good one, or nil).
type Entry struct {
	Fetched time.Time `json:"fetched,omitzero"`
	Error   string    `json:"error,omitempty"`
	Status  *Status   `json:"status,omitempty"`
}

// Decode reads a Status as the node serves it.
func Decode(data []byte) (Status, error) {
	if len(data) > MaxBytes {
		return Status{}, fmt.Errorf("node status: %d bytes, over %d", len(data), MaxBytes)
	}
	var s Status
	if err := json.Unmarshal(data, &s); err != nil {
		return Status{}, fmt.Errorf("node status: %w", err)
	}
	if s.Node == "" || s.AsOf.IsZero() {
		return Status{}, errors.New("node status: node or asOf missing")
	}
	return s, nil
}

// EncodeEntry writes e as a ConfigMap value.
func EncodeEntry(e Entry) (string, error) {
	b, err := json.Marshal(e)
	return string(b), err
}

// DecodeEntry reads a ConfigMap value.
func DecodeEntry(data string) (Entry, error) {
	var e Entry
	if err := json.Unmarshal([]byte(data), &e); err != nil {
		return Entry{}, fmt.Errorf("node status entry: %w", err)
	}
	if e.Status == nil && e.Error == "" {
		return Entry{}, errors.New("node status entry: neither a status nor an error")
	}
	return e, nil
}

// Volume returns the volume with the ID, if the status lists it.
func (s *Status) Volume(id string) (Volume, bool) {
	for _, v := range s.Volumes {
		if v.ID == id {
			return v, true
		}
	}
	return Volume{}, false
}
