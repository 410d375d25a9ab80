package clustercontroller

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"github.com/flashpv/flashpv/pkg/transfer/auth"
)

// The broker's signing key lives in a Secret (keys key.pem, PKCS#8, and
// ca.pem, its self-signed CA certificate); node plugins trust every
// certificate under a ca-*.pem key of the trust ConfigMap, which the
// DaemonSet mounts. The leader creates the Secret when it is missing
// (create, never update: two replicas cannot both win) and keeps the
// Secret's CA in the ConfigMap, leaving the other ca-*.pem keys alone.
// Every replica loads the Secret once, at start, and signs with that key
// until it stops.
//
// Rotating the key (after a suspected leak, or on a schedule):
//  1. kubectl -n flashpv delete secret flashpv-transfer-key
//     The leader makes a new key and adds ca-<new ID>.pem to the trust
//     ConfigMap beside ca-<old ID>.pem. Running replicas still sign with
//     the old key, which every node still trusts.
//  2. Wait until every node plugin has seen the new CA: the kubelet
//     refreshes mounted ConfigMaps within about a minute (its sync period
//     plus its cache TTL); give it 5 minutes.
//  3. kubectl -n flashpv rollout restart deployment flashpv-controller
//     The replicas load the new key. Node plugins renew their certificates
//     from the new CA as theirs come due; old certificates and capabilities
//     stay valid, both CAs being trusted.
//  4. After the node certificate lifetime (24h) has passed since step 3,
//     delete ca-<old ID>.pem from the ConfigMap
//     (kubectl -n flashpv edit configmap flashpv-transfer-trust).
//
// After a leak, do step 4 at once instead of waiting: transfers between
// nodes that still hold old certificates fail until they renew.
const (
	secretKeyPEM = "key.pem"
	secretCAPEM  = "ca.pem"
)

// errNoKey: the Secret does not exist yet.
var errNoKey = errors.New("the transfer key Secret does not exist yet")

type keyStore struct {
	client    kubernetes.Interface
	namespace string
	secret    string
	trust     string
}

func trustKey(s *auth.Signer) string { return "ca-" + s.ID() + ".pem" }

func objectLabels() map[string]string {
	return map[string]string{"app.kubernetes.io/name": "flashpv", "app.kubernetes.io/component": "controller"}
}

// load reads the signer from the Secret (errNoKey if there is none).
func (k *keyStore) load(ctx context.Context) (*auth.Signer, error) {
	sec, err := k.client.CoreV1().Secrets(k.namespace).Get(ctx, k.secret, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, errNoKey
	}
	if err != nil {
		return nil, err
	}
	s, err := auth.LoadSigner(sec.Data[secretKeyPEM], sec.Data[secretCAPEM])
	if err != nil {
		return nil, fmt.Errorf("secret %s/%s: %w (delete it to make a new key)", k.namespace, k.secret, err)
	}
	return s, nil
}

// ensure makes sure the Secret exists (creating a new key if not) and
// that the trust ConfigMap holds its CA certificate. The leader's job.
func (k *keyStore) ensure(ctx context.Context) (*auth.Signer, error) {
	s, err := k.load(ctx)
	if errors.Is(err, errNoKey) {
		s, err = k.create(ctx)
	}
	if err != nil {
		return nil, err
	}
	return s, k.trustCA(ctx, s)
}

func (k *keyStore) create(ctx context.Context) (*auth.Signer, error) {
	s, err := auth.NewSigner()
	if err != nil {
		return nil, err
	}
	key, err := s.EncodeKey()
	if err != nil {
		return nil, err
	}
	sec := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: k.secret, Namespace: k.namespace, Labels: objectLabels()},
		Type:       corev1.SecretTypeOpaque,
		Data:       map[string][]byte{secretKeyPEM: key, secretCAPEM: s.CAPEM()},
	}
	_, err = k.client.CoreV1().Secrets(k.namespace).Create(ctx, sec, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return k.load(ctx) // another replica was first: use its key
	}
	if err != nil {
		return nil, err
	}
	klog.InfoS("Created the transfer signing key", "secret", klog.KRef(k.namespace, k.secret), "keyID", s.ID())
	return s, nil
}

// trustCA adds the signer's CA certificate to the trust ConfigMap.
func (k *keyStore) trustCA(ctx context.Context, s *auth.Signer) error {
	cms := k.client.CoreV1().ConfigMaps(k.namespace)
	key, ca := trustKey(s), string(s.CAPEM())
	cm, err := cms.Get(ctx, k.trust, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		cm = &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: k.trust, Namespace: k.namespace, Labels: objectLabels()},
			Data: map[string]string{key: ca}}
		if _, err = cms.Create(ctx, cm, metav1.CreateOptions{}); err != nil {
			return err // AlreadyExists included: the next round updates it
		}
		klog.InfoS("Created the transfer trust ConfigMap", "configMap", klog.KRef(k.namespace, k.trust), "key", key)
		return nil
	}
	if err != nil {
		return err
	}
	if cm.Data[key] == ca {
		return nil
	}
	cm = cm.DeepCopy()
	cm.Data = maps.Clone(cm.Data)
	if cm.Data == nil {
		cm.Data = map[string]string{}
	}
	cm.Data[key] = ca
	if _, err := cms.Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		return err
	}
	klog.InfoS("Added the transfer CA to the trust ConfigMap", "configMap", klog.KRef(k.namespace, k.trust), "key", key, "trusted", len(cm.Data))
	return nil
}

// wait loads the signer, retrying every period until the Secret exists
// and is valid or ctx ends.
func (k *keyStore) wait(ctx context.Context, period time.Duration, st *status) (*auth.Signer, error) {
	logged := false
	for {
		s, err := k.load(ctx)
		if err == nil {
			st.record("transfer key", nil)
			klog.InfoS("Loaded the transfer signing key", "secret", klog.KRef(k.namespace, k.secret), "keyID", s.ID())
			return s, nil
		}
		if errors.Is(err, errNoKey) {
			if !logged {
				klog.InfoS("Waiting for the leader to create the transfer signing key", "secret", klog.KRef(k.namespace, k.secret))
				logged = true
			}
		} else if ctx.Err() == nil {
			klog.ErrorS(err, "Loading the transfer signing key")
			st.record("transfer key", err)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(period):
		}
	}
}
