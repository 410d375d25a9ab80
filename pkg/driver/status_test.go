package driver

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/flashpv/flashpv/pkg/mounter"
	"github.com/flashpv/flashpv/pkg/pool"
)

func TestNodeStatus(t *testing.T) {
	e := newNodeEnv(t)
	block := e.create("block", blockCap())
	staged := e.staged("staged", mountCap(""))
	idle := e.create("idle", mountCap(""))
	e.mounts.stats = mounter.Stats{Total: testSize, Used: 123 << 10}

	pools, vols := e.d.NodeStatus(e.ctx)
	if len(pools) != 1 {
		t.Fatalf("pools: %+v", pools)
	}
	p := pools[0]
	if p.Name != "default" || p.Kind != "image" || !p.Healthy || p.Volumes != 3 || p.Allocated != 3*testSize || p.Capacity <= 0 || p.Available <= 0 {
		t.Errorf("pool: %+v", p)
	}
	used := map[string]int64{}
	for _, v := range vols {
		if v.Size != testSize || len(v.Problems) != 0 {
			t.Errorf("volume %+v", v)
		}
		used[v.ID] = v.Used
	}
	want := map[string]int64{block: -1, staged: 123 << 10, idle: -1}
	for id, u := range want {
		if got, ok := used[id]; !ok || got != u {
			t.Errorf("volume %s: used %d (listed %v), want %d", id, got, ok, u)
		}
	}
	if len(used) != len(want) {
		t.Errorf("volumes: %+v", vols)
	}
}

func TestNodeStatusUnusablePool(t *testing.T) {
	good, err := pool.OpenImage("good", t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { good.Close() })
	bad := pool.NewUnusable("fast", pool.KindLVM, fmt.Errorf("%w: no volume group flashpv", pool.ErrUnusable))
	d, err := New(Config{NodeID: "n1", Pools: []pool.Pool{good, bad}, KubeletDir: t.TempDir(), MaxVolumes: 10,
		Loops: &fakeDevices{attached: map[string]string{}, busy: map[string]bool{}}, Mounts: newFakeMounts()})
	if err != nil {
		t.Fatal(err)
	}
	pools, vols := d.NodeStatus(context.Background())
	if len(pools) != 2 || len(vols) != 0 {
		t.Fatalf("pools %+v, volumes %+v", pools, vols)
	}
	// Pools come in the order of their names.
	if p := pools[1]; p.Name != "good" || !p.Healthy || p.Capacity <= 0 {
		t.Errorf("good pool: %+v", p)
	}
	p := pools[0]
	if p.Name != "fast" || p.Kind != "lvm" || p.Healthy || p.Reason != "PoolUnusable" || !strings.Contains(p.Message, "no volume group") || p.Capacity != -1 {
		t.Errorf("unusable pool: %+v", p)
	}
}
