package driver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"

	"k8s.io/klog/v2"

	"github.com/flashpv/flashpv/pkg/mounter"
	"github.com/flashpv/flashpv/pkg/pool"
)

// stageFilesystem mounts a volume's own filesystem at the staging path,
// making it first if the volume has none yet, and finishes a growth that
// happened while the volume was not mounted.
func (d *Driver) stageFilesystem(ctx context.Context, nv *nodeVolume, dev, staging string, flags []string) error {
	v := nv.vol
	o := d.mounts.Identify(dev, false)
	m, err := d.mounts.At(staging)
	if err != nil {
		return err
	}
	if m != nil && !o.Owns(m) {
		return fmt.Errorf("%w: staging path %s already holds another mount (%s)", errPrecondition, staging, m)
	}
	if m != nil {
		return d.restageFilesystem(ctx, nv, dev, staging)
	}
	format, err := d.formatToKeep(ctx, v, dev)
	if err != nil {
		return err
	}
	if err := d.prepareExisting(ctx, v, dev, format); err != nil {
		return err
	}
	if err := os.MkdirAll(staging, 0o750); err != nil {
		return err
	}
	made := format == ""
	if made {
		if err := d.mounts.Format(ctx, dev, v.FsType); err != nil {
			return err
		}
	}
	if err := d.mounts.Mount(dev, staging, v.FsType, fsFlags(v.FsType, flags)); err != nil {
		return err
	}
	klog.V(2).InfoS("Volume staged", "volumeID", v.ID, "device", dev, "path", staging, "fsType", v.FsType, "formatted", made)
	if err := d.markFormatted(ctx, nv); err != nil {
		return err
	}
	// A new filesystem fills its device, and ext4 has grown above.
	if made || format == "ext4" {
		return nil
	}
	return d.mounts.Grow(ctx, dev, staging, v.FsType)
}

// restageFilesystem finishes a stage whose mount is in place already.
func (d *Driver) restageFilesystem(ctx context.Context, nv *nodeVolume, dev, staging string) error {
	// The call that mounted it may have died before it recorded the
	// filesystem as made.
	if err := d.markFormatted(ctx, nv); err != nil {
		return err
	}
	err := d.mounts.Grow(ctx, dev, staging, nv.vol.FsType)
	if errors.Is(err, mounter.ErrCannotGrowOnline) {
		// The next publication grows it offline (see
		// growExtBeforePublish); refusing the stage would keep the
		// pod from ever getting there.
		klog.V(2).InfoS("Staged filesystem grows at publication", "volumeID", nv.vol.ID, "reason", err)
		return nil
	}
	return err
}

// formatToKeep returns the filesystem on dev that the stage mounts, or ""
// when it is to be made, and refuses a device whose filesystem is not
// flashpv's to make over.
func (d *Driver) formatToKeep(ctx context.Context, v *pool.Volume, dev string) (string, error) {
	// A volume whose filesystem flashpv never mounted holds nothing of
	// value: a filesystem of its own type on it is what a killed mkfs left,
	// made over. Any other filesystem was put there by someone else and is
	// never formatted over.
	fresh := v.Format == pool.FormatPending
	if v.FsType == "ext4" {
		// An interrupted growth is undone before anything reads the filesystem.
		if _, err := d.mounts.UndoExtGrowth(ctx, dev, v.ID); err != nil {
			return "", err
		}
	}
	format, err := d.mounts.Probe(ctx, dev)
	if err != nil {
		return "", err
	}
	if format != "" && format != v.FsType {
		return "", fmt.Errorf("%w: %s already holds %q, refusing to format it as %s", errPrecondition, dev, format, v.FsType)
	}
	// The filesystem flashpv made and mounted is gone from view: formatting
	// would destroy whatever is left of the data.
	if format == "" && v.Format == pool.FormatDone {
		return "", fmt.Errorf("%w: %s shows no filesystem, but volume %s had its %s mounted; refusing to format it again", errPrecondition, dev, v.ID, v.FsType)
	}
	if fresh {
		return "", nil
	}
	return format, nil
}

// prepareExisting readies the filesystem kept on dev, of type format, for
// its mount.
func (d *Driver) prepareExisting(ctx context.Context, v *pool.Volume, dev, format string) error {
	// ext4 is checked and grows before it is mounted (no CAP_SYS_RESOURCE
	// needed).
	if format == "ext4" {
		if err := d.mounts.CheckExt(ctx, dev, v.ID); err != nil {
			return err
		}
	}
	// A copy's btrfs has its source's ID, which older kernels refuse to
	// mount beside the source.
	if format == "btrfs" && v.Source != "" {
		if err := d.mounts.RenewBtrfsID(ctx, dev, v.ID); err != nil {
			return err
		}
	}
	return nil
}

