package pool

import (
	"fmt"
	"sort"
	"sync"
)

// mirror keeps every volume's metadata of a pool in memory. The backend
// writes its own persistent copy first and only then remembers it here.
type mirror struct {
	name string
	vmu  sync.RWMutex
	vols map[string]*Volume
	bad  map[string]error // keys whose stored metadata could not be read
	// snaps and badSnaps are the same for the pool's snapshots.
	snaps    map[string]*Snapshot
	badSnaps map[string]error
}

func newMirror(name string) mirror {
	return mirror{name: name, vols: map[string]*Volume{}, bad: map[string]error{}, snaps: map[string]*Snapshot{}, badSnaps: map[string]error{}}
}

func (m *mirror) Name() string { return m.name }

// remember records what was just written for key (or, with v nil, removed).
func (m *mirror) remember(key string, v *Volume) {
	m.vmu.Lock()
	defer m.vmu.Unlock()
	delete(m.bad, key)
	if v == nil {
		delete(m.vols, key)
	} else {
		m.vols[key] = v.clone()
	}
}

// Get returns the volume with the given key.
func (m *mirror) Get(key string) (*Volume, error) {
	if !keyRE.MatchString(key) {
		return nil, fmt.Errorf("%w: malformed volume key", ErrInvalid)
	}
	m.vmu.RLock()
	defer m.vmu.RUnlock()
	if err := m.bad[key]; err != nil {
		return nil, err
	}
	v, ok := m.vols[key]
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, VolumeID{m.name, key})
	}
	return v.clone(), nil
}

// GetByName returns the volume with the given CSI name.
func (m *mirror) GetByName(name string) (*Volume, error) {
	v, err := m.Get(KeyForName(name))
	if err == nil && v.Name != name {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, name)
	}
	return v, err
}

// List returns every volume of the pool, ordered by ID.
func (m *mirror) List() ([]*Volume, error) {
	m.vmu.RLock()
	defer m.vmu.RUnlock()
	for _, err := range m.bad {
		return nil, err
	}
	vols := make([]*Volume, 0, len(m.vols))
	for _, v := range m.vols {
		vols = append(vols, v.clone())
	}
	sort.Slice(vols, func(i, j int) bool { return vols[i].ID < vols[j].ID })
	return vols, nil
}
