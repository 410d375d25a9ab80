// Package diskformat owns the version of the layout in which flashpv keeps
// its records on disk: volume and snapshot metadata (in a pool directory or
// in LV tags, with the node-side, transfer and move state they hold), the
// freeze records and the used-capability file of the state directory.
//
// Every record carries the version it was written in. A reader checks it
// before it trusts anything else in the record: a version newer than this
// binary knows means a newer flashpv wrote it, and guessing at its meaning
// could lose data, so the record (and what it describes) is refused and
// left exactly as it is. A record without a version was written before
// versions were recorded, in the layout that became version 1.
//
// A later layout must keep records where this one looks for them, with the
// version at the same place, so that an older binary finds them and refuses
// them instead of taking their data for leftovers to collect.
package diskformat

import (
	"encoding/json"
	"errors"
	"fmt"
)

// Current is the version this binary writes and the newest it reads.
//
// Version 1: the layout of every flashpv release before versions were
// recorded (a missing version reads as 1).
const Current = 1

// ErrNewer: a record was written in a newer format than this binary reads.
var ErrNewer = errors.New("newer on-disk format")

// Check returns the version a record holds, found being the number read from
// it (0 when it has none), or an error wrapping ErrNewer that names what was
// read, the version found and the newest this binary knows.
func Check(what string, found int) (int, error) {
	switch {
	case found == 0:
		return 1, nil
	case found < 0:
		return 0, fmt.Errorf("%s: invalid format version %d", what, found)
	case found > Current:
		return 0, fmt.Errorf("%w: %s has format version %d, this flashpv reads versions up to %d; run a flashpv that knows version %d (docs/upgrading.md)",
			ErrNewer, what, found, Current, found)
	}
	return found, nil
}

// Unmarshal decodes the JSON record data into v once its version, the
// top-level "formatVersion" field, is one this binary reads, and returns
// that version. The version is read on its own first, so a newer record is
// refused as newer even where its other fields no longer fit v.
func Unmarshal(what string, data []byte, v any) (int, error) {
	var head struct {
		FormatVersion int `json:"formatVersion"`
	}
	if err := json.Unmarshal(data, &head); err != nil {
		return 0, fmt.Errorf("%s is corrupt: %w", what, err)
	}
	version, err := Check(what, head.FormatVersion)
	if err != nil {
		return 0, err
	}
	if err := json.Unmarshal(data, v); err != nil {
		return 0, fmt.Errorf("%s is corrupt: %w", what, err)
	}
	return version, nil
}
