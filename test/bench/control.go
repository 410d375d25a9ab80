package main

import (
	"context"
	"fmt"
	"log"
	"time"
)

// controlResult is the control path at one concurrency.
type controlResult struct {
	Concurrency   int                     `json:"concurrency"`
	Volumes       int                     `json:"volumes"`
	VolumesPerSec float64                 `json:"volumes_per_sec"` // full lifecycles per second
	Expansion     string                  `json:"expansion_fstype"`
	RPC           map[string]latencyStats `json:"rpc"`
}

// controlRPCs are reported in this order.
var controlRPCs = []string{"CreateVolume", "NodeStageVolume", "NodePublishVolume", "create+stage+publish",
	"NodeExpandVolume", "NodeUnpublishVolume", "NodeUnstageVolume", "DeleteVolume", "unpublish+unstage+delete"}

// runControl drives whole volume lifecycles at each concurrency: N volumes
// of 1 GiB ext4 created, staged and published, then torn down; and N
// published volumes of the expansion filesystem grown online to 1.5 GiB.
func (b *bench) runControl(ctx context.Context) ([]controlResult, error) {
	d, _, err := startDriver(ctx, b.driverConfig(1000))
	if err != nil {
		return nil, err
	}
	defer d.stop()
	const size = 1 << 30
	avail, err := d.available(ctx)
	if err != nil {
		return nil, err
	}
	var out []controlResult
	for _, c := range b.concurrency {
		n := max(b.volumes, c)
		// Expanded volumes take 1.5 GiB each; leave the pool a tenth.
		if fit := int(avail * 9 / 10 / (size + size/2)); n > fit {
			log.Printf("control: the pool holds %d volumes of 1.5 GiB, not %d", fit, n)
			n = fit
		}
		r := newRecorder()
		vols := make([]*vol, n)
		for i := range vols {
			vols[i] = d.newVol(fmt.Sprintf("bench-ctl-c%d-%d", c, i), mountCap("ext4"))
		}
		upWall, err := parallel(n, c, func(i int) error { return d.up(ctx, r, vols[i], size) })
		if err != nil {
			return nil, err
		}
		downWall, err := parallel(n, c, func(i int) error { return d.down(ctx, r, vols[i]) })
		if err != nil {
			return nil, err
		}
		// Online expansion: untimed set-up, timed NodeExpandVolume.
		setup := newRecorder()
		for i := range vols {
			vols[i] = d.newVol(fmt.Sprintf("bench-grow-c%d-%d", c, i), mountCap(b.expandFs))
		}
		if _, err := parallel(n, c, func(i int) error { return d.up(ctx, setup, vols[i], size) }); err != nil {
			return nil, err
		}
		if _, err := parallel(n, c, func(i int) error { return d.expand(ctx, r, vols[i], size+size/2) }); err != nil {
			return nil, err
		}
		if _, err := parallel(n, c, func(i int) error { return d.down(ctx, setup, vols[i]) }); err != nil {
			return nil, err
		}
		res := controlResult{Concurrency: c, Volumes: n, Expansion: b.expandFs, RPC: map[string]latencyStats{},
			VolumesPerSec: float64(n) / (upWall + downWall).Seconds()}
		for _, name := range controlRPCs {
			res.RPC[name] = r.stats(name)
		}
		log.Printf("control: C=%d: %d volumes, %.1f lifecycles/s; CreateVolume p50 %.1f ms, create+stage+publish p50 %.0f ms, NodeExpandVolume p50 %.0f ms",
			c, n, res.VolumesPerSec, res.RPC["CreateVolume"].P50ms, res.RPC["create+stage+publish"].P50ms, res.RPC["NodeExpandVolume"].P50ms)
		out = append(out, res)
	}
	return out, nil
}

// scaleResult is one node with many volumes, across a driver restart.
type scaleResult struct {
	Volumes         int                     `json:"volumes"`
	FillSeconds     float64                 `json:"fill_seconds"` // create+stage+publish of all, at concurrency 8
	TeardownSeconds float64                 `json:"teardown_seconds"`
	AtSmall         map[string]latencyStats `json:"at_small"` // per-RPC latency with few volumes
	AtScale         map[string]latencyStats `json:"at_scale"` // the same with all volumes published
	Small           int                     `json:"small"`
	RSSBefore       int64                   `json:"rss_before_bytes"`
	PeakBefore      int64                   `json:"rss_peak_before_bytes"`
	RSSAfter        int64                   `json:"rss_after_bytes"`
	StopSeconds     float64                 `json:"stop_seconds"`
	ReadySeconds    float64                 `json:"restart_to_ready_seconds"`   // exec to Probe ready
	ServingSeconds  float64                 `json:"restart_to_serving_seconds"` // exec to every volume listed by ListVolumes
	StatsSeconds    float64                 `json:"stats_all_seconds"`          // then NodeGetVolumeStats of every volume, concurrency 8
}

