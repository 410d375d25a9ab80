package driver

import (
	"context"
	"errors"
	"path"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/flashpv/flashpv/pkg/pool"
)

// scrapeTimeout bounds the pool checks of one metrics scrape.
const scrapeTimeout = 10 * time.Second

// metrics are the driver's Prometheus metrics: CSI calls as they happen, and
// the pools' state measured at every scrape.
type metrics struct {
	calls   *prometheus.CounterVec
	latency *prometheus.HistogramVec
}

var (
	descCapacity  = prometheus.NewDesc("flashpv_pool_capacity_bytes", "Size of the pool's filesystem minus its reserve.", []string{"pool"}, nil)
	descAvailable = prometheus.NewDesc("flashpv_pool_available_bytes", "Bytes the pool can still promise to new volumes or growth.", []string{"pool"}, nil)
	descAllocated = prometheus.NewDesc("flashpv_pool_allocated_bytes", "Sum of the sizes of the pool's volumes.", []string{"pool"}, nil)
	descVolumes   = prometheus.NewDesc("flashpv_pool_volumes", "Volumes in the pool.", []string{"pool"}, nil)
	descAbnormal  = prometheus.NewDesc("flashpv_pool_abnormal_volumes", "Volumes of the pool whose health reports a problem (pool failing; storage missing, short, or failing to read).", []string{"pool"}, nil)
	descPoolUp    = prometheus.NewDesc("flashpv_pool_up", "1 when the pool's storage answers and can be written and read, else 0.", []string{"pool"}, nil)
	descPoolError = prometheus.NewDesc("flashpv_pool_error", "1 for a pool whose probe fails, with the reason (PoolIOError, PoolReadOnly, PoolNotAnswering...).", []string{"pool", "reason"}, nil)
	// Only pools whose volumes share a thin pool have these: a thin pool
	// can fill up while the pool still has space to promise.
	descThinData     = prometheus.NewDesc("flashpv_pool_thin_data_used_ratio", "Fraction of the data space of the pool's thin pool in use (lvm pools with a thinPool; writes fail at 1).", []string{"pool"}, nil)
	descThinMetadata = prometheus.NewDesc("flashpv_pool_thin_metadata_used_ratio", "Fraction of the metadata space of the pool's thin pool in use (lvm pools with a thinPool; writes fail at 1).", []string{"pool"}, nil)
)

func (d *Driver) registerMetrics(reg prometheus.Registerer) error {
	d.metrics = &metrics{
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flashpv_csi_requests_total", Help: "CSI calls by method and gRPC code.",
		}, []string{"method", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "flashpv_csi_request_duration_seconds", Help: "Duration of CSI calls by method.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"method"}),
	}
	for _, c := range []prometheus.Collector{d.metrics.calls, d.metrics.latency, poolCollector{d}} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// observe counts and times every call.
func (d *Driver) observe(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	start := time.Now()
	resp, err := handler(ctx, req)
	if d.metrics != nil {
		method := path.Base(info.FullMethod)
		d.metrics.calls.WithLabelValues(method, status.Code(err).String()).Inc()
		d.metrics.latency.WithLabelValues(method).Observe(time.Since(start).Seconds())
	}
	return resp, err
}

type poolCollector struct{ d *Driver }

func (c poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, desc := range []*prometheus.Desc{descCapacity, descAvailable, descAllocated, descVolumes, descAbnormal, descPoolUp, descPoolError, descThinData, descThinMetadata} {
		ch <- desc
	}
}

func (c poolCollector) Collect(ch chan<- prometheus.Metric) {
	// A scrape has no context of its own; an lvm report must not hang it.
	ctx, cancel := context.WithTimeout(context.Background(), scrapeTimeout)
	defer cancel()
	failed := c.d.probePools(ctx)
	for _, name := range c.d.poolNames {
		p := c.d.pools[name]
		up := 1.0
		probeErr, failed := failed[name]
		if failed {
			up = 0
			_, reason := poolCondition(probeErr)
			ch <- prometheus.MustNewConstMetric(descPoolError, prometheus.GaugeValue, 1, name, reason)
		}
		ch <- prometheus.MustNewConstMetric(descPoolUp, prometheus.GaugeValue, up, name)
		if vols, err := p.List(); err == nil {
			// A failing pool's volumes are all abnormal (their health says
			// so); otherwise one check of the whole pool, not one per volume.
			abnormal := len(vols)
			if !failed {
				abnormal = len(pool.CheckVolumes(ctx, p.Pool, vols))
			}
			ch <- prometheus.MustNewConstMetric(descAbnormal, prometheus.GaugeValue, float64(abnormal), name)
		}
		if errors.Is(probeErr, pool.ErrNotAnswering) {
			continue // the capacity would wait on the same stuck device
		}
		capa, err := p.Capacity(ctx)
		if err != nil {
			klog.ErrorS(err, "Pool capacity for metrics", "pool", name)
			continue
		}
		ch <- prometheus.MustNewConstMetric(descCapacity, prometheus.GaugeValue, float64(capa.Total), name)
		ch <- prometheus.MustNewConstMetric(descAvailable, prometheus.GaugeValue, float64(capa.Available), name)
		ch <- prometheus.MustNewConstMetric(descAllocated, prometheus.GaugeValue, float64(capa.Allocated), name)
		ch <- prometheus.MustNewConstMetric(descVolumes, prometheus.GaugeValue, float64(capa.Volumes), name)
		if capa.Thin != nil {
			ch <- prometheus.MustNewConstMetric(descThinData, prometheus.GaugeValue, capa.Thin.Data, name)
			ch <- prometheus.MustNewConstMetric(descThinMetadata, prometheus.GaugeValue, capa.Thin.Metadata, name)
		}
	}
}
