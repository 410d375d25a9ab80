package auth

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"sync"
	"time"
)

// NodeKey is a node's transfer key, generated in memory and never written
// anywhere, and its current certificate, renewed by the caller.
type NodeKey struct {
	key ed25519.PrivateKey

	mu   sync.Mutex
	cert *tls.Certificate // nil until SetCertificate
}

// NewNodeKey generates a node key. Ed25519: handshakes sign with it fast.
func NewNodeKey() (*NodeKey, error) {
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	return &NodeKey{key: key}, nil
}

// Public returns the public key, to be certified.
func (k *NodeKey) Public() crypto.PublicKey { return k.key.Public() }

// PublicDER returns the public key, PKIX DER.
func (k *NodeKey) PublicDER() ([]byte, error) { return x509.MarshalPKIXPublicKey(k.key.Public()) }

// SetCertificate keeps certPEM (the leaf first, PEM) as the key's current
// certificate. It must be an unexpired node certificate for this key.
func (k *NodeKey) SetCertificate(certPEM []byte) error {
	var chain [][]byte
	for rest := certPEM; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return fmt.Errorf("PEM block %q where a certificate was expected", block.Type)
		}
		chain = append(chain, block.Bytes)
	}
	if len(chain) == 0 {
		return errors.New("no PEM CERTIFICATE block")
	}
	leaf, err := x509.ParseCertificate(chain[0])
	if err != nil {
		return err
	}
	if !k.key.Public().(ed25519.PublicKey).Equal(leaf.PublicKey) {
		return errors.New("the certificate is for another key")
	}
	if _, err := NodeOf(leaf); err != nil {
		return err
	}
	if time.Now().After(leaf.NotAfter) {
		return fmt.Errorf("the certificate expired at %s", leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	k.cert = &tls.Certificate{Certificate: chain, PrivateKey: k.key, Leaf: leaf}
	return nil
}

// Certificate returns the current certificate, for a tls.Config's getCert.
func (k *NodeKey) Certificate() (*tls.Certificate, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.cert == nil {
		return nil, fmt.Errorf("%w: none issued yet", ErrNoCertificate)
	}
	if time.Now().After(k.cert.Leaf.NotAfter) {
		return nil, fmt.Errorf("%w: expired at %s", ErrNoCertificate, k.cert.Leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	return k.cert, nil
}

// NeedsRenewal reports whether the key has no certificate, or one past
// half its lifetime, so a renewal that fails has the other half to retry.
func (k *NodeKey) NeedsRenewal(now time.Time) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.cert == nil {
		return true
	}
	leaf := k.cert.Leaf
	half := leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore) / 2)
	return !now.Before(half)
}
