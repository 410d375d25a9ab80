// Package durable makes changes to directories survive a crash: a file
// renamed or removed is only durable once its directory is synced.
package durable

import (
	"errors"
	"os"
	"path/filepath"
)

// SyncDir syncs the directory dir, so that the names created, renamed or
// removed in it are on disk.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Remove removes the files paths that exist (a missing one is fine) and
// syncs the directories it removed from.
func Remove(paths ...string) error {
	var errs []error
	dirs := map[string]bool{}
	for _, p := range paths {
		err := os.Remove(p)
		switch {
		case err == nil:
			dirs[filepath.Dir(p)] = true
		case !errors.Is(err, os.ErrNotExist):
			errs = append(errs, err)
		}
	}
	for d := range dirs {
		errs = append(errs, SyncDir(d))
	}
	return errors.Join(errs...)
}

// WriteFile replaces path with data so that a crash leaves either the old
// or the new content: a temporary file path+".tmp" written and synced,
// renamed over path, and the directory synced. A failure removes the
// temporary file; one a crash leaves is the caller's to collect.
func WriteFile(path string, data []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	return SyncDir(filepath.Dir(path))
}
