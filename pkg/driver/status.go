package driver

import (
	"context"
	"errors"

	"k8s.io/klog/v2"

	"github.com/flashpv/flashpv/pkg/nodestatus"
	"github.com/flashpv/flashpv/pkg/pool"
)

// NodeStatus reports every pool's kind, space and health, and every
// volume's used space and health, for the cluster (pkg/nodestatus). It
// takes no volume locks: it only reads, and must never make a CSI call
// answer Aborted. ctx bounds the probes and checks.
func (d *Driver) NodeStatus(ctx context.Context) ([]nodestatus.Pool, []nodestatus.Volume) {
	failed := d.probePools(ctx)
	pools := make([]nodestatus.Pool, 0, len(d.poolNames))
	var vols []poolVolume
	for _, name := range d.poolNames {
		p := d.pools[name]
		st := nodestatus.Pool{Name: name, Kind: string(p.Kind()), Capacity: -1, Allocated: -1, Available: -1, Healthy: true}
		probeErr, bad := failed[name]
		if bad {
			_, st.Reason = poolCondition(probeErr)
			st.Healthy, st.Message = false, probeErr.Error()
		}
		if !errors.Is(probeErr, pool.ErrNotAnswering) && pool.Usable(p.Pool) {
			if c, err := p.Capacity(ctx); err == nil {
				st.Capacity, st.Allocated, st.Available, st.Volumes = c.Total, c.Allocated, c.Available, c.Volumes
			} else {
				klog.V(2).InfoS("Pool capacity for the node status", "pool", name, "err", err)
			}
			if list, err := p.List(); err == nil {
				st.Volumes = len(list)
				for _, v := range list {
					vols = append(vols, poolVolume{p, v})
				}
			}
		}
		pools = append(pools, st)
	}
	health := d.volumesHealth(ctx, vols)
	out := make([]nodestatus.Volume, 0, len(vols))
	for i, pv := range vols {
		v := nodestatus.Volume{ID: pv.vol.ID, Size: pv.vol.SizeBytes, Used: d.usedBytes(ctx, pv)}
		for _, h := range health[i].GetHealthStatuses() {
			v.Problems = append(v.Problems, nodestatus.Problem{Reason: h.GetReason(), Message: h.GetMessage()})
		}
		out = append(out, v)
	}
	return pools, out
}

// usedBytes is what a Filesystem volume's data takes: its project's usage
// in a pool of one shared filesystem, else what its own filesystem, when
// mounted on the node, says it uses; -1 when neither is known.
func (d *Driver) usedBytes(ctx context.Context, pv poolVolume) int64 {
	if pv.vol.Mode == pool.ModeBlock {
		return -1
	}
	if pv.pool.usage != nil {
		used, err := pv.pool.usage.Usage(ctx, pv.vol)
		if err != nil {
			return -1
		}
		return used
	}
	_, _, mounts, err := d.sourceMounts(&nodeVolume{pool: pv.pool, vol: pv.vol})
	if err != nil || len(mounts) == 0 {
		return -1
	}
	st, err := d.mounts.Statfs(mounts[0])
	if err != nil {
		return -1
	}
	return st.Used
}
