package auth

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/flashpv/flashpv/pkg/diskformat"
	"github.com/flashpv/flashpv/pkg/durable"
)

// Replay remembers the IDs of used capabilities until they expire, in a
// file, so that a restarted source still refuses a replay. One process
// owns the file.
type Replay struct {
	path string
	max  int

	mu   sync.Mutex
	used map[string]int64 // capability ID -> expiry, unix seconds
}

// replayFile is the file's content; FormatVersion its on-disk format
// (package diskformat).
type replayFile struct {
	FormatVersion int              `json:"formatVersion,omitempty"`
	Used          map[string]int64 `json:"used"`
}

// OpenReplay reads the used IDs from path; a missing file holds none. A
// corrupt file is an error, not an empty set, which would open replays; so
// is a file of a newer format (diskformat.ErrNewer), which is kept as it is.
func OpenReplay(path string) (*Replay, error) {
	r := &Replay{path: path, max: MaxReplayEntries, used: map[string]int64{}}
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return r, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading used capabilities: %w", err)
	}
	var f replayFile
	if _, err := diskformat.Unmarshal("used capabilities file "+path, data, &f); err != nil {
		return nil, err
	}
	for id, exp := range f.Used {
		r.used[id] = exp
	}
	return r, nil
}

// Use records that the capability id, valid until expires, is being used,
// durably before it returns nil. It refuses one seen before (ErrReplayed),
// an expired one (ErrExpired), and more than MaxReplayEntries live ones
// (ErrBusy). Expired IDs are forgotten: their capabilities open nothing.
func (r *Replay) Use(id string, expires, now time.Time) error {
	if id == "" {
		return fmt.Errorf("%w: no capability ID", ErrForged)
	}
	exp := expires.Unix()
	if expires.Nanosecond() != 0 {
		exp++ // remember it until it has expired, never less
	}
	if now.After(time.Unix(exp, 0)) {
		return fmt.Errorf("%w: expired at %s", ErrExpired, expires.UTC().Format(time.RFC3339))
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.prune(now)
	if _, ok := r.used[id]; ok {
		return fmt.Errorf("%w: capability %s", ErrReplayed, id)
	}
	if len(r.used) >= r.max {
		return fmt.Errorf("%w: %d capabilities not yet expired", ErrBusy, len(r.used))
	}
	r.used[id] = exp
	if err := r.save(); err != nil {
		// Not recorded, so not used: the caller refuses the transfer.
		delete(r.used, id)
		return fmt.Errorf("recording a used capability: %w", err)
	}
	return nil
}

// Len returns how many IDs are remembered, expired ones included until the
// next Use.
func (r *Replay) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.used)
}

func (r *Replay) prune(now time.Time) {
	for id, exp := range r.used {
		if now.After(time.Unix(exp, 0)) {
			delete(r.used, id)
		}
	}
}

func (r *Replay) save() error {
	data, err := json.Marshal(replayFile{FormatVersion: diskformat.Current, Used: r.used})
	if err != nil {
		return err
	}
	return durable.WriteFile(r.path, data)
}
