package fsfreeze

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/flashpv/flashpv/pkg/diskformat"
	"github.com/flashpv/flashpv/pkg/durable"
)

// A record says that this mount point's filesystem is, or is about to be,
// frozen by us. Dev tells that filesystem from one mounted there later.
// FormatVersion is the on-disk format (package diskformat); a record of a
// newer one is refused and kept.
type record struct {
	FormatVersion int    `json:"formatVersion,omitempty"`
	Mountpoint    string `json:"mountpoint"`
	Dev           uint64 `json:"dev"`
}

const (
	recordPrefix = "frozen-"
	recordSuffix = ".json"
	tempSuffix   = ".tmp"
)

// recordName is the file name of mp's record: a hash, since mount points
// hold slashes and may be longer than a file name.
func recordName(mp string) string {
	sum := sha256.Sum256([]byte(mp))
	return recordPrefix + hex.EncodeToString(sum[:16]) + recordSuffix
}

// writeRecord writes rec durably and atomically: temp file, fsync, rename,
// fsync of the directory.
func writeRecord(dir string, rec record) error {
	rec.FormatVersion = diskformat.Current
	data, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	if err := durable.WriteFile(filepath.Join(dir, recordName(rec.Mountpoint)), data); err != nil {
		return fmt.Errorf("write freeze record: %w", err)
	}
	return nil
}

func readRecord(dir, mp string) (record, error) {
	return readRecordFile(filepath.Join(dir, recordName(mp)))
}

func readRecordFile(path string) (record, error) {
	var rec record
	data, err := os.ReadFile(path)
	if err != nil {
		return rec, err
	}
	if _, err := diskformat.Unmarshal("freeze record "+path, data, &rec); errors.Is(err, diskformat.ErrNewer) {
		return rec, err
	} else if err != nil || rec.Mountpoint == "" {
		return rec, fmt.Errorf("freeze record %s is corrupt: %q", path, data)
	}
	if recordName(rec.Mountpoint) != filepath.Base(path) {
		return rec, fmt.Errorf("freeze record %s names %s, whose record has another name", path, rec.Mountpoint)
	}
	return rec, nil
}

// removeRecord removes mp's record durably; a missing one is no error.
func removeRecord(dir, mp string) error {
	err := os.Remove(filepath.Join(dir, recordName(mp)))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	return durable.SyncDir(dir)
}

// listRecords reads every record in dir and removes the temp files of
// writes a crash interrupted (their freeze never started).
func listRecords(dir string) ([]record, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var recs []record
	var errs []error
	for _, e := range entries {
		name := e.Name()
		if !strings.HasPrefix(name, recordPrefix) {
			continue
		}
		if strings.HasSuffix(name, tempSuffix) {
			errs = append(errs, os.Remove(filepath.Join(dir, name)))
			continue
		}
		rec, err := readRecordFile(filepath.Join(dir, name))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		recs = append(recs, rec)
	}
	return recs, errors.Join(errs...)
}
