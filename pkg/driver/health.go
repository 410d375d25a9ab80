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
func (d *Driver) volumeHealth(p pool.Pool, v *pool.Volume) *csi.VolumeHealth {
	h := &csi.VolumeHealth{VolumeId: v.ID}
	for _, pr := range p.Check(v) {
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
	dev, err := d.find(nv)
	if err != nil {
		return []*csi.VolumeHealth_VolumeHealthEntry{healthEntry(csi.VolumeHealthErrorType_INACCESSIBLE, "DeviceUnknown", "%v", err)}
	}
	if dev == "" {
		return []*csi.VolumeHealth_VolumeHealthEntry{healthEntry(csi.VolumeHealthErrorType_INACCESSIBLE, "DeviceDetached", "the device of volume %s is not attached", nv.vol.ID)}
	}
	var out []*csi.VolumeHealth_VolumeHealthEntry
	dm := d.mountsOf(nv, dev)
	check := func(path, reason string) {
		if path == "" || (nv.vol.Mode == pool.ModeBlock && reason == "StagingMountMissing") {
			return
		}
		m, err := mountAt(path)
		if err != nil || m == nil || !dm.owns(m) {
			out = append(out, healthEntry(csi.VolumeHealthErrorType_INACCESSIBLE, reason, "volume %s is not mounted at %s", nv.vol.ID, path))
		}
	}
	check(staging, "StagingMountMissing")
	check(publish, "PublishMountMissing")
	return out
}

func (s *Controller) ControllerGetVolumeHealth(ctx context.Context, req *csi.ControllerGetVolumeHealthRequest) (*csi.ControllerGetVolumeHealthResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, toStatus(invalid("volume ID is missing"))
	}
	p, v, err := s.d.lookup(req.GetVolumeId())
	if err != nil {
		return nil, toStatus(err)
	}
	return &csi.ControllerGetVolumeHealthResponse{VolumeHealth: s.d.volumeHealth(p, v)}, nil
}

func (s *Controller) ControllerListVolumeHealth(ctx context.Context, req *csi.ControllerListVolumeHealthRequest) (*csi.ControllerListVolumeHealthResponse, error) {
	page, next, err := s.d.listPage(req.GetMaxEntries(), req.GetStartingToken())
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &csi.ControllerListVolumeHealthResponse{NextToken: next}
	for _, e := range page {
		resp.Entries = append(resp.Entries, s.d.volumeHealth(e.pool, e.vol))
	}
	return resp, nil
}
