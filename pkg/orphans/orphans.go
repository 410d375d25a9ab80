// Package orphans finds, on a node, the volumes that no PersistentVolume
// names any more (their node was lost, its claims were recreated elsewhere,
// and it came back), reports them (log, metric, /healthz warning) and,
// where the pool opts in, deletes them after a grace period.
//
// The node plugin never calls the Kubernetes API: it learns which volumes
// have a PV from the list the cluster controller writes for this node into
// a ConfigMap the DaemonSet mounts (pkg/volumelist). No list, or a stale
// one, and nothing is judged.
package orphans

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/klog/v2"

	"github.com/flashpv/flashpv/pkg/pool"
	"github.com/flashpv/flashpv/pkg/volumelist"
)

const (
	// DefaultMargin: a volume younger than this at the list's time may have
	// a PV the list does not show yet (the provisioner creates it right
	// after CreateVolume, the controller writes within seconds).
	DefaultMargin = 2 * time.Minute
	// DefaultMaxAge: a list older than this means the controller is not
	// running; it is not trusted.
	DefaultMaxAge = 15 * time.Minute
)

// Deleter deletes a volume as DeleteVolume does, refusing a mounted one.
type Deleter interface {
	DeleteOrphan(ctx context.Context, volumeID string) error
}

// Config wires a Finder.
type Config struct {
	Node    string
	ListDir string // where the volume list ConfigMap is mounted
	Pools   []pool.Pool
	Deleter Deleter
	// Delete names the pools whose orphans are deleted once they have
	// been orphans for Grace.
	Delete  map[string]bool
	Grace   time.Duration
	Margin  time.Duration // 0: DefaultMargin
	MaxAge  time.Duration // 0: DefaultMaxAge
	Metrics prometheus.Registerer
	Now     func() time.Time
}

// Orphan is a volume without a PV.
type Orphan struct {
	ID, Pool, Name string
	Created, Since time.Time // Since: first found without a PV
}

// Finder scans the pools against the node's volume list.
type Finder struct {
	cfg Config

	mu      sync.Mutex
	since   map[string]time.Time // volume ID -> first seen orphaned
	orphans []Orphan
	state   string

	gauge   *prometheus.GaugeVec
	deleted *prometheus.CounterVec
	age     prometheus.Gauge
}

// New returns a Finder.
func New(cfg Config) (*Finder, error) {
	if cfg.Margin == 0 {
		cfg.Margin = DefaultMargin
	}
	if cfg.MaxAge == 0 {
		cfg.MaxAge = DefaultMaxAge
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	f := &Finder{cfg: cfg, since: map[string]time.Time{}, state: "no list read yet",
		gauge: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "flashpv_orphan_volumes",
			Help: "Volumes of the pool that no PersistentVolume names (per the cluster controller's volume list).",
		}, []string{"pool"}),
		deleted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flashpv_orphan_volumes_deleted_total",
			Help: "Orphaned volumes deleted in pools that opt in, by result (ok, error: e.g. still mounted).",
		}, []string{"pool", "result"}),
		age: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "flashpv_volume_list_age_seconds",
			Help: "Age of the volume list this node last read from the cluster controller; -1 when there is none.",
		}),
	}
	if cfg.Metrics != nil {
		for _, c := range []prometheus.Collector{f.gauge, f.deleted, f.age} {
			if err := cfg.Metrics.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return f, nil
}

// Scan reads the list, finds the orphans, deletes those due, and returns
// the orphans left.
func (f *Finder) Scan(ctx context.Context) []Orphan {
	now := f.cfg.Now()
	list, err := volumelist.Read(f.cfg.ListDir, f.cfg.Node)
	switch {
	case err != nil:
		f.age.Set(-1)
		return f.unknown(fmt.Sprintf("no usable volume list: %v", err), errors.Is(err, volumelist.ErrNoList))
	case now.Sub(list.AsOf) > f.cfg.MaxAge:
		f.age.Set(now.Sub(list.AsOf).Seconds())
		return f.unknown(fmt.Sprintf("the volume list is from %s, older than %s: is the flashpv controller running?", list.AsOf.UTC().Format(time.RFC3339), f.cfg.MaxAge), false)
	}
	f.age.Set(now.Sub(list.AsOf).Seconds())

	var found []Orphan
	seen := map[string]bool{}
	for _, p := range f.cfg.Pools {
		if !pool.Usable(p) {
			continue
		}
		vols, err := p.List()
		if err != nil {
			klog.ErrorS(err, "Orphan check: cannot list the pool", "pool", p.Name())
			continue
		}
		n := 0
		for _, v := range vols {
			if list.Has(v.ID) || v.Created.After(list.AsOf.Add(-f.cfg.Margin)) {
				continue
			}
			seen[v.ID] = true
			o := Orphan{ID: v.ID, Pool: p.Name(), Name: v.Name, Created: v.Created, Since: f.firstSeen(v.ID, now)}
			if f.cfg.Delete[p.Name()] && now.Sub(o.Since) >= f.cfg.Grace && f.remove(ctx, o) {
				continue
			}
			found = append(found, o)
			n++
		}
		f.gauge.WithLabelValues(p.Name()).Set(float64(n))
	}
	f.mu.Lock()
	for id := range f.since {
		if !seen[id] {
			delete(f.since, id) // it has a PV again, or it is gone
		}
	}
	f.orphans, f.state = found, "current"
	f.mu.Unlock()
	return found
}

func (f *Finder) firstSeen(id string, now time.Time) time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	t, ok := f.since[id]
	if !ok {
		t = now
		f.since[id] = t
	}
	return t
}

