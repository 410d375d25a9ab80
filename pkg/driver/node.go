package driver

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"k8s.io/klog/v2"

	"github.com/flashpv/flashpv/pkg/loopdev"
	"github.com/flashpv/flashpv/pkg/pool"
)

// Node is the CSI Node service: it attaches volume images as loop devices,
// formats and mounts them, and publishes them to pods.
type Node struct {
	csi.UnimplementedNodeServer
	d *Driver
}

// mkfsArgs are the arguments of mkfs.<fsType> for a new volume. None of them
// discards the device: a discard would punch the whole preallocated image
// full of holes before the first write.
func mkfsArgs(fsType, dev string) []string {
	switch fsType {
	case "ext4":
		// No blocks reserved for root: the volume belongs to its pod.
		// Inode tables and journal are zeroed now, which on a loop device
		// costs an fallocate, instead of by the kernel's lazyinit thread
		// writing in the background for minutes after the first mount.
		return []string{"-F", "-q", "-m0", "-E", "nodiscard,lazy_itable_init=0,lazy_journal_init=0", dev}
	default: // xfs, btrfs
		return []string{"-K", "-q", dev}
	}
}

// nodeVolume is a known volume, locked against concurrent operations.
type nodeVolume struct {
	pool    pool.Pool
	vol     *pool.Volume
	release func()
}

// pathArg is a path from the CO and what the error calls it.
type pathArg struct{ path, what string }

// openNodeVolume validates a node request's volume ID and paths, takes the
// volume's in-flight lock and loads it. The caller must call release.
func (d *Driver) openNodeVolume(volumeID string, paths ...pathArg) (*nodeVolume, error) {
	if volumeID == "" {
		return nil, invalid("volume ID is missing")
	}
	for _, p := range paths {
		if err := d.checkPath(p.path, p.what); err != nil {
			return nil, err
		}
	}
	if _, err := pool.ParseVolumeID(volumeID); err != nil {
		return nil, err
	}
	release, err := d.locks.acquire(volumeID)
	if err != nil {
		return nil, err
	}
	p, v, err := d.lookup(volumeID)
	if err != nil {
		release()
		return nil, err
	}
	return &nodeVolume{pool: p, vol: v, release: release}, nil
}

// checkMatches refuses a capability that does not fit the volume.
func (d *Driver) checkMatches(v *pool.Volume, c *csi.VolumeCapability) error {
	mode, fsType, err := checkCapability(c, d.defaultFsType)
	if err != nil {
		return err
	}
	if mode != v.Mode {
		return invalid("volume %s is a %s volume, the capability asks for %s", v.ID, v.Mode, mode)
	}
	if mode == pool.ModeFilesystem && c.GetMount().GetFsType() != "" && fsType != v.FsType {
		return invalid("volume %s holds %s, the capability asks for %s", v.ID, v.FsType, fsType)
	}
	return nil
}

func (s *Node) NodeStageVolume(ctx context.Context, req *csi.NodeStageVolumeRequest) (*csi.NodeStageVolumeResponse, error) {
	if err := s.stage(req); err != nil {
		return nil, toStatus(err)
	}
	return &csi.NodeStageVolumeResponse{}, nil
}

func (s *Node) stage(req *csi.NodeStageVolumeRequest) error {
	staging := req.GetStagingTargetPath()
	if _, _, err := checkCapability(req.GetVolumeCapability(), s.d.defaultFsType); err != nil {
		return err
	}
	nv, err := s.d.openNodeVolume(req.GetVolumeId(), pathArg{staging, "staging target path"})
	if err != nil {
		return err
	}
	defer nv.release()
	if err := s.d.checkMatches(nv.vol, req.GetVolumeCapability()); err != nil {
		return err
	}
	src, err := s.d.attach(nv)
	if err != nil {
		return err
	}
	flags := req.GetVolumeCapability().GetMount().GetMountFlags()
	switch {
	case nv.vol.Mode == pool.ModeBlock:
		return nil
	case nv.pool.Kind() == pool.KindQuota:
		return stageDirectory(nv.vol, src, staging, flags)
	}
	return s.d.stageFilesystem(nv.vol, src, staging, flags)
}

