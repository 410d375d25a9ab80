package transfer

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"sync"
	"time"

	"k8s.io/klog/v2"

	"github.com/flashpv/flashpv/pkg/transfer/auth"
	"github.com/flashpv/flashpv/pkg/transfer/broker"
)

// Identity is this node's transfer identity: a key that never leaves the
// process and the certificate the broker issued for it, renewed before it
// expires. Both the server and the client present it.
type Identity struct {
	Node   string
	Broker *broker.Client
	Trust  func() (*auth.Trust, error)

	key *auth.NodeKey
	mu  sync.Mutex // serialises renewals
}

// NewIdentity makes a fresh key for node.
func NewIdentity(node string, b *broker.Client, trust func() (*auth.Trust, error)) (*Identity, error) {
	k, err := auth.NewNodeKey()
	if err != nil {
		return nil, err
	}
	return &Identity{Node: node, Broker: b, Trust: trust, key: k}, nil
}

// Certificate is the current certificate, renewed first when it is due.
func (id *Identity) Certificate(ctx context.Context) (*tls.Certificate, error) {
	if err := id.renew(ctx); err != nil {
		if c, cerr := id.key.Certificate(); cerr == nil {
			klog.ErrorS(err, "Renewing the transfer certificate; the current one is still valid")
			return c, nil
		}
		return nil, err
	}
	return id.key.Certificate()
}

// current is the certificate as it is, for TLS callbacks (no network).
func (id *Identity) current() (*tls.Certificate, error) { return id.key.Certificate() }

func (id *Identity) renew(ctx context.Context) error {
	id.mu.Lock()
	defer id.mu.Unlock()
	if !id.key.NeedsRenewal(time.Now()) && id.trusted() {
		return nil
	}
	if id.Broker == nil {
		return errors.New("no broker to get a transfer certificate from")
	}
	der, err := id.key.PublicDER()
	if err != nil {
		return err
	}
	pem, err := id.Broker.Certificate(ctx, der)
	if err != nil {
		return err
	}
	if err := id.key.SetCertificate(pem); err != nil {
		return err
	}
	klog.V(2).InfoS("Transfer certificate issued", "node", id.Node)
	return nil
}

// trusted tells whether the current certificate still chains to a
// trusted CA: after a key rotation removes its CA, it is renewed at once.
func (id *Identity) trusted() bool {
	c, err := id.key.Certificate()
	if err != nil || len(c.Certificate) == 0 {
		return false
	}
	leaf, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		return false
	}
	trust, err := id.Trust()
	if err != nil {
		return true // nothing to judge by; the handshake will tell
	}
	_, err = leaf.Verify(x509.VerifyOptions{Roots: trust.CertPool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	return err == nil
}

// Keep renews the certificate until ctx ends: at once, then whenever it
// is due, retrying failures with backoff. A source node needs a
// certificate before any target can connect to it.
func (id *Identity) Keep(ctx context.Context) error {
	backoff := time.Second
	for {
		err := id.renew(ctx)
		wait := time.Minute
		if err != nil {
			klog.ErrorS(err, "Getting a transfer certificate from the broker", "retryIn", backoff)
			wait, backoff = backoff, min(2*backoff, 5*time.Minute)
		} else {
			backoff = time.Second
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
	}
}
