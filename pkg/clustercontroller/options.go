package clustercontroller

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/flashpv/flashpv/pkg/wellknown"
)

const (
	volumeListName = wellknown.VolumeListConfigMap
	nodeStatusName = wellknown.NodeStatusConfigMap
)

// Options are the flags of `flashpv controller`.
type Options struct {
	Kubeconfig        string
	APIQPS            float64
	APIBurst          int
	Namespace         string
	HealthAddress     string
	NodeLossGrace     time.Duration
	Resync            time.Duration
	VolumeListRefresh time.Duration
	// NodeStatusPort is the port of the node plugins' health address,
	// where they serve their status (0: not collected).
	NodeStatusPort     int
	NodeStatusInterval time.Duration
	// Moves: move volumes on request and on drains (pkg/move).
	Moves             bool
	MoveResync        time.Duration
	MoveSnapshotClass string

	LeaderElection bool
	LeaseName      string
	LeaseDuration  time.Duration
	RenewDeadline  time.Duration
	RetryPeriod    time.Duration

	Transfer TransferOptions
}

// TransferOptions configure the transfer broker (transfer*.go).
type TransferOptions struct {
	Address            string // empty: no broker
	NodePort           int
	Secret             string
	TrustConfigMap     string
	ServiceName        string
	NodeServiceAccount string
	NodePodLabel       string
}

// AddFlags registers the options on fs.
func (o *Options) AddFlags(fs *flag.FlagSet) {
	fs.StringVar(&o.Kubeconfig, "kubeconfig", "", "kubeconfig file (empty: the in-cluster service account)")
	fs.Float64Var(&o.APIQPS, "kube-api-qps", 20, "requests per second to the API server, sustained")
	fs.IntVar(&o.APIBurst, "kube-api-burst", 40, "requests to the API server in a burst")
	fs.StringVar(&o.Namespace, "namespace", os.Getenv("POD_NAMESPACE"), "flashpv's namespace: its Lease and the volume list ConfigMap (default: $POD_NAMESPACE)")
	fs.StringVar(&o.HealthAddress, "health-address", ":9809", "address of /healthz and /metrics (empty: off)")
	fs.DurationVar(&o.NodeLossGrace, "node-loss-grace", 5*time.Minute, "how long a node named by flashpv PVs must stay without a Node object before its opted-in claims are deleted")
	fs.DurationVar(&o.Resync, "resync", 10*time.Second, "how often the lost nodes and the volume lists are looked at")
	fs.DurationVar(&o.VolumeListRefresh, "volume-list-refresh", 5*time.Minute, "rewrite the per-node volume lists at least this often, so node plugins know they are current")
	fs.IntVar(&o.NodeStatusPort, "node-status-port", 9808, "port of the node plugins' health address (--health-address of flashpv), on their pod IPs, where the controller reads each node's status into the ConfigMap flashpv-status for kubectl flashpv (0: off)")
	fs.DurationVar(&o.NodeStatusInterval, "node-status-interval", time.Minute, "how often the node plugins' status is collected")
	fs.BoolVar(&o.Moves, "moves", true, "move volumes, with their data, to another node on a flashpv.dev/move-to request or when a drainPolicy: Move class's node is cordoned (needs the transfer broker)")
	fs.DurationVar(&o.MoveResync, "move-resync", 5*time.Second, "how often moves under way are taken a step further")
	fs.StringVar(&o.MoveSnapshotClass, "move-snapshot-class", "", "VolumeSnapshotClass of a move's pre-copy snapshot (empty: of flashpv.dev's classes with deletionPolicy Delete, the default one, else the first by name)")
	fs.BoolVar(&o.LeaderElection, "leader-election", true, "elect one active controller through a Lease")
	fs.StringVar(&o.LeaseName, "leader-election-lease", "flashpv-controller", "the Lease's name")
	fs.DurationVar(&o.LeaseDuration, "leader-election-lease-duration", 15*time.Second, "how long a leader's Lease holds")
	fs.DurationVar(&o.RenewDeadline, "leader-election-renew-deadline", 10*time.Second, "how long the leader tries to renew before it gives up")
	fs.DurationVar(&o.RetryPeriod, "leader-election-retry-period", 2*time.Second, "how often candidates try")
	o.Transfer.AddFlags(fs)
}