// attachImage returns the loop device of an image, attaching it if needed
// while keeping the node under its volume limit.
func (d *Driver) attachImage(image string) (string, error) {
	var dirs []string
	for _, name := range d.poolNames {
		if ip, ok := d.pools[name].(*pool.ImagePool); ok {
			dirs = append(dirs, ip.Dir())
		}
	}
	dev, err := d.devices.AttachLimited(image, &loopdev.Limit{Dirs: dirs, Check: func(n int) error {
		if int64(n) >= d.maxVolumes {
			return fmt.Errorf("%w: %d volumes are staged, the limit is %d", errTooMany, n, d.maxVolumes)
		}
		return nil
	}})
	if err != nil {
		if errors.Is(err, errTooMany) {
			return "", err
		}
		return "", fmt.Errorf("attaching %s: %w", image, err)
	}
	klog.V(4).InfoS("Image attached", "image", image, "device", dev)
	return dev, nil
}

func (d *Driver) stageFilesystem(v *pool.Volume, dev, staging string, flags []string) error {
	m, err := mountAt(staging)
	if err != nil {
		return err
	}
	if m != nil && !newDeviceMounts(dev).owns(m) {
		return fmt.Errorf("%w: staging path %s already holds another mount (%s)", errPrecondition, staging, m)
	}
	if m == nil {
		format, err := d.mounter.GetDiskFormat(dev)
		if err != nil {
			return fmt.Errorf("probing %s: %w", dev, err)
		}
		if format != "" && format != v.FsType {
			return fmt.Errorf("%w: %s already holds %q, refusing to format it as %s", errPrecondition, dev, format, v.FsType)
		}
		// ext4 is checked and grows before it is mounted (no
		// CAP_SYS_RESOURCE needed).
		if format == "ext4" {
			if err := d.checkExt(dev); err != nil {
				return err
			}
		}
		if err := os.MkdirAll(staging, 0o750); err != nil {
			return err
		}
		if format == "" {
			if out, err := d.exec.Command("mkfs."+v.FsType, mkfsArgs(v.FsType, dev)...).CombinedOutput(); err != nil {
				return fmt.Errorf("mkfs.%s %s: %v: %s", v.FsType, dev, err, out)
			}
		}
		if err := mountFilesystem(dev, staging, v.FsType, flags); err != nil {
			return err
		}
		klog.V(2).InfoS("Volume staged", "volumeID", v.ID, "device", dev, "path", staging, "fsType", v.FsType, "formatted", format == "")
		// A new filesystem fills its device, and ext4 has grown above.
		if format == "" || format == "ext4" {
			return nil
		}
	}
	// Finish a growth that happened while the volume was not mounted (or
	// that a crash interrupted).
	return d.growFilesystem(dev, staging, v.FsType)
}

func (s *Node) NodeUnstageVolume(ctx context.Context, req *csi.NodeUnstageVolumeRequest) (*csi.NodeUnstageVolumeResponse, error) {
	if err := s.unstage(req); err != nil {
		return nil, toStatus(err)
	}
	return &csi.NodeUnstageVolumeResponse{}, nil
}

func (s *Node) unstage(req *csi.NodeUnstageVolumeRequest) error {
	staging := req.GetStagingTargetPath()
	nv, err := s.d.openNodeVolume(req.GetVolumeId(), pathArg{staging, "staging target path"})
	if err != nil {
		return err
	}
	defer nv.release()
	dev, err := s.d.find(nv)
	if err != nil {
		return err
	}
	dm := s.d.mountsOf(nv, dev)
	m, err := mountAt(staging)
	if err != nil {
		return err
	}
	if m != nil {
		if !dm.owns(m) {
			return fmt.Errorf("%w: staging path %s holds a mount that is not volume %s", errPrecondition, staging, nv.vol.ID)
		}
		if err := unmount(staging); err != nil {
			return err
		}
	}
	if dev == "" {
		return nil
	}
	if left, err := dm.all(); err != nil {
		return err
	} else if len(left) > 0 {
		return fmt.Errorf("%w: volume %s is still published at %v", errPrecondition, nv.vol.ID, left)
	}
	if err := s.d.detach(nv); err != nil {
		return err
	}
	klog.V(2).InfoS("Volume unstaged", "volumeID", nv.vol.ID, "source", dev)
	return nil
}

