package clustercontroller

import (
	"context"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/klog/v2"

	"github.com/flashpv/flashpv/pkg/nodeloss"
	"github.com/flashpv/flashpv/pkg/volumelist"
)

// maxListBytes keeps the ConfigMap under the API's 1 MiB object limit.
const maxListBytes = 900 << 10

var configMapKey = regexp.MustCompile(`^[-._a-zA-Z0-9]+$`)

// listWriter writes, for every node that exists or is named by a flashpv
// PV, the IDs of the volumes with a PV there into one ConfigMap, which the
// DaemonSet mounts: each node plugin reads its own key as a file and finds
// its orphaned volumes without calling the API.
type listWriter struct {
	client    kubernetes.Interface
	namespace string
	name      string
	nodes     corelisters.NodeLister
	pvs       corelisters.PersistentVolumeLister
	refresh   time.Duration // rewrite unchanged lists this often, so nodes see them fresh
	now       func() time.Time

	last      map[string][]string
	lastWrite time.Time
	writes    *prometheus.CounterVec
	size      prometheus.Gauge
}

func newListWriter(client kubernetes.Interface, namespace string, nodes corelisters.NodeLister, pvs corelisters.PersistentVolumeLister, refresh time.Duration, reg prometheus.Registerer) (*listWriter, error) {
	w := &listWriter{client: client, namespace: namespace, name: volumeListName, nodes: nodes, pvs: pvs, refresh: refresh, now: time.Now,
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flashpv_controller_volume_list_writes_total",
			Help: "Writes of the per-node volume list ConfigMap, by result.",
		}, []string{"result"}),
		size: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "flashpv_controller_volume_list_bytes",
			Help: "Size of the per-node volume list ConfigMap's data (limit about 900 KiB).",
		}),
	}
	for _, c := range []prometheus.Collector{w.writes, w.size} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return w, nil
}

// lists returns node -> sorted volume IDs, from the caches.
func (w *listWriter) lists() (map[string][]string, error) {
	out := map[string][]string{}
	nodes, err := w.nodes.List(labels.Everything())
	if err != nil {
		return nil, err
	}
	for _, n := range nodes {
		out[n.Name] = []string{}
	}
	pvs, err := w.pvs.List(labels.Everything())
	if err != nil {
		return nil, err
	}
	for _, pv := range pvs {
		n := nodeloss.NodeOf(pv)
		if n == "" || pv.Spec.CSI.VolumeHandle == "" {
			continue
		}
		out[n] = append(out[n], pv.Spec.CSI.VolumeHandle)
	}
	for n, ids := range out {
		if !configMapKey.MatchString(n) {
			klog.ErrorS(nil, "Node name cannot be a ConfigMap key: its node plugin gets no volume list", "node", n)
			delete(out, n)
			continue
		}
		slices.Sort(ids)
	}
	return out, nil
}

// Sync writes the lists when they changed or are due for a refresh.
func (w *listWriter) Sync(ctx context.Context) error {
	lists, err := w.lists()
	if err != nil {
		return err
	}
	now := w.now()
	if w.last != nil && maps.EqualFunc(lists, w.last, slices.Equal[[]string]) && now.Sub(w.lastWrite) < w.refresh {
		return nil
	}
	data := map[string]string{}
	total := 0
	for n, ids := range lists {
		s, err := volumelist.Encode(volumelist.List{AsOf: now, Volumes: ids})
		if err != nil {
			return err
		}
		data[n] = s
		total += len(n) + len(s)
	}
	w.size.Set(float64(total))
	if total > maxListBytes {
		w.writes.WithLabelValues("too_large").Inc()
		return fmt.Errorf("volume lists take %d bytes, over %d: not written (node plugins stop judging orphans when theirs goes stale)", total, maxListBytes)
	}
	if err := writeConfigMap(ctx, w.client, w.namespace, w.name, data); err != nil {
		w.writes.WithLabelValues("error").Inc()
		return err
	}
	w.writes.WithLabelValues("ok").Inc()
	w.last, w.lastWrite = lists, now
	klog.V(2).InfoS("Wrote the per-node volume lists", "configMap", klog.KRef(w.namespace, w.name), "nodes", len(lists), "bytes", total)
	return nil
}
