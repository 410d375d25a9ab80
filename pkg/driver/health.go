package driver

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"sync"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"

	"github.com/flashpv/flashpv/pkg/pool"
)

func healthEntry(t csi.VolumeHealthErrorType, reason, format string, args ...any) *csi.VolumeHealth_VolumeHealthEntry {
	return &csi.VolumeHealth_VolumeHealthEntry{Status: t, Reason: reason, Message: fmt.Sprintf(format, args...)}
}

// volumeHealth checks what can be seen from the pool alone: the pool's
// storage answers and can be written, and the volume's storage exists,
// holds the whole volume and can be read from its device.
func (d *Driver) volumeHealth(ctx context.Context, p *poolEntry, v *pool.Volume) *csi.VolumeHealth {
	return d.volumesHealth(ctx, []poolVolume{{p, v}})[0]
}

// volumesHealth is volumeHealth for many volumes, in their order, with one
// probe and one check per pool.
func (d *Driver) volumesHealth(ctx context.Context, vols []poolVolume) []*csi.VolumeHealth {
	byPool := map[*poolEntry][]*pool.Volume{}
	for _, pv := range vols {
		byPool[pv.pool] = append(byPool[pv.pool], pv.vol)
	}
	type result struct {
		probe    error
		problems map[string][]pool.Problem
	}
	results := map[*poolEntry]*result{}
	var wg sync.WaitGroup
	for p, pvols := range byPool {
		r := &result{}
		results[p] = r
		// At once: each waits up to its bound on a device that stopped
		// answering, and the caller should wait for one bound only.
		wg.Go(func() { r.probe = p.Probe(ctx) })
		wg.Go(func() { r.problems = pool.CheckVolumes(ctx, p.Pool, pvols) })
	}
	wg.Wait()
	out := make([]*csi.VolumeHealth, 0, len(vols))
	for _, pv := range vols {
		r := results[pv.pool]
		h := &csi.VolumeHealth{VolumeId: pv.vol.ID}
		if r.probe != nil {
			_, reason := poolCondition(r.probe)
			h.HealthStatuses = append(h.HealthStatuses, healthEntry(csi.VolumeHealthErrorType_INACCESSIBLE, reason, "pool %s: %v", pv.pool.Name(), r.probe))
		}
		for _, pr := range r.problems[pv.vol.ID] {
			t := csi.VolumeHealthErrorType_INACCESSIBLE
			switch {
			case pr.DataLoss:
				t = csi.VolumeHealthErrorType_DATA_LOSS
			case pr.Degraded:
				t = csi.VolumeHealthErrorType_DEGRADED
			}
			h.HealthStatuses = append(h.HealthStatuses, healthEntry(t, pr.Reason, "%s", pr.Message))
		}
		out = append(out, h)
	}
	return out
}

// poolCondition says what a failed probe of a pool means: how bad it is
// for the storage and a reason naming what failed.
func poolCondition(err error) (csi.StorageHealthErrorType, string) {
	switch {
	case errors.Is(err, pool.ErrNotAnswering):
		return csi.StorageHealthErrorType_STORAGE_UNREACHABLE, "PoolNotAnswering"
	case errors.Is(err, unix.EROFS) || errors.Is(err, fs.ErrPermission):
		return csi.StorageHealthErrorType_STORAGE_DEGRADED, "PoolReadOnly"
	case pool.FilesystemFailing(err):
		return csi.StorageHealthErrorType_STORAGE_UNREACHABLE, "PoolIOError"
	case errors.Is(err, pool.ErrUnusable):
		return csi.StorageHealthErrorType_STORAGE_UNREACHABLE, "PoolUnusable"
	}
	return csi.StorageHealthErrorType_STORAGE_UNREACHABLE, "PoolUnreachable"
}

// probePools probes every pool at once, so that one whose storage does
// not answer costs the others nothing, and returns the failures by pool.
func (d *Driver) probePools(ctx context.Context) map[string]error {
	out := map[string]error{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, name := range d.poolNames {
		wg.Go(func() {
			if err := d.pools[name].Probe(ctx); err != nil {
				mu.Lock()
				out[name] = err
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return out
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
