package clustercontroller

import (
	"context"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"

	"github.com/flashpv/flashpv/pkg/nodeloss"
	"github.com/flashpv/flashpv/pkg/nodestatus"
)

const (
	// statusFetchTimeout bounds one node's answer (the node bounds its
	// own probes to 10 s).
	statusFetchTimeout = 15 * time.Second
	// statusFetchers is how many nodes are asked at once.
	statusFetchers = 8
)

// statusCollector asks every node plugin for its status (pools, volumes'
// used space and health, orphans: pkg/nodestatus) on its health address
// and writes what each said into one ConfigMap, one key per node, where
// `kubectl flashpv` reads it. The node plugins keep not calling the API.
// A node that does not answer keeps its last status, with the error.
type statusCollector struct {
	client    kubernetes.Interface
	namespace string
	name      string
	nodes     corelisters.NodeLister
	pods      corelisters.PodLister
	selector  labels.Selector
	port      int
	now       func() time.Time
	// fetch asks the node plugin at addr (host:port) for its status.
	fetch func(ctx context.Context, addr string) (nodestatus.Status, error)

	last    map[string]nodestatus.Entry
	fetches *prometheus.CounterVec
	size    prometheus.Gauge
}

func newStatusCollector(client kubernetes.Interface, namespace string, nodes corelisters.NodeLister, pods corelisters.PodLister, selector labels.Selector, port int, reg prometheus.Registerer) (*statusCollector, error) {
	c := &statusCollector{client: client, namespace: namespace, name: nodeStatusName, nodes: nodes, pods: pods, selector: selector, port: port,
		now: time.Now, fetch: fetchStatus, last: map[string]nodestatus.Entry{},
		fetches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flashpv_controller_node_status_fetches_total",
			Help: "Requests for node plugins' status (pools, volumes, orphans), by result (ok, error, no_pod).",
		}, []string{"result"}),
		size: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "flashpv_controller_node_status_bytes",
			Help: "Size of the node status ConfigMap's data (limit about 900 KiB; volumes are left out above it).",
		}),
	}
	for _, col := range []prometheus.Collector{c.fetches, c.size} {
		if err := reg.Register(col); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// statusTask returns the leader's task that collects the node plugins'
// status every --node-status-interval, or nil when --node-status-port is 0.
func statusTask(opts Options, client kubernetes.Interface, listers nodeloss.Listers, synced []cache.InformerSynced, reg prometheus.Registerer, st *status) (func(context.Context) error, error) {
	if opts.NodeStatusPort == 0 {
		return nil, nil
	}
	sel, err := labels.Parse(opts.Transfer.NodePodLabel)
	if err != nil || sel.Empty() {
		return nil, fmt.Errorf("--node-pod-label %q: want a non-empty label selector (%v)", opts.Transfer.NodePodLabel, err)
	}
	c, err := newStatusCollector(client, opts.Namespace, listers.Nodes, listers.Pods, sel, opts.NodeStatusPort, reg)
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context) error {
		if !cache.WaitForCacheSync(ctx.Done(), synced...) {
			return nil
		}
		loop(ctx, opts.NodeStatusInterval, "node status", c.Sync, st)
		return nil
	}, nil
}

// fetchStatus is the real request: plain HTTP, as /healthz and /metrics on
// the same address, read-only, its size bounded.
func fetchStatus(ctx context.Context, addr string) (nodestatus.Status, error) {
	ctx, cancel := context.WithTimeout(ctx, statusFetchTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+nodestatus.Path, nil)
	if err != nil {
		return nodestatus.Status{}, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nodestatus.Status{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, nodestatus.MaxBytes+1))
	if err != nil {
		return nodestatus.Status{}, err
	}
	if resp.StatusCode != http.StatusOK {
		return nodestatus.Status{}, fmt.Errorf("%s answered %s", addr, resp.Status)
	}
	return nodestatus.Decode(body)
}

