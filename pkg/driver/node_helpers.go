package driver

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/flashpv/flashpv/pkg/pool"
)

// capability is a node request's volume capability, checked once.
type capability struct {
	mode   pool.Mode
	fsType string // "" when the capability names none
}

func (d *Driver) parseCapability(c *csi.VolumeCapability) (capability, error) {
	mode, fsType, err := checkCapability(c, d.defaultFsType)
	if c.GetMount().GetFsType() == "" {
		fsType = ""
	}
	return capability{mode, fsType}, err
}

// matches refuses a capability that does not fit the volume.
func (c capability) matches(v *pool.Volume) error {
	if c.mode != v.Mode {
		return invalid("volume %s is a %s volume, the capability asks for %s", v.ID, v.Mode, c.mode)
	}
	if c.mode == pool.ModeFilesystem && c.fsType != "" && c.fsType != v.FsType {
		return invalid("volume %s holds %s, the capability asks for %s", v.ID, v.FsType, c.fsType)
	}
	return nil
}

// singleWriter refuses a second publication of a SINGLE_NODE_SINGLE_WRITER
// volume.
func (d *Driver) singleWriter(nv *nodeVolume, src, staging string) error {
	mounts, err := d.mounts.MountsOf(d.origin(nv, src))
	if err != nil {
		return err
	}
	for _, mp := range mounts {
		if mp != staging {
			return fmt.Errorf("%w: single-writer volume is already published at %s", errPrecondition, mp)
		}
	}
	return nil
}

// makeFile creates the file a block device is bind-mounted onto.
func makeFile(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDONLY, 0o640)
	if err != nil {
		return err
	}
	return f.Close()
}

// expand grows a volume: its storage (with a capacity check), what the node
// sees of it, then its filesystem, online. It never shrinks.
func (s *Node) expand(ctx context.Context, req *csi.NodeExpandVolumeRequest) (int64, error) {
	if req.GetVolumeId() == "" {
		return 0, invalid("volume ID is missing")
	}
	if req.GetVolumePath() == "" {
		return 0, invalid("volume path is missing")
	}
	nv, err := s.d.openNodeVolume(ctx, req.GetVolumeId())
	if err != nil {
		return 0, err
	}
	defer nv.release()
	// Paths are checked once the volume is known, so an unknown volume is
	// NotFound whatever path comes with it.
	if err := s.d.checkPath(req.GetVolumePath(), "volume path"); err != nil {
		return 0, err
	}
	if sp := req.GetStagingTargetPath(); sp != "" {
		if err := s.d.checkPath(sp, "staging target path"); err != nil {
			return 0, err
		}
	}
	want, err := expansionSize(req.GetCapacityRange())
	if err != nil {
		return 0, err
	}
	if c := req.GetVolumeCapability(); c != nil {
		want, err := s.d.parseCapability(c)
		if err == nil {
			err = want.matches(nv.vol)
		}
		if err != nil {
			return 0, err
		}
	}
	v, err := nv.pool.Expand(ctx, nv.vol.Key(), want)
	if err != nil {
		return 0, err
	}
	nv.vol = v
	if nv.pool.layout.Directory {
		// The new limit is the new size, at once.
		klog.InfoS("Volume expanded", "volumeID", v.ID, "bytes", v.SizeBytes)
		return v.SizeBytes, nil
	}
	dev, err := nv.pool.src.Find(v)
	if err != nil || dev == "" {
		// Not staged here: the storage has grown; NodeStageVolume grows
		// the filesystem when the volume is next mounted.
		return v.SizeBytes, err
	}
	if err := nv.pool.src.Resized(ctx, v, dev); err != nil {
		return 0, err
	}
	if v.Mode == pool.ModeFilesystem {
		mp, err := s.d.mountedAt(dev, req.GetVolumePath(), req.GetStagingTargetPath())
		if err != nil {
			// An LV stays active while unstaged: with its filesystem
			// mounted nowhere, the next stage grows it.
			if mounts, aerr := s.d.mounts.MountsOf(s.d.mounts.Identify(dev, false)); aerr == nil && len(mounts) == 0 {
				return v.SizeBytes, nil
			}
			return 0, err
		}
		if err := s.d.mounts.Grow(ctx, dev, mp, v.FsType); err != nil {
			return 0, err
		}
		// The growth is the filesystem's own transaction, in its journal
		// or log; until that reaches the device a power cut undoes it,
		// and the expansion answered done would be lost.
		if err := syncFilesystem(mp); err != nil {
			return 0, fmt.Errorf("syncing the grown filesystem at %s: %w", mp, err)
		}
	}
	klog.InfoS("Volume expanded", "volumeID", v.ID, "bytes", v.SizeBytes)
	return v.SizeBytes, nil
}

// mountedAt returns the first of paths where dev's filesystem is mounted.
func (d *Driver) mountedAt(dev string, paths ...string) (string, error) {
	o := d.mounts.Identify(dev, false)
	for _, p := range paths {
		if p == "" {
			continue
		}
		m, err := d.mounts.At(p)
		if err != nil {
			return "", err
		}
		if o.Owns(m) {
			return p, nil
		}
	}
	return "", fmt.Errorf("%w: the filesystem of %s is not mounted at %v", errPrecondition, dev, paths)
}

// syncFilesystem flushes the filesystem mounted at dir to its device.
func syncFilesystem(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.Syncfs(int(f.Fd()))
}
