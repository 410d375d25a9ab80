package clustercontroller

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"

	"github.com/flashpv/flashpv/pkg/nodeloss"
	"github.com/flashpv/flashpv/pkg/transfer/broker"
)

const (
	keyPollPeriod   = 3 * time.Second
	servingCertTTL  = 24 * time.Hour
	servingCertLife = 16 * time.Hour // renewed after this, well before it expires
)

// transferBroker is the Kubernetes side of the transfer broker
// (pkg/transfer/broker): its key, its authentication and authorization,
// its HTTPS server. Every replica serves it, so node plugins reach any
// through the Service; only the leader creates the key.
type transferBroker struct {
	opts   TransferOptions
	ns     string
	keys   *keyStore
	authn  *tokenAuthenticator
	authz  *grantAuthorizer
	grants *prometheus.CounterVec
	synced []cache.InformerSynced
}

func newTransferBroker(opts TransferOptions, namespace string, client kubernetes.Interface, dyn dynamic.Interface,
	listers nodeloss.Listers, synced []cache.InformerSynced, reg prometheus.Registerer) (*transferBroker, error) {
	sel, err := labels.Parse(opts.NodePodLabel)
	if err != nil {
		return nil, err
	}
	b := &transferBroker{
		opts: opts, ns: namespace, synced: synced,
		keys:  &keyStore{client: client, namespace: namespace, secret: opts.Secret, trust: opts.TrustConfigMap},
		authn: &tokenAuthenticator{client: client, namespace: namespace, serviceAccount: opts.NodeServiceAccount, pods: listers.Pods},
		authz: &grantAuthorizer{client: client, dynamic: dyn, pvs: listers.PVs, pods: listers.Pods,
			namespace: namespace, podSelector: sel, nodePort: opts.NodePort},
		grants: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "flashpv_transfer_grants_total",
			Help: "Transfer grant requests of node plugins, by result: granted, denied (the claim does not ask for it, or no such claim or source), unauthenticated, error (try again: no source pod yet, API errors).",
		}, []string{"result"}),
	}
	for _, r := range []string{broker.ResultGranted, broker.ResultDenied, broker.ResultUnauthenticated, broker.ResultError} {
		b.grants.WithLabelValues(r)
	}
	if err := reg.Register(b.grants); err != nil {
		return nil, err
	}
	return b, nil
}

// ensureKeys is the leader's part: the Secret and the trust ConfigMap.
func (b *transferBroker) ensureKeys(ctx context.Context) error {
	_, err := b.keys.ensure(ctx)
	return err
}

// Serve loads the key (waiting for the leader to create it) and, once the
// caches it reads have synced, serves the broker until ctx ends.
func (b *transferBroker) Serve(ctx context.Context, st *status) error {
	signer, err := b.keys.wait(ctx, keyPollPeriod, st)
	if err != nil {
		return nil // ctx ended
	}
	if !cache.WaitForCacheSync(ctx.Done(), b.synced...) {
		return nil
	}
	srv := &broker.Server{
		Signer: signer, Authenticate: b.authn.Authenticate, Authorize: b.authz.Authorize,
		Record: func(result string) { b.grants.WithLabelValues(result).Inc() },
	}
	certs := &servingCert{issue: signer.IssueServerCert, names: []string{
		b.opts.ServiceName + "." + b.ns + ".svc", b.opts.ServiceName + "." + b.ns + ".svc.cluster.local",
	}}
	if _, err := certs.get(nil); err != nil {
		return fmt.Errorf("transfer broker serving certificate: %w", err)
	}
	lis, err := net.Listen("tcp", b.opts.Address)
	if err != nil {
		return err
	}
	hs := &http.Server{
		Handler:   srv.Handler(),
		TLSConfig: &tls.Config{MinVersion: tls.VersionTLS13, GetCertificate: certs.get},
		// Bounded everything: this listens to the whole cluster network.
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      45 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          log.New(klogWriter{}, "", 0),
	}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = hs.Shutdown(sctx)
	}()
	klog.InfoS("Serving the transfer broker", "address", lis.Addr().String(), "dnsNames", certs.names, "keyID", signer.ID())
	if err := hs.ServeTLS(lis, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// klogWriter sends net/http's own complaints (TLS handshake errors of
// strangers) to the log at a verbosity where they do not flood it.
type klogWriter struct{}

func (klogWriter) Write(p []byte) (int, error) {
	klog.V(4).InfoS("Transfer broker HTTP server", "msg", string(p))
	return len(p), nil
}

// servingCert is the broker's TLS certificate: an ephemeral key that
// never leaves memory, certified by the signer for the Service's names
// and renewed long before it expires.
type servingCert struct {
	issue func(dnsNames []string, pub crypto.PublicKey, ttl time.Duration) ([]byte, error)
	names []string
	now   func() time.Time

	mu      sync.Mutex
	cert    *tls.Certificate
	renewAt time.Time
}

func (s *servingCert) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	if s.now != nil {
		now = s.now()
	}
	if s.cert != nil && now.Before(s.renewAt) {
		return s.cert, nil
	}
	cert, err := s.make()
	if err != nil {
		if s.cert != nil && now.Before(s.cert.Leaf.NotAfter) {
			klog.ErrorS(err, "Renewing the transfer broker's serving certificate; the current one is still valid")
			return s.cert, nil
		}
		return nil, err
	}
	s.cert, s.renewAt = cert, now.Add(servingCertLife)
	return cert, nil
}

func (s *servingCert) make() (*tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	certPEM, err := s.issue(s.names, key.Public(), servingCertTTL)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(certPEM)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("the signer issued no PEM certificate")
	}
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, err
	}
	return &tls.Certificate{Certificate: [][]byte{block.Bytes}, PrivateKey: key, Leaf: leaf}, nil
}
