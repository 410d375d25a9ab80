package driver

import "context"

// DeleteOrphan deletes a volume as DeleteVolume does (same lock, refused
// while the volume is mounted), for the node plugin's own removal of
// volumes that no PV names any more (pkg/orphans).
func (d *Driver) DeleteOrphan(ctx context.Context, volumeID string) error {
	return (&Controller{d: d}).deleteVolume(ctx, volumeID)
}
