package pool

import (
	"context"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// dataReader is a pool whose volumes' data can be read where it lives: an
// image file, an active LV's device.
type dataReader interface {
	// dataPath is where v's data can be read now, or "" (an LV that is
	// not active).
	dataPath(v *Volume) (string, error)
	checkFlights() *flights
}

func (p *ImagePool) dataPath(v *Volume) (string, error) { return p.ImagePath(v.Key()), nil }
func (p *ImagePool) checkFlights() *flights             { return &p.checks }
func (p *LVMPool) dataPath(v *Volume) (string, error)   { return p.FindDevice(v.Key()) }
func (p *LVMPool) checkFlights() *flights               { return &p.checks }

// CheckVolumes is p.Check and more: the first block of every volume whose
// storage is there is read from its device with O_DIRECT, so that a device
// returning I/O errors, or one that stopped answering, shows in the
// volume's health with the error. It waits at most probeWait in all.
func CheckVolumes(ctx context.Context, p Pool, vols []*Volume) map[string][]Problem {
	ctx, cancel := boundedWait(ctx)
	defer cancel()
	out := p.Check(ctx, vols)
	if out == nil {
		out = map[string][]Problem{}
	}
	r, ok := p.(dataReader)
	if !ok {
		return out
	}
	for _, v := range vols {
		if lost(out[v.ID]) {
			continue
		}
		path, err := r.dataPath(v)
		if err == nil && path == "" {
			continue
		}
		if err == nil {
			err = r.checkFlights().check(ctx, "read "+v.ID, func() error { return readFirstBlock(path) })
		}
		if err != nil {
			out[v.ID] = append(out[v.ID], dataProblem(v, path, err))
		}
	}
	return out
}

func dataProblem(v *Volume, path string, err error) Problem {
	pr := Problem{Reason: "StorageUnreadable", Message: fmt.Sprintf("volume %s: %v", v.ID, err)}
	switch {
	case errors.Is(err, ErrNotAnswering):
		pr.Reason = "StorageNotAnswering"
		pr.Message = fmt.Sprintf("volume %s: reading the first block of %s: %v", v.ID, path, err)
	case errors.Is(err, unix.EIO):
		pr.Reason = "StorageIOError"
	}
	return pr
}

// lost tells whether problems say a volume's storage is gone, so there is
// nothing to read.
func lost(problems []Problem) bool {
	for _, pr := range problems {
		if pr.DataLoss {
			return true
		}
	}
	return false
}
