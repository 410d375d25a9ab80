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