// probeRPCs are timed at a small and at a large volume count.
var probeRPCs = []string{"CreateVolume", "NodeStageVolume", "NodePublishVolume", "NodeGetVolumeStats",
	"ListVolumes (page of 100)", "GetCapacity", "NodeUnpublishVolume", "NodeUnstageVolume", "DeleteVolume"}

func (b *bench) runScale(ctx context.Context) (*scaleResult, error) {
	const probes, small = 30, 10
	cfg := b.driverConfig(b.scale + 1)
	d, _, err := startDriver(ctx, cfg)
	if err != nil {
		return nil, err
	}
	defer func() { d.stop() }()
	res := &scaleResult{Volumes: b.scale, Small: small}
	fill := newRecorder()
	vols := make([]*vol, b.scale)
	for i := range vols {
		vols[i] = d.newVol(fmt.Sprintf("bench-scale-%d", i), mountCap("ext4"))
	}
	defer func() {
		// Tear down whatever is still there, also after an error.
		start := time.Now()
		parallel(len(vols), 8, func(i int) error {
			if vols[i].id != "" {
				d.down(context.Background(), fill, vols[i])
			}
			return nil
		})
		res.TeardownSeconds = time.Since(start).Seconds()
	}()
	up := func(from, to int) error {
		_, err := parallel(to-from, 8, func(i int) error { return d.up(ctx, fill, vols[from+i], b.scaleSize) })
		return err
	}
	if err := up(0, small); err != nil {
		return nil, err
	}
	if res.AtSmall, err = b.probe(ctx, d, probes); err != nil {
		return nil, err
	}
	start := time.Now()
	if err := up(small, b.scale); err != nil {
		return nil, err
	}
	res.FillSeconds = time.Since(start).Seconds()
	log.Printf("scale: %d volumes published in %.1f s", b.scale, res.FillSeconds)
	if res.AtScale, err = b.probe(ctx, d, probes); err != nil {
		return nil, err
	}
	res.RSSBefore, res.PeakBefore = d.rss()
	res.StopSeconds = d.stop().Seconds()
	var ready time.Duration
	begin := time.Now()
	if d, ready, err = startDriver(ctx, cfg); err != nil {
		return nil, err
	}
	res.ReadySeconds = ready.Seconds()
	// Serving means every volume is found again.
	lv, err := d.listAll(ctx)
	if err != nil {
		return nil, err
	}
	if lv != b.scale {
		return nil, fmt.Errorf("after restart ListVolumes found %d of %d volumes", lv, b.scale)
	}
	res.ServingSeconds = time.Since(begin).Seconds()
	statsWall, err := parallel(len(vols), 8, func(i int) error { return d.volumeStats(ctx, nil, vols[i]) })
	if err != nil {
		return nil, err
	}
	res.StatsSeconds = statsWall.Seconds()
	res.RSSAfter, _ = d.rss()
	log.Printf("scale: restart to ready %.0f ms, to serving all %d volumes %.0f ms; RSS %.1f MiB before, %.1f MiB after",
		res.ReadySeconds*1000, b.scale, res.ServingSeconds*1000, float64(res.RSSBefore)/(1<<20), float64(res.RSSAfter)/(1<<20))
	return res, nil
}

// probe times each RPC of a volume's life on extra volumes, one at a time.
func (b *bench) probe(ctx context.Context, d *driverProc, n int) (map[string]latencyStats, error) {
	r := newRecorder()
	for i := range n {
		v := d.newVol(fmt.Sprintf("bench-probe-%d", i), mountCap("ext4"))
		if err := d.up(ctx, r, v, b.scaleSize); err != nil {
			return nil, err
		}
		if err := d.volumeStats(ctx, r, v); err != nil {
			return nil, err
		}
		// A CO pages through ListVolumes; the whole list is timed at restart.
		if err := r.time("ListVolumes (page of 100)", func() error { return d.listPage(ctx, 100) }); err != nil {
			return nil, err
		}
		if err := r.time("GetCapacity", func() error { return d.capacity(ctx) }); err != nil {
			return nil, err
		}
		if err := d.down(ctx, r, v); err != nil {
			return nil, err
		}
	}
	out := map[string]latencyStats{}
	for _, name := range probeRPCs {
		out[name] = r.stats(name)
	}
	return out, nil
}