func (s *Node) NodePublishVolume(ctx context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	if err := s.publish(req); err != nil {
		return nil, toStatus(err)
	}
	return &csi.NodePublishVolumeResponse{}, nil
}

func (s *Node) publish(req *csi.NodePublishVolumeRequest) error {
	target, staging := req.GetTargetPath(), req.GetStagingTargetPath()
	if _, _, err := checkCapability(req.GetVolumeCapability(), s.d.defaultFsType); err != nil {
		return err
	}
	nv, err := s.d.openNodeVolume(req.GetVolumeId(), pathArg{target, "target path"}, pathArg{staging, "staging target path"})
	if err != nil {
		return err
	}
	defer nv.release()
	if err := s.d.checkMatches(nv.vol, req.GetVolumeCapability()); err != nil {
		return err
	}
	dev, err := s.d.find(nv)
	if err != nil {
		return err
	}
	if dev == "" {
		return fmt.Errorf("%w: volume %s is not staged", errPrecondition, nv.vol.ID)
	}
	dm := s.d.mountsOf(nv, dev)
	existing, err := mountAt(target)
	if err != nil {
		return err
	}
	if existing != nil {
		if !dm.owns(existing) || existing.readOnly != req.GetReadonly() {
			return fmt.Errorf("%w: target %s already holds a different mount", pool.ErrAlreadyExists, target)
		}
		return nil
	}
	if req.GetVolumeCapability().GetAccessMode().GetMode() == csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER {
		if err := singleWriter(dm, staging); err != nil {
			return err
		}
	}
	var opts []string
	if req.GetReadonly() {
		opts = append(opts, "ro")
	}
	source := dev
	if nv.vol.Mode == pool.ModeFilesystem {
		sm, err := mountAt(staging)
		if err != nil {
			return err
		}
		if sm == nil || !dm.owns(sm) {
			return fmt.Errorf("%w: volume %s is not staged at %s", errPrecondition, nv.vol.ID, staging)
		}
		if nv.vol.FsType == "ext4" && nv.pool.Kind() != pool.KindQuota {
			if err := s.d.growExtBeforePublish(dm, staging, req.GetVolumeCapability().GetMount().GetMountFlags()); err != nil {
				return err
			}
		}
		source = staging
		opts = append(opts, req.GetVolumeCapability().GetMount().GetMountFlags()...)
		if err := os.MkdirAll(target, 0o750); err != nil {
			return err
		}
	} else if err := makeFile(target); err != nil {
		return err
	}
	if err := bindMount(source, target, opts); err != nil {
		return err
	}
	klog.V(2).InfoS("Volume published", "volumeID", nv.vol.ID, "target", target, "readonly", req.GetReadonly())
	return nil
}

// singleWriter refuses a second publication of a SINGLE_NODE_SINGLE_WRITER
// volume.
func singleWriter(dm deviceMounts, staging string) error {
	mounts, err := dm.all()
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

func (s *Node) NodeUnpublishVolume(ctx context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	if err := s.unpublish(req); err != nil {
		return nil, toStatus(err)
	}
	return &csi.NodeUnpublishVolumeResponse{}, nil
}

func (s *Node) unpublish(req *csi.NodeUnpublishVolumeRequest) error {
	target := req.GetTargetPath()
	nv, err := s.d.openNodeVolume(req.GetVolumeId(), pathArg{target, "target path"})
	if err != nil {
		return err
	}
	defer nv.release()
	m, err := mountAt(target)
	if err != nil {
		return err
	}
	if m != nil {
		dev, err := s.d.find(nv)
		if err != nil {
			return err
		}
		if !s.d.mountsOf(nv, dev).owns(m) {
			return fmt.Errorf("%w: target %s holds a mount that is not volume %s", errPrecondition, target, nv.vol.ID)
		}
		if err := unmount(target); err != nil {
			return err
		}
	}
	// The target was created by NodePublishVolume: an empty directory or the
	// file a block device was bound to.
	if err := os.Remove(target); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing target %s: %w", target, err)
	}
	klog.V(2).InfoS("Volume unpublished", "volumeID", nv.vol.ID, "target", target)
	return nil
}
