//go:build apiserver

package clustercontroller

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/flashpv/flashpv/pkg/nodeloss"
	"github.com/flashpv/flashpv/pkg/transfer/auth"
	"github.com/flashpv/flashpv/pkg/transfer/broker"
	"github.com/flashpv/flashpv/pkg/volumelist"
	"github.com/flashpv/flashpv/pkg/wellknown"
	"github.com/flashpv/flashpv/test/apiserver"
)

// eventually polls cond until it holds; the deadline only bounds a hang.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("still not: %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// The whole controller (Run) as deployed: its kubeconfig acting as its
// ServiceAccount with the deployment's RBAC, a Lease, real informers. For a
// node gone for good it writes the volume lists, deletes the opted-in
// claim once the grace period is over (with an Event), and once
// pvc-protection lets the claim go, deletes the PV and removes the
// provisioner's finalizer; as the broker's leader it makes the signing key
// and the trust ConfigMap, and as the broker it certifies a node plugin by
// its real token. It stops when its context ends.
func TestAPIServerRun(t *testing.T) {
	ctx := context.Background()
	ns := srv.Namespace(t)
	kubeconfig := apiserver.Kubeconfig(t, srv.ControllerConfig(t, ns))
	core := srv.Client.CoreV1()
	lost, live := ns+"-n1", ns+"-n2"
	makeNode(t, live)
	class := ns + "-fast"
	claim := must[*corev1.PersistentVolumeClaim](t)(core.PersistentVolumeClaims(ns).Create(ctx, &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: "data-0"},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}},
			StorageClassName: &class, VolumeName: ns + "-pv-a",
		},
	}, metav1.CreateOptions{}))
	pv := testPV(ns+"-pv-a", lost, wellknown.DriverName)
	pv.Finalizers = []string{nodeloss.ProvisionerFinalizer}
	pv.Spec.Capacity = corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}
	pv.Spec.AccessModes = []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}
	pv.Spec.StorageClassName = class
	pv.Spec.PersistentVolumeReclaimPolicy = corev1.PersistentVolumeReclaimDelete // as a provisioner makes it (the API defaults to Retain)
	pv.Spec.CSI.VolumeAttributes = map[string]string{wellknown.ParamNodeLossPolicy: wellknown.NodeLossRecreate}
	pv.Spec.ClaimRef = &corev1.ObjectReference{Kind: "PersistentVolumeClaim", APIVersion: "v1", Namespace: ns, Name: "data-0", UID: claim.UID}
	pv = must[*corev1.PersistentVolume](t)(core.PersistentVolumes().Create(ctx, pv, metav1.CreateOptions{}))
	t.Cleanup(func() {
		p, err := core.PersistentVolumes().Get(ctx, pv.Name, metav1.GetOptions{})
		if err == nil {
			p.Finalizers = nil
			_, _ = core.PersistentVolumes().Update(ctx, p, metav1.UpdateOptions{})
			_ = core.PersistentVolumes().Delete(ctx, pv.Name, metav1.DeleteOptions{})
		}
	})

	// The loss begins when Run first looks, which must be a later second
	// than the PV's (the server's timestamps are whole seconds; a PV of
	// the second the loss began is kept as possibly younger).
	for !time.Now().Truncate(time.Second).After(pv.CreationTimestamp.Time) {
		time.Sleep(50 * time.Millisecond)
	}
	opts := Options{Kubeconfig: kubeconfig, Namespace: ns,
		// Shorter than Validate allows, so the test does not wait long.
		NodeLossGrace: 2 * time.Second, Resync: 200 * time.Millisecond, VolumeListRefresh: time.Hour,
		LeaderElection: true, LeaseName: "flashpv-controller", LeaseDuration: 15 * time.Second, RenewDeadline: 10 * time.Second, RetryPeriod: 2 * time.Second}
	opts.Transfer.AddFlags(flag.NewFlagSet("defaults", flag.ContinueOnError))
	opts.Transfer.Address = freeAddress(t)
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- Run(runCtx, opts, "test") }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()

	eventually(t, "the volume lists name the lost node's volume and the live node", func() bool {
		cm, err := core.ConfigMaps(ns).Get(ctx, volumeListName, metav1.GetOptions{})
		if err != nil {
			return false
		}
		l, err := volumelist.Decode([]byte(cm.Data[lost]))
		_, hasLive := cm.Data[live]
		return err == nil && slices.Equal(l.Volumes, []string{pv.Spec.CSI.VolumeHandle}) && hasLive
	})
	eventually(t, "the claim is deleted after the grace period", func() bool {
		c, err := core.PersistentVolumeClaims(ns).Get(ctx, "data-0", metav1.GetOptions{})
		return err == nil && c.DeletionTimestamp != nil
	})
	eventually(t, "an Event on the claim says it was deleted", func() bool {
		evs, err := core.Events(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false
		}
		return slices.ContainsFunc(evs.Items, func(e corev1.Event) bool {
			return e.Reason == nodeloss.ReasonClaimDeleted && e.InvolvedObject.UID == claim.UID
		})
	})
	if p, err := core.PersistentVolumes().Get(ctx, pv.Name, metav1.GetOptions{}); err != nil || p.DeletionTimestamp != nil {
		t.Fatalf("PV deleted while its claim is still there: %v, %+v", err, p)
	}
	// Kubernetes' pvc-protection controller lets the claim go.
	c := must[*corev1.PersistentVolumeClaim](t)(core.PersistentVolumeClaims(ns).Get(ctx, "data-0", metav1.GetOptions{}))
	c.Finalizers = nil
	must[*corev1.PersistentVolumeClaim](t)(core.PersistentVolumeClaims(ns).Update(ctx, c, metav1.UpdateOptions{}))
	eventually(t, "the PV is deleted and loses the provisioner's finalizer", func() bool {
		p, err := core.PersistentVolumes().Get(ctx, pv.Name, metav1.GetOptions{})
		return err == nil && p.DeletionTimestamp != nil && !slices.Contains(p.Finalizers, nodeloss.ProvisionerFinalizer)
	})
	eventually(t, "the broker's key and trust ConfigMap exist", func() bool {
		_, err := core.Secrets(ns).Get(ctx, opts.Transfer.Secret, metav1.GetOptions{})
		cm, err2 := core.ConfigMaps(ns).Get(ctx, opts.Transfer.TrustConfigMap, metav1.GetOptions{})
		return err == nil && err2 == nil && len(cm.Data) == 1
	})

	// A node plugin of the live node gets its certificate from the broker
	// with its real token, bound to its pod.
	must[*corev1.ServiceAccount](t)(core.ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: opts.Transfer.NodeServiceAccount}}, metav1.CreateOptions{}))
	plugin := makePod(t, ns, "flashpv-node-x", live, opts.Transfer.NodeServiceAccount)
	tr := must[*authnv1.TokenRequest](t)(core.ServiceAccounts(ns).CreateToken(ctx, opts.Transfer.NodeServiceAccount, &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{
		Audiences:      []string{broker.Audience},
		BoundObjectRef: &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: plugin.Name, UID: plugin.UID},
	}}, metav1.CreateOptions{}))
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(tr.Status.Token), 0o600); err != nil {
		t.Fatal(err)
	}
	trustCM := must[*corev1.ConfigMap](t)(core.ConfigMaps(ns).Get(ctx, opts.Transfer.TrustConfigMap, metav1.GetOptions{}))
	var pems [][]byte
	for _, v := range trustCM.Data {
		pems = append(pems, []byte(v))
	}
	bc := &broker.Client{URL: "https://" + opts.Transfer.Address, TokenFile: tokenFile,
		TLS: auth.BrokerClientConfig(func() (*auth.Trust, error) { return auth.NewTrust(pems...) }, opts.Transfer.ServiceName+"."+ns+".svc")}
	key, err := auth.NewNodeKey()
	if err != nil {
		t.Fatal(err)
	}
	der, err := key.PublicDER()
	if err != nil {
		t.Fatal(err)
	}
	var certPEM []byte
	eventually(t, "the broker issues the node plugin a certificate (until its pod is in the cache: Unavailable)", func() bool {
		certPEM, err = bc.Certificate(ctx, der)
		var e *broker.Error
		if errors.As(err, &e) && e.Code != broker.CodeUnavailable {
			t.Fatalf("certificate: %v", err)
		}
		return err == nil
	})
	block, _ := pem.Decode(certPEM)
	if block == nil {
		t.Fatalf("no certificate in %q", certPEM)
	}
	cert := must[*x509.Certificate](t)(x509.ParseCertificate(block.Bytes))
	if node, err := auth.NodeOf(cert); err != nil || node != live {
		t.Errorf("certificate for node %q (%v), want %s", node, err, live)
	}

	lease := must[*coordinationv1.Lease](t)(srv.Client.CoordinationV1().Leases(ns).Get(ctx, opts.LeaseName, metav1.GetOptions{}))
	if lease.Spec.HolderIdentity == nil || *lease.Spec.HolderIdentity == "" {
		t.Errorf("the Lease has no holder: %+v", lease.Spec)
	}
}
