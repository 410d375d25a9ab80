package clustercontroller

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/flashpv/flashpv/pkg/wellknown"
)

const volumeListName = wellknown.VolumeListConfigMap

// Options are the flags of `flashpv controller`.
type Options struct {
	Kubeconfig        string
	Namespace         string
	HealthAddress     string
	NodeLossGrace     time.Duration
	Resync            time.Duration
	VolumeListRefresh time.Duration

	LeaderElection bool
	LeaseName      string
	LeaseDuration  time.Duration
	RenewDeadline  time.Duration
	RetryPeriod    time.Duration
}

// AddFlags registers the options on fs.
func (o *Options) AddFlags(fs *flag.FlagSet) {
	fs.StringVar(&o.Kubeconfig, "kubeconfig", "", "kubeconfig file (empty: the in-cluster service account)")
	fs.StringVar(&o.Namespace, "namespace", os.Getenv("POD_NAMESPACE"), "flashpv's namespace: its Lease and the volume list ConfigMap (default: $POD_NAMESPACE)")
	fs.StringVar(&o.HealthAddress, "health-address", ":9809", "address of /healthz and /metrics (empty: off)")
	fs.DurationVar(&o.NodeLossGrace, "node-loss-grace", 5*time.Minute, "how long a node named by flashpv PVs must stay without a Node object before its opted-in claims are deleted")
	fs.DurationVar(&o.Resync, "resync", 10*time.Second, "how often the lost nodes and the volume lists are looked at")
	fs.DurationVar(&o.VolumeListRefresh, "volume-list-refresh", 5*time.Minute, "rewrite the per-node volume lists at least this often, so node plugins know they are current")
	fs.BoolVar(&o.LeaderElection, "leader-election", true, "elect one active controller through a Lease")
	fs.StringVar(&o.LeaseName, "leader-election-lease", "flashpv-controller", "the Lease's name")
	fs.DurationVar(&o.LeaseDuration, "leader-election-lease-duration", 15*time.Second, "how long a leader's Lease holds")
	fs.DurationVar(&o.RenewDeadline, "leader-election-renew-deadline", 10*time.Second, "how long the leader tries to renew before it gives up")
	fs.DurationVar(&o.RetryPeriod, "leader-election-retry-period", 2*time.Second, "how often candidates try")
}

// Validate checks the options.
func (o *Options) Validate() error {
	var errs []error
	if o.Namespace == "" {
		errs = append(errs, errors.New("--namespace (or POD_NAMESPACE) is required"))
	}
	if o.NodeLossGrace < 10*time.Second {
		errs = append(errs, fmt.Errorf("--node-loss-grace %s: at least 10s (a node that is only restarting must never look lost)", o.NodeLossGrace))
	}
	if o.Resync <= 0 || o.VolumeListRefresh <= 0 {
		errs = append(errs, errors.New("--resync and --volume-list-refresh must be positive"))
	}
	if o.LeaderElection && !(o.LeaseDuration > o.RenewDeadline && o.RenewDeadline > o.RetryPeriod && o.RetryPeriod > 0) {
		errs = append(errs, errors.New("leader election wants lease duration > renew deadline > retry period > 0"))
	}
	return errors.Join(errs...)
}
