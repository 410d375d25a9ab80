package auth

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// TrustDir reads a Trust from the *.pem files of a directory (a mounted
// ConfigMap), and re-reads it at most every refresh, so that a rotation
// reaches a running node.
type TrustDir struct {
	dir     string
	refresh time.Duration

	mu     sync.Mutex
	loaded time.Time // zero: never read
	trust  *Trust
	err    error
}

// NewTrustDir reads dir lazily, on the first Current. refresh <= 0 re-reads
// it on every call; DefaultTrustRefresh suits a node.
func NewTrustDir(dir string, refresh time.Duration) *TrustDir {
	return &TrustDir{dir: dir, refresh: refresh}
}

// Current returns the trust read from the directory, re-read if older than
// refresh. A failed read is not hidden behind an older trust: a CA that was
// removed must not stay trusted because its successor did not load.
func (d *TrustDir) Current() (*Trust, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	now := time.Now()
	if !d.loaded.IsZero() && now.Sub(d.loaded) < d.refresh {
		return d.trust, d.err
	}
	d.trust, d.err = readTrustDir(d.dir)
	d.loaded = now
	return d.trust, d.err
}

// readTrustDir reads every *.pem file of dir through its name, which in a
// ConfigMap mount is a symlink into the ..data symlink to the current
// version; dot-files (..data, the versioned directories) are skipped.
func readTrustDir(dir string) (*Trust, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("reading trusted CAs: %w", err)
	}
	var pems [][]byte
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, ".") || !strings.HasSuffix(name, ".pem") {
			continue
		}
		path := filepath.Join(dir, name)
		data, regular, err := readRegular(path)
		if errors.Is(err, os.ErrNotExist) {
			continue // removed by a rotation since ReadDir
		}
		if err != nil {
			return nil, fmt.Errorf("reading trusted CAs: %w", err)
		}
		if !regular {
			continue
		}
		if _, err := parseCAs(data); err != nil {
			return nil, fmt.Errorf("trusted CAs in %s: %w", path, err)
		}
		pems = append(pems, data)
	}
	if len(pems) == 0 {
		return nil, fmt.Errorf("no trusted CA certificate (*.pem) in %s", dir)
	}
	t, err := NewTrust(pems...)
	if err != nil {
		return nil, fmt.Errorf("trusted CAs in %s: %w", dir, err)
	}
	return t, nil
}

// readRegular reads path, following symlinks, if it is a regular file.
func readRegular(path string) (data []byte, regular bool, err error) {
	fi, err := os.Stat(path)
	if err != nil || !fi.Mode().IsRegular() {
		return nil, false, err
	}
	data, err = os.ReadFile(path)
	return data, err == nil, err
}
