package driver

import (
	"context"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/flashpv/flashpv/pkg/pool"
)

// thinPool is an image pool that reports the fill of a thin pool, as an
// lvm pool with a thinPool does.
type thinPool struct {
	*pool.ImagePool
	fill pool.ThinFill
}

func (p *thinPool) Capacity(ctx context.Context) (pool.Capacity, error) {
	c, err := p.ImagePool.Capacity(ctx)
	fill := p.fill
	c.Thin = &fill
	return c, err
}

// TestThinPoolFillMetrics checks that a pool whose volumes share a thin
// pool exports its data and metadata fill at every scrape, and that a pool
// without one exports neither (no 0 that reads as an empty thin pool).
func TestThinPoolFillMetrics(t *testing.T) {
	open := func(name string) *pool.ImagePool {
		p, err := pool.OpenImage(name, t.TempDir(), 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close() })
		return p
	}
	thin := &thinPool{ImagePool: open("thin"), fill: pool.ThinFill{Data: 0.5, Metadata: 0.125}}
	d, err := New(Config{NodeID: "n1", Pools: []pool.Pool{open("plain"), thin}, KubeletDir: t.TempDir(), MaxVolumes: 10,
		Loops: &fakeDevices{attached: map[string]string{}, busy: map[string]bool{}}, Mounts: newFakeMounts()})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	if err := d.registerMetrics(reg); err != nil {
		t.Fatal(err)
	}
	names := []string{"flashpv_pool_thin_data_used_ratio", "flashpv_pool_thin_metadata_used_ratio"}
	want := func(data, meta string) string {
		return `
# HELP flashpv_pool_thin_data_used_ratio Fraction of the data space of the pool's thin pool in use (lvm pools with a thinPool; writes fail at 1).
# TYPE flashpv_pool_thin_data_used_ratio gauge
flashpv_pool_thin_data_used_ratio{pool="thin"} ` + data + `
# HELP flashpv_pool_thin_metadata_used_ratio Fraction of the metadata space of the pool's thin pool in use (lvm pools with a thinPool; writes fail at 1).
# TYPE flashpv_pool_thin_metadata_used_ratio gauge
flashpv_pool_thin_metadata_used_ratio{pool="thin"} ` + meta + `
`
	}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want("0.5", "0.125")), names...); err != nil {
		t.Error(err)
	}
	// Measured at each scrape, not once.
	thin.fill = pool.ThinFill{Data: 0.97, Metadata: 0.25}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want("0.97", "0.25")), names...); err != nil {
		t.Error(err)
	}
}
