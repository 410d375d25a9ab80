package driver

import (
	"context"
	"fmt"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/flashpv/flashpv/pkg/pool"
)

func healthEntry(t csi.VolumeHealthErrorType, reason, format string, args ...any) *csi.VolumeHealth_VolumeHealthEntry {
	return &csi.VolumeHealth_VolumeHealthEntry{Status: t, Reason: reason, Message: fmt.Sprintf(format, args...)}
}

// volumeHealth checks what can be seen from the pool alone: the volume's
// storage exists and holds the whole volume.
func (d *Driver) volumeHealth(ctx context.Context, p *poolEntry, v *pool.Volume) *csi.VolumeHealth {
	h := &csi.VolumeHealth{VolumeId: v.ID}
	for _, pr := range p.Check(ctx, []*pool.Volume{v})[v.ID] {
		t := csi.VolumeHealthErrorType_INACCESSIBLE
		switch {
		case pr.DataLoss:
			t = csi.VolumeHealthErrorType_DATA_LOSS
		case pr.Degraded:
			t = csi.VolumeHealthErrorType_DEGRADED
		}
		h.HealthStatuses = append(h.HealthStatuses, healthEntry(t, pr.Reason, "%s", pr.Message))
	}
	return h
}

// attachmentHealth checks the node's view: the volume's device is there
// and the volume is mounted where the CO says it staged and published it.
func (d *Driver) attachmentHealth(nv *nodeVolume, staging, publish string) []*csi.VolumeHealth_VolumeHealthEntry {
	if staging == "" && publish == "" {
		return nil
	}
	dev, err := nv.pool.src.Find(nv.vol)
	if err != nil {
		return []*csi.VolumeHealth_VolumeHealthEntry{healthEntry(csi.VolumeHealthErrorType_INACCESSIBLE, "DeviceUnknown", "%v", err)}
	}
	if dev == "" {
		return []*csi.VolumeHealth_VolumeHealthEntry{healthEntry(csi.VolumeHealthErrorType_INACCESSIBLE, "DeviceDetached", "the device of volume %s is not attached", nv.vol.ID)}
	}
	var out []*csi.VolumeHealth_VolumeHealthEntry
	o := d.origin(nv, dev)
	check := func(path, reason string) {
		if path == "" || (nv.vol.Mode == pool.ModeBlock && reason == "StagingMountMissing") {
			return
		}
		m, err := d.mounts.At(path)
		if err != nil || !o.Owns(m) {
			out = append(out, healthEntry(csi.VolumeHealthErrorType_INACCESSIBLE, reason, "volume %s is not mounted at %s", nv.vol.ID, path))
		}
	}
	check(staging, "StagingMountMissing")
	check(publish, "PublishMountMissing")
	return out
}