// fsFlags adds what a filesystem type needs to the staging mount's flags.
// A restored or cloned xfs carries its source's UUID, and XFS refuses to
// mount a second filesystem with a UUID already mounted (EINVAL): with
// nouuid it does not check. A volume's own filesystem is only ever mounted
// once at a time (staged once per node), so nothing relies on the check.
func fsFlags(fsType string, flags []string) []string {
	if fsType != "xfs" || slices.Contains(flags, "nouuid") {
		return flags
	}
	return append(slices.Clone(flags), "nouuid")
}

// markFormatted records that the volume's filesystem was made and mounted.
func (d *Driver) markFormatted(ctx context.Context, nv *nodeVolume) error {
	if nv.vol.Format == pool.FormatDone || nv.vol.Format == "" {
		return nil
	}
	st := nv.vol.NodeState
	st.Format = pool.FormatDone
	v, err := nv.pool.SetNodeState(ctx, nv.vol.Key(), st)
	if err != nil {
		return fmt.Errorf("recording the filesystem of volume %s: %w", nv.vol.ID, err)
	}
	nv.vol = v
	return nil
}

// stageDirectory binds a volume's directory at the staging path.
func (d *Driver) stageDirectory(nv *nodeVolume, dir, staging string, flags []string) error {
	o := d.mounts.Identify(dir, true)
	m, err := d.mounts.At(staging)
	if err != nil {
		return err
	}
	if m != nil {
		if !o.Owns(m) {
			return fmt.Errorf("%w: staging path %s already holds another mount (%s)", errPrecondition, staging, m)
		}
		return nil
	}
	if err := os.MkdirAll(staging, 0o750); err != nil {
		return err
	}
	if err := d.mounts.Bind(dir, staging, flags); err != nil {
		return err
	}
	klog.V(2).InfoS("Volume staged", "volumeID", nv.vol.ID, "directory", dir, "path", staging)
	return nil
}

// growExtBeforePublish grows a staged ext4 that its device has outgrown
// (an expansion while the volume stayed staged, its pod restarting on the
// same node) when this process cannot grow a mounted ext4: as long as no
// pod has it published, the staging mount can come down for an offline
// growth and go back up. The intent is recorded first, so that if flashpv
// dies meanwhile, the next call on the volume puts the mount back.
func (d *Driver) growExtBeforePublish(ctx context.Context, nv *nodeVolume, dev, staging string, flags []string) error {
	if d.mounts.CanGrowMountedExt4() {
		return nil // NodeExpandVolume grows it online
	}
	need, err := d.mounts.ExtNeedsGrow(dev)
	if err != nil || !need {
		return err
	}
	mounts, err := d.mounts.MountsOf(d.mounts.Identify(dev, false))
	if err != nil {
		return err
	}
	if len(mounts) != 1 || mounts[0] != staging {
		return nil // published elsewhere: it grows at the next stage
	}
	if err := d.setRemount(ctx, nv, &pool.Remount{Path: staging, Flags: flags}); err != nil {
		return err
	}
	if err := d.mounts.Unmount(staging); err != nil {
		return errors.Join(err, d.setRemount(ctx, nv, nil))
	}
	growErr := d.mounts.CheckExt(ctx, dev, nv.vol.ID)
	if err := d.mounts.Mount(dev, staging, "ext4", flags); err != nil {
		return errors.Join(growErr, err)
	}
	if err := d.setRemount(ctx, nv, nil); err != nil {
		return err
	}
	if growErr == nil {
		klog.V(2).InfoS("Filesystem grown offline before publishing", "volumeID", nv.vol.ID, "device", dev, "staging", staging)
	}
	return growErr
}

func (d *Driver) setRemount(ctx context.Context, nv *nodeVolume, r *pool.Remount) error {
	st := nv.vol.NodeState
	st.Remount = r
	v, err := nv.pool.SetNodeState(ctx, nv.vol.Key(), st)
	if err != nil {
		return fmt.Errorf("recording the staging mount of volume %s: %w", nv.vol.ID, err)
	}
	nv.vol = v
	return nil
}

// restoreMount puts back a staging mount that an offline step took down
// and a restart kept from coming back.
func (d *Driver) restoreMount(ctx context.Context, nv *nodeVolume) error {
	r := nv.vol.Remount
	if r == nil {
		return nil
	}
	dev, err := nv.pool.src.Attach(ctx, nv.vol)
	if err != nil {
		return err
	}
	m, err := d.mounts.At(r.Path)
	if err != nil {
		return err
	}
	if m == nil {
		if nv.vol.FsType == "ext4" {
			if err := d.mounts.CheckExt(ctx, dev, nv.vol.ID); err != nil {
				return err
			}
		}
		if err := d.mounts.Mount(dev, r.Path, nv.vol.FsType, fsFlags(nv.vol.FsType, r.Flags)); err != nil {
			return err
		}
		klog.InfoS("Staging mount restored after an interrupted offline step", "volumeID", nv.vol.ID, "path", r.Path)
	} else if !d.mounts.Identify(dev, false).Owns(m) {
		return fmt.Errorf("%w: staging path %s of volume %s holds another mount (%s)", errPrecondition, r.Path, nv.vol.ID, m)
	}
	return d.setRemount(ctx, nv, nil)
}