// targets returns, by node, the address of its newest running node plugin
// pod ("" when the node has a flashpv pod but none running with an IP),
// for every node that has a flashpv pod or had a status and still exists.
func (c *statusCollector) targets() (map[string]string, error) {
	pods, err := c.pods.Pods(c.namespace).List(c.selector)
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	newest := map[string]*corev1.Pod{}
	for _, p := range pods {
		n := p.Spec.NodeName
		if n == "" || !configMapKey.MatchString(n) {
			continue
		}
		if _, ok := out[n]; !ok {
			out[n] = ""
		}
		if p.DeletionTimestamp != nil || p.Status.Phase != corev1.PodRunning || p.Status.PodIP == "" {
			continue
		}
		if b := newest[n]; b == nil || b.CreationTimestamp.Before(&p.CreationTimestamp) {
			newest[n] = p
			out[n] = net.JoinHostPort(p.Status.PodIP, strconv.Itoa(c.port))
		}
	}
	for n := range c.last {
		if _, ok := out[n]; ok {
			continue
		}
		if _, err := c.nodes.Get(n); err == nil {
			out[n] = ""
		} else if !apierrors.IsNotFound(err) {
			return nil, err
		}
	}
	return out, nil
}

// Sync asks every node and writes the ConfigMap.
func (c *statusCollector) Sync(ctx context.Context) error {
	targets, err := c.targets()
	if err != nil {
		return err
	}
	entries := c.collect(ctx, targets)
	data, total, err := c.encode(entries)
	if err != nil {
		return err
	}
	if err := writeConfigMap(ctx, c.client, c.namespace, c.name, data); err != nil {
		return err
	}
	c.size.Set(float64(total))
	c.last = entries
	klog.V(2).InfoS("Wrote the node status", "configMap", klog.KRef(c.namespace, c.name), "nodes", len(entries), "bytes", total)
	return nil
}

func (c *statusCollector) collect(ctx context.Context, targets map[string]string) map[string]nodestatus.Entry {
	var mu sync.Mutex
	entries := map[string]nodestatus.Entry{}
	sem := make(chan struct{}, statusFetchers)
	var wg sync.WaitGroup
	for node, addr := range targets {
		e := nodestatus.Entry{Status: c.last[node].Status, Fetched: c.last[node].Fetched}
		if addr == "" {
			c.fetches.WithLabelValues("no_pod").Inc()
			e.Error = "no running flashpv node plugin pod on the node"
			entries[node] = e
			continue
		}
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			st, err := c.fetch(ctx, addr)
			if err == nil && st.Node != node {
				err = fmt.Errorf("the node plugin at %s says it is on node %q", addr, st.Node)
			}
			if err != nil {
				c.fetches.WithLabelValues("error").Inc()
				klog.V(2).InfoS("Node status not fetched", "node", node, "address", addr, "err", err)
				e.Error = err.Error()
			} else {
				c.fetches.WithLabelValues("ok").Inc()
				e = nodestatus.Entry{Status: &st, Fetched: c.now().UTC()}
			}
			mu.Lock()
			entries[node] = e
			mu.Unlock()
		})
	}
	wg.Wait()
	return entries
}

// encode makes the ConfigMap's data; above the size limit the volumes are
// left out (pools, orphans and errors are what an operator needs first).
func (c *statusCollector) encode(entries map[string]nodestatus.Entry) (map[string]string, int, error) {
	for _, withVolumes := range []bool{true, false} {
		data := map[string]string{}
		total := 0
		for _, n := range slices.Sorted(maps.Keys(entries)) {
			e := entries[n]
			if !withVolumes && e.Status != nil {
				st := *e.Status
				st.Volumes, st.VolumesOmitted = nil, true
				e.Status = &st
			}
			s, err := nodestatus.EncodeEntry(e)
			if err != nil {
				return nil, 0, err
			}
			data[n] = s
			total += len(n) + len(s)
		}
		if total <= maxListBytes {
			return data, total, nil
		}
		klog.InfoS("Node status too large: volumes left out", "bytes", total, "limit", maxListBytes, "withVolumes", withVolumes)
	}
	return nil, 0, fmt.Errorf("node status over %d bytes even without volumes: not written", maxListBytes)
}

// writeConfigMap replaces the data of the controller's ConfigMap name,
// creating it when missing.
func writeConfigMap(ctx context.Context, client kubernetes.Interface, namespace, name string, data map[string]string) error {
	cms := client.CoreV1().ConfigMaps(namespace)
	cm, err := cms.Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		cm = &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace,
			Labels: map[string]string{"app.kubernetes.io/name": "flashpv", "app.kubernetes.io/component": "controller"}}, Data: data}
		_, err = cms.Create(ctx, cm, metav1.CreateOptions{})
		return err
	}
	if err != nil {
		return err
	}
	cm = cm.DeepCopy()
	cm.Data = data
	_, err = cms.Update(ctx, cm, metav1.UpdateOptions{})
	return err
}
