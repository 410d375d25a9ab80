package pool

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/flashpv/flashpv/pkg/loopdev"
)

// Source is how the node reaches the data of a pool's volumes: a loop device
// (image pools), an LV's device (lvm pools) or a directory (quota pools).
// Which one, the node side learns from the pool's Layout, never from its kind.
type Source interface {
	// Attach makes a volume's source available and returns it.
	Attach(ctx context.Context, v *Volume) (string, error)
	// Find returns a volume's source if it is available, or "".
	Find(v *Volume) (string, error)
	// Detach releases what Attach set up, when nothing uses it any more. It
	// is a no-op where the source stays (an LV stays active, a directory
	// where it is).
	Detach(ctx context.Context, v *Volume) error
	// Resized makes an attached source show its volume's new size.
	Resized(ctx context.Context, v *Volume, src string) error
}

// UsageReporter is implemented by pools whose volumes share one filesystem,
// so the filesystem's statistics do not tell a volume's use.
type UsageReporter interface {
	Usage(ctx context.Context, v *Volume) (int64, error)
}

// LoopDevices is what image sources need of the node's loop devices.
type LoopDevices interface {
	Find(file string) (string, error)
	AttachLimited(file string, limit *loopdev.Limit) (string, error)
	Detach(file string) error
}

// NodeEnv is what the node gives pools to attach volumes.
type NodeEnv struct {
	Loops LoopDevices
	// Limit is asked, with the number of volumes attached, before one more
	// is attached; an error refuses the attach.
	Limit func(attached int) error
}

// Sources builds the node side of every pool, by pool name.
func Sources(pools []Pool, env NodeEnv) map[string]Source {
	var imageDirs []string
	for _, p := range pools {
		if ip, ok := p.(*ImagePool); ok {
			imageDirs = append(imageDirs, ip.Dir())
		}
	}
	out := map[string]Source{}
	for _, p := range pools {
		switch p := p.(type) {
		case *ImagePool:
			out[p.Name()] = &imageSource{p: p, env: env, dirs: imageDirs}
		case *LVMPool:
			out[p.Name()] = lvmSource{p}
		case *QuotaPool:
			out[p.Name()] = quotaSource{p}
		default:
			out[p.Name()] = unusableSource{p.Name()}
		}
	}
	return out
}

type imageSource struct {
	p    *ImagePool
	env  NodeEnv
	dirs []string // every image pool's directory: the limit counts them all
}

func (s *imageSource) Attach(_ context.Context, v *Volume) (string, error) {
	img := s.p.ImagePath(v.Key())
	var limit *loopdev.Limit
	if s.env.Limit != nil {
		limit = &loopdev.Limit{Dirs: s.dirs, Check: s.env.Limit}
	}
	dev, err := s.env.Loops.AttachLimited(img, limit)
	if err != nil {
		return "", fmt.Errorf("attaching %s: %w", img, err)
	}
	return dev, nil
}

func (s *imageSource) Find(v *Volume) (string, error) {
	return s.env.Loops.Find(s.p.ImagePath(v.Key()))
}

func (s *imageSource) Detach(_ context.Context, v *Volume) error {
	return s.env.Loops.Detach(s.p.ImagePath(v.Key()))
}

func (s *imageSource) Resized(_ context.Context, _ *Volume, dev string) error {
	return loopdev.Refresh(dev)
}

type lvmSource struct{ p *LVMPool }

func (s lvmSource) Attach(ctx context.Context, v *Volume) (string, error) {
	return s.p.Device(ctx, v.Key())
}
func (s lvmSource) Find(v *Volume) (string, error)                 { return s.p.FindDevice(v.Key()) }
func (s lvmSource) Detach(context.Context, *Volume) error          { return nil }
func (s lvmSource) Resized(context.Context, *Volume, string) error { return nil }

type quotaSource struct{ p *QuotaPool }

func (s quotaSource) Attach(_ context.Context, v *Volume) (string, error) {
	dir, err := s.Find(v)
	if err == nil && dir == "" {
		err = fmt.Errorf("%w: the directory of volume %s is gone", ErrStorageMissing, v.ID)
	}
	return dir, err
}

func (s quotaSource) Find(v *Volume) (string, error) {
	dir := s.p.VolumeDir(v.Key())
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		return "", nil
	} else if err != nil {
		return "", err
	}
	return dir, nil
}

func (s quotaSource) Detach(context.Context, *Volume) error          { return nil }
func (s quotaSource) Resized(context.Context, *Volume, string) error { return nil }

// unusableSource stands for the source of a pool that could not be opened.
type unusableSource struct{ name string }

func (s unusableSource) fail() error {
	return fmt.Errorf("%w: pool %s cannot be used", ErrUnusable, s.name)
}
func (s unusableSource) Attach(context.Context, *Volume) (string, error) { return "", s.fail() }
func (s unusableSource) Find(*Volume) (string, error)                    { return "", nil }
func (s unusableSource) Detach(context.Context, *Volume) error           { return nil }
func (s unusableSource) Resized(context.Context, *Volume, string) error  { return s.fail() }