// AddFlags registers the broker's options on fs.
func (o *TransferOptions) AddFlags(fs *flag.FlagSet) {
	fs.StringVar(&o.Address, "transfer-address", ":9810", "address of the transfer broker's HTTPS API, which node plugins ask for certificates and capabilities (empty: off; restores and clones then stay on their source's node)")
	fs.IntVar(&o.NodePort, "transfer-node-port", 9811, "port of the node plugins' transfer servers, on their pod IPs")
	fs.StringVar(&o.Secret, "transfer-secret", "flashpv-transfer-key", "Secret in --namespace holding the broker's signing key (created when missing)")
	fs.StringVar(&o.TrustConfigMap, "transfer-trust-configmap", "flashpv-transfer-trust", "ConfigMap in --namespace with the CA certificates node plugins trust (ca-<key ID>.pem; the DaemonSet mounts it)")
	fs.StringVar(&o.ServiceName, "transfer-service-name", "flashpv-controller", "the Service in front of the broker: its serving certificate names <name>.<namespace>.svc and <name>.<namespace>.svc.cluster.local")
	fs.StringVar(&o.NodeServiceAccount, "node-service-account", "flashpv-node", "ServiceAccount in --namespace of the node plugins: only its tokens are accepted")
	fs.StringVar(&o.NodePodLabel, "node-pod-label", "app.kubernetes.io/name=flashpv", "label selector of the node plugin pods in --namespace (where a source node's transfer server is)")
}

// Validate checks the broker's options.
func (o *TransferOptions) Validate() error {
	if o.Address == "" {
		return nil
	}
	var errs []error
	if o.NodePort < 1 || o.NodePort > 65535 {
		errs = append(errs, fmt.Errorf("--transfer-node-port %d: not a port", o.NodePort))
	}
	for _, f := range []struct {
		name, value string
		check       func(string) []string
	}{
		{"--transfer-secret", o.Secret, validation.IsDNS1123Subdomain},
		{"--transfer-trust-configmap", o.TrustConfigMap, validation.IsDNS1123Subdomain},
		{"--transfer-service-name", o.ServiceName, validation.IsDNS1035Label},
		{"--node-service-account", o.NodeServiceAccount, validation.IsDNS1123Subdomain},
	} {
		if msgs := f.check(f.value); len(msgs) > 0 {
			errs = append(errs, fmt.Errorf("%s %q: %s", f.name, f.value, strings.Join(msgs, "; ")))
		}
	}
	if sel, err := labels.Parse(o.NodePodLabel); err != nil || sel.Empty() {
		errs = append(errs, fmt.Errorf("--node-pod-label %q: want a non-empty label selector (%v)", o.NodePodLabel, err))
	}
	return errors.Join(errs...)
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
	if o.APIQPS <= 0 || o.APIBurst < 1 {
		errs = append(errs, fmt.Errorf("--kube-api-qps %g and --kube-api-burst %d must be positive", o.APIQPS, o.APIBurst))
	}
	if o.NodeStatusPort < 0 || o.NodeStatusPort > 65535 {
		errs = append(errs, fmt.Errorf("--node-status-port %d: not a port", o.NodeStatusPort))
	}
	if o.NodeStatusPort != 0 && o.NodeStatusInterval <= 0 {
		errs = append(errs, errors.New("--node-status-interval must be positive"))
	}
	// The broker checks the selector when it is on; the status collection
	// finds the node plugin pods with it too.
	if sel, err := labels.Parse(o.Transfer.NodePodLabel); o.NodeStatusPort != 0 && o.Transfer.Address == "" && (err != nil || sel.Empty()) {
		errs = append(errs, fmt.Errorf("--node-pod-label %q: want a non-empty label selector (%v)", o.Transfer.NodePodLabel, err))
	}
	if o.LeaderElection && !(o.LeaseDuration > o.RenewDeadline && o.RenewDeadline > o.RetryPeriod && o.RetryPeriod > 0) {
		errs = append(errs, errors.New("leader election wants lease duration > renew deadline > retry period > 0"))
	}
	if err := o.Transfer.Validate(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
