package clustercontroller

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	storagelisters "k8s.io/client-go/listers/storage/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"

	"github.com/flashpv/flashpv/pkg/mover"
	"github.com/flashpv/flashpv/pkg/nodeloss"
	"github.com/flashpv/flashpv/pkg/transfer"
	"github.com/flashpv/flashpv/pkg/transfer/auth"
	"github.com/flashpv/flashpv/pkg/transfer/broker"
	"github.com/flashpv/flashpv/pkg/wellknown"
)

// orderCapabilityTTL bounds how long an order's capability opens the
// source: the target uses it at once, and every order brings a new one.
const orderCapabilityTTL = 5 * time.Minute

// moveTask returns the leader task that moves volumes between nodes
// (pkg/move), or nil when moves are off. Moves need the transfer broker:
// its key signs the orders' capabilities and the controller's own
// certificate, and it knows where each node's transfer server is.
func moveTask(opts Options, client kubernetes.Interface, dyn dynamic.Interface, factory informers.SharedInformerFactory,
	listers nodeloss.Listers, xfer *transferBroker, recorder record.EventRecorder, reg prometheus.Registerer, st *status) (func(context.Context) error, error) {
	if !opts.Moves || xfer == nil {
		return nil, nil
	}
	metrics, err := mover.NewMetrics(reg)
	if err != nil {
		return nil, err
	}
	capInformer := factory.Storage().V1().CSIStorageCapacities()
	capacities := capInformer.Lister()
	synced := []cache.InformerSynced{capInformer.Informer().HasSynced, factory.Core().V1().Nodes().Informer().HasSynced,
		factory.Core().V1().PersistentVolumes().Informer().HasSynced, factory.Core().V1().PersistentVolumeClaims().Informer().HasSynced,
		factory.Core().V1().Pods().Informer().HasSynced, factory.Storage().V1().StorageClasses().Informer().HasSynced}
	return func(ctx context.Context) error {
		signer, err := xfer.keys.wait(ctx, keyPollPeriod, st)
		if err != nil {
			return nil // ctx ended
		}
		if !cache.WaitForCacheSync(ctx.Done(), synced...) {
			return nil
		}
		trust, err := auth.NewTrust(signer.CAPEM())
		if err != nil {
			return err
		}
		key, err := auth.NewControllerKey(func() (*auth.Signer, error) { return signer, nil }, 0)
		if err != nil {
			return err
		}
		address := func(_ context.Context, node string) (string, error) { return xfer.authz.address(node) }
		r := &mover.Reconciler{
			Client: client, Dynamic: dyn, PVs: listers.PVs, Claims: listers.Claims, Recorder: recorder, Metrics: metrics,
			Orders: &transfer.OrderClient{
				Key: key, Trust: func() (*auth.Trust, error) { return trust, nil }, Address: address,
			},
			Address:       xfer.authz.address,
			Capability:    func(req mover.OrderRequest) (string, error) { return orderCapability(signer, req) },
			Target:        targetPicker(listers, capacities, xfer),
			Drained:       drained(listers),
			SnapshotClass: opts.MoveSnapshotClass,
		}
		klog.InfoS("Moving volumes on request and on drains", "snapshotClass", opts.MoveSnapshotClass)
		loop(ctx, opts.MoveResync, "moves", r.Sync, st)
		return nil
	}, nil
}

// orderCapability signs what the target of an import (the snapshot) or a
// catch-up (the volume against the snapshot) presents to the source.
func orderCapability(signer *auth.Signer, req mover.OrderRequest) (string, error) {
	now := time.Now()
	c := auth.Capability{
		ID: auth.NewCapabilityID(), SourceNode: req.Source, TargetNode: req.Target, Target: req.Volume,
		IssuedAt: now.Unix(), Expires: now.Add(orderCapabilityTTL).Unix(),
	}
	if req.Order == mover.OrderCatchUp {
		c.Kind, c.Source, c.Base = auth.KindDelta, req.Volume, req.Snapshot
	} else {
		c.Kind, c.Source = broker.KindSnapshot, req.Snapshot
	}
	return signer.Sign(c)
}

// targetPicker picks a move's target from the nodes, the capacity their
// pools publish and the pod that uses the claim.
func targetPicker(listers nodeloss.Listers, capacities storagelisters.CSIStorageCapacityLister, xfer *transferBroker) func(*corev1.PersistentVolume, *corev1.PersistentVolumeClaim, string) (string, string) {
	return func(pv *corev1.PersistentVolume, claim *corev1.PersistentVolumeClaim, request string) (string, string) {
		nodes, err := listers.Nodes.List(labels.Everything())
		if err != nil {
			return "", err.Error()
		}
		caps, err := capacities.List(labels.Everything())
		if err != nil {
			return "", err.Error()
		}
		c := mover.Candidates{Nodes: nodes, Capacities: caps, Serving: func(node string) bool {
			_, err := xfer.authz.address(node)
			return err == nil
		}}
		if pods, err := listers.Pods.Pods(claim.Namespace).List(labels.Everything()); err == nil {
			for _, p := range pods {
				if nodeloss.UsesClaim(p, claim.Name) {
					c.Pod = p
				}
			}
		}
		return mover.PickTarget(pv, request, c)
	}
}

// drained reports whether a PV's node is cordoned and its class asks for
// moves on a drain.
func drained(listers nodeloss.Listers) func(*corev1.PersistentVolume) bool {
	return func(pv *corev1.PersistentVolume) bool {
		name := nodeloss.NodeOf(pv)
		if name == "" || pv.Spec.StorageClassName == "" {
			return false
		}
		n, err := listers.Nodes.Get(name)
		if err != nil || !n.Spec.Unschedulable {
			return false
		}
		sc, err := listers.Classes.Get(pv.Spec.StorageClassName)
		return err == nil && sc.Parameters[wellknown.ParamDrainPolicy] == wellknown.DrainMove
	}
}
