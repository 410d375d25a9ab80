package clustercontroller

import (
	"context"
	"errors"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/flashpv/flashpv/pkg/transfer/auth"
)

func testKeys(client *fake.Clientset) *keyStore {
	return &keyStore{client: client, namespace: testNS, secret: "flashpv-transfer-key", trust: "flashpv-transfer-trust"}
}

func writes(client *fake.Clientset) (creates, updates map[string]int) {
	creates, updates = map[string]int{}, map[string]int{}
	for _, a := range client.Actions() {
		switch a.GetVerb() {
		case "create":
			creates[a.GetResource().Resource]++
		case "update":
			updates[a.GetResource().Resource]++
		}
	}
	return creates, updates
}

// The first ensure creates the Secret and the ConfigMap; the second, and
// another replica's load, reuse them.
func TestKeyBootstrap(t *testing.T) {
	ctx := context.Background()
	client := fake.NewClientset()
	k := testKeys(client)
	if _, err := k.load(ctx); !errors.Is(err, errNoKey) {
		t.Fatalf("load before the leader made a key: %v", err)
	}
	s1, err := k.ensure(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s2, err := k.ensure(ctx)
	if err != nil {
		t.Fatal(err)
	}
	standby, err := testKeys(client).load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if s1.ID() != s2.ID() || s1.ID() != standby.ID() {
		t.Errorf("key IDs %s, %s, %s: want one key", s1.ID(), s2.ID(), standby.ID())
	}
	creates, updates := writes(client)
	if creates["secrets"] != 1 || creates["configmaps"] != 1 || len(updates) != 0 {
		t.Errorf("creates %v, updates %v; want one Secret and one ConfigMap, created once", creates, updates)
	}
	cm, err := client.CoreV1().ConfigMaps(testNS).Get(ctx, "flashpv-transfer-trust", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(cm.Data) != 1 || cm.Data["ca-"+s1.ID()+".pem"] != string(s1.CAPEM()) {
		t.Errorf("trust ConfigMap %v", cm.Data)
	}
	sec, err := client.CoreV1().Secrets(testNS).Get(ctx, "flashpv-transfer-key", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if sec.Type != corev1.SecretTypeOpaque || len(sec.Data[secretKeyPEM]) == 0 {
		t.Errorf("secret %+v", sec)
	}
}

// A rotation: the operator deleted the Secret; the new key's CA joins the
// old one in the ConfigMap, which keeps every other key.
func TestKeyRotationKeepsOldCA(t *testing.T) {
	ctx := context.Background()
	old, err := auth.NewSigner()
	if err != nil {
		t.Fatal(err)
	}
	client := fake.NewClientset(&corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Namespace: testNS, Name: "flashpv-transfer-trust"},
		Data:       map[string]string{"ca-" + old.ID() + ".pem": string(old.CAPEM()), "README": "keep"},
	})
	s, err := testKeys(client).ensure(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cm, _ := client.CoreV1().ConfigMaps(testNS).Get(ctx, "flashpv-transfer-trust", metav1.GetOptions{})
	if len(cm.Data) != 3 || cm.Data["ca-"+old.ID()+".pem"] != string(old.CAPEM()) || cm.Data["ca-"+s.ID()+".pem"] != string(s.CAPEM()) {
		t.Errorf("trust ConfigMap %v", cm.Data)
	}
	var pems [][]byte
	for k, v := range cm.Data {
		if k != "README" {
			pems = append(pems, []byte(v))
		}
	}
	trust, err := auth.NewTrust(pems...)
	if err != nil || trust.Len() != 2 {
		t.Fatalf("trust from the ConfigMap: %v", err)
	}
	now := time.Now()
	for _, signer := range []*auth.Signer{old, s} {
		tok, err := signer.Sign(auth.Capability{ID: auth.NewCapabilityID(), Kind: "volume", Source: "s", SourceNode: "n1", TargetNode: "n2",
			Target: "t", IssuedAt: now.Unix(), Expires: now.Add(time.Minute).Unix()})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := trust.Verify(tok, now); err != nil {
			t.Errorf("key %s not trusted during the overlap: %v", signer.ID(), err)
		}
	}
}

// Two replicas racing to create the key: the loser uses the winner's.
func TestKeyCreateRace(t *testing.T) {
	ctx := context.Background()
	client := fake.NewClientset()
	winner, err := testKeys(fake.NewClientset()).ensure(ctx)
	if err != nil {
		t.Fatal(err)
	}
	winnerKey, _ := winner.EncodeKey()
	client.PrependReactor("create", "secrets", func(k8stesting.Action) (bool, runtime.Object, error) {
		// The other replica's Secret lands first.
		_ = client.Tracker().Add(&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: testNS, Name: "flashpv-transfer-key"},
			Data: map[string][]byte{secretKeyPEM: winnerKey, secretCAPEM: winner.CAPEM()}})
		return true, nil, apierrors.NewAlreadyExists(schema.GroupResource{Resource: "secrets"}, "flashpv-transfer-key")
	})
	s, err := testKeys(client).ensure(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if s.ID() != winner.ID() {
		t.Errorf("key %s, want the winner's %s", s.ID(), winner.ID())
	}
}

// A Secret that does not hold a key is reported, never replaced: a new
// key is the operator's decision (see the rotation procedure).
func TestKeyCorruptSecret(t *testing.T) {
	client := fake.NewClientset(&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: testNS, Name: "flashpv-transfer-key"},
		Data: map[string][]byte{secretKeyPEM: []byte("garbage")}})
	if _, err := testKeys(client).ensure(context.Background()); err == nil || errors.Is(err, errNoKey) {
		t.Fatalf("corrupt Secret: %v", err)
	}
	if creates, updates := writes(client); len(creates)+len(updates) != 0 {
		t.Errorf("wrote %v %v", creates, updates)
	}
}
