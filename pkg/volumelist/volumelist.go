// Package volumelist is the message from the cluster controller to one
// node's flashpv: the IDs of the volumes that have a PersistentVolume on that
// node, as of a time. The controller writes one per node into a ConfigMap
// that the DaemonSet mounts; the node plugin reads its own file and so finds
// orphaned volumes without ever calling the Kubernetes API. The package
// imports nothing of Kubernetes.
package volumelist

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// List is the volumes with a PV on one node.
type List struct {
	// AsOf is when the controller, with its caches synced, saw exactly
	// these PVs; a volume created after it may have a PV the list misses.
	AsOf time.Time `json:"asOf"`
	// Volumes are volume IDs (the PVs' volume handles), sorted.
	Volumes []string `json:"volumes"`
}

// ErrNoList means that no list was written for this node (no controller,
// or it has not synced yet): nothing can be said about orphans.
var ErrNoList = errors.New("no volume list for this node")

// Encode writes l as the ConfigMap value for one node.
func Encode(l List) (string, error) {
	l.Volumes = slices.Clone(l.Volumes)
	slices.Sort(l.Volumes)
	l.Volumes = slices.Compact(l.Volumes)
	if l.Volumes == nil {
		l.Volumes = []string{}
	}
	b, err := json.Marshal(l)
	return string(b), err
}

// Decode reads a node's value.
func Decode(data []byte) (List, error) {
	var l List
	if err := json.Unmarshal(data, &l); err != nil {
		return List{}, fmt.Errorf("volume list: %w", err)
	}
	if l.AsOf.IsZero() || l.Volumes == nil {
		return List{}, errors.New("volume list: asOf or volumes missing")
	}
	return l, nil
}

// Read reads the list of node from dir, where the ConfigMap is mounted (one
// file per node name).
func Read(dir, node string) (List, error) {
	if node == "" || node != filepath.Base(node) || node == "." || node == ".." {
		return List{}, fmt.Errorf("volume list: bad node name %q", node)
	}
	data, err := os.ReadFile(filepath.Join(dir, node))
	if errors.Is(err, os.ErrNotExist) {
		return List{}, ErrNoList
	}
	if err != nil {
		return List{}, err
	}
	return Decode(data)
}

// Has reports whether the list names the volume.
func (l List) Has(id string) bool {
	_, ok := slices.BinarySearch(l.Volumes, id)
	return ok
}