// unknown forgets what was found: without a current list the grace
// periods start anew.
func (f *Finder) unknown(state string, quiet bool) []Orphan {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.state != state && !quiet {
		klog.InfoS("Orphan check: nothing judged", "reason", state)
	}
	f.state, f.orphans = state, nil
	clear(f.since)
	f.gauge.Reset()
	return nil
}

func (f *Finder) remove(ctx context.Context, o Orphan) bool {
	if err := f.cfg.Deleter.DeleteOrphan(ctx, o.ID); err != nil {
		f.deleted.WithLabelValues(o.Pool, "error").Inc()
		klog.ErrorS(err, "Orphaned volume not deleted", "volumeID", o.ID, "pool", o.Pool)
		return false
	}
	f.deleted.WithLabelValues(o.Pool, "ok").Inc()
	klog.InfoS("Deleted an orphaned volume: no PV has named it", "volumeID", o.ID, "name", o.Name, "pool", o.Pool,
		"orphanedSince", o.Since, "grace", f.cfg.Grace)
	f.mu.Lock()
	delete(f.since, o.ID)
	f.mu.Unlock()
	return true
}

// Run scans every interval until ctx ends, logging new orphans.
func (f *Finder) Run(ctx context.Context, interval time.Duration) error {
	reported := map[string]bool{}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		now := map[string]bool{}
		for _, o := range f.Scan(ctx) {
			now[o.ID] = true
			if !reported[o.ID] {
				action := "reported only: its pool does not opt in to deleting orphans"
				if f.cfg.Delete[o.Pool] {
					action = fmt.Sprintf("deleted once orphaned for %s", f.cfg.Grace)
				}
				klog.InfoS("Orphaned volume: no PersistentVolume names it", "volumeID", o.ID, "name", o.Name, "pool", o.Pool, "created", o.Created, "action", action)
			}
		}
		reported = now
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Warnings lists the orphans for /healthz: they need an operator (or the
// pool's opt-in), not a restart.
func (f *Finder) Warnings() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	byPool := map[string][]string{}
	for _, o := range f.orphans {
		byPool[o.Pool] = append(byPool[o.Pool], o.ID)
	}
	var out []string
	for p, ids := range byPool {
		sort.Strings(ids)
		out = append(out, fmt.Sprintf("pool %s: %d orphaned volumes (no PersistentVolume names them): %s", p, len(ids), strings.Join(ids, ", ")))
	}
	sort.Strings(out)
	return out
}

// Found returns the orphans of the last scan, and whether that scan could
// judge (a current volume list) or, if not, why.
func (f *Finder) Found() (found []Orphan, judged bool, state string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.orphans), f.state == "current", f.state
}
