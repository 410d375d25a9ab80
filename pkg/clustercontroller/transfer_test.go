package clustercontroller

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/flashpv/flashpv/pkg/nodeloss"
	"github.com/flashpv/flashpv/pkg/transfer/auth"
	"github.com/flashpv/flashpv/pkg/transfer/broker"
)

func freeAddress(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	return lis.Addr().String()
}

// The broker as a node plugin meets it: over TLS 1.3 with a certificate
// for the Service's name, trusted through the trust ConfigMap; a grant
// for a claim's restore onto the asking node, counted in the metrics.
func TestServe(t *testing.T) {
	w := newWorld()
	az := w.authorizer(t)
	client := az.client.(*fake.Clientset)
	reviewTokens(t, client, map[string]authnv1.TokenReviewStatus{
		"n2-token": reviewed(nodeSA, map[string]authnv1.ExtraValue{extraNodeName: {"n2"}, extraPodName: {"flashpv-node-b"}, extraPodUID: {"flashpv-node-b-uid"}}),
	})
	opts := TransferOptions{Address: freeAddress(t), NodePort: 9811, Secret: "flashpv-transfer-key", TrustConfigMap: "flashpv-transfer-trust",
		ServiceName: "flashpv-controller", NodeServiceAccount: "flashpv-node", NodePodLabel: "app.kubernetes.io/name=flashpv"}
	if err := opts.Validate(); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	b, err := newTransferBroker(opts, testNS, client, az.dynamic, nodeloss.Listers{PVs: az.pvs, Pods: az.pods}, nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := b.ensureKeys(ctx); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- b.Serve(ctx, &status{}) }()

	cm, err := client.CoreV1().ConfigMaps(testNS).Get(ctx, opts.TrustConfigMap, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var pems [][]byte
	for _, v := range cm.Data {
		pems = append(pems, []byte(v))
	}
	trust := func() (*auth.Trust, error) { return auth.NewTrust(pems...) }
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("n2-token"), 0o600); err != nil {
		t.Fatal(err)
	}
	bc := &broker.Client{URL: "https://" + opts.Address, TokenFile: tokenFile,
		TLS: auth.BrokerClientConfig(trust, "flashpv-controller.flashpv.svc")}
	var resp broker.GrantResponse
	for deadline := time.Now().Add(10 * time.Second); ; {
		resp, err = bc.Grant(ctx, restoreReq)
		var e *broker.Error
		if err == nil || errors.As(err, &e) || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond) // not listening yet
	}
	if err != nil {
		t.Fatal(err)
	}
	tr, _ := trust()
	c, err := tr.Verify(resp.Capability, time.Now())
	if err != nil || c.TargetNode != "n2" || c.SourceNode != "n1" || c.Source != restoreReq.Source || resp.Address != "10.0.0.1:9811" {
		t.Errorf("grant %+v, capability %+v, %v", resp, c, err)
	}
	wrong := cloneReq
	wrong.Target = "pvc-r-uid"
	var e *broker.Error
	if _, err := bc.Grant(ctx, wrong); !errors.As(err, &e) || e.Code != broker.CodeDenied {
		t.Errorf("a clone into another claim's volume: %v", err)
	}
	for result, want := range map[string]float64{broker.ResultGranted: 1, broker.ResultDenied: 1, broker.ResultError: 0} {
		if got := testutil.ToFloat64(b.grants.WithLabelValues(result)); got != want {
			t.Errorf("%s: %v, want %v", result, got, want)
		}
	}

	key, _ := auth.NewNodeKey()
	der, _ := key.PublicDER()
	certPEM, err := bc.Certificate(ctx, der)
	if err != nil {
		t.Fatal(err)
	}
	if err := key.SetCertificate(certPEM); err != nil {
		t.Fatal(err)
	}

	// The other name of the Service works; TLS 1.2 does not.
	other := &broker.Client{URL: bc.URL, TokenFile: tokenFile, TLS: auth.BrokerClientConfig(trust, "flashpv-controller.flashpv.svc.cluster.local")}
	if _, err := other.Certificate(ctx, der); err != nil {
		t.Errorf("by the long name: %v", err)
	}
	old := &tls.Config{MaxVersion: tls.VersionTLS12, InsecureSkipVerify: true}
	if conn, err := tls.Dial("tcp", opts.Address, old); err == nil {
		conn.Close()
		t.Error("TLS 1.2 accepted")
	}

	cancel()
	if err := <-done; err != nil {
		t.Errorf("Serve: %v", err)
	}
}

// The serving certificate is renewed before it expires, with a new key.
func TestServingCertRenewal(t *testing.T) {
	s, err := auth.NewSigner()
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	sc := &servingCert{issue: s.IssueServerCert, names: []string{"a.b.svc"}, now: func() time.Time { return now }}
	c1, err := sc.get(nil)
	if err != nil {
		t.Fatal(err)
	}
	if c2, _ := sc.get(nil); c2 != c1 {
		t.Error("renewed too early")
	}
	now = now.Add(servingCertLife)
	c3, err := sc.get(nil)
	if err != nil || c3 == c1 || c3.Leaf.NotAfter.Before(c1.Leaf.NotAfter) {
		t.Errorf("not renewed: %v", err)
	}
	if !now.Before(c1.Leaf.NotAfter) {
		t.Error("renewal comes after expiry")
	}
}
