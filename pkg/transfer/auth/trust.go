package auth

import (
	"crypto/ed25519"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
)

// Trust is a set of trusted CA certificates, and their keys by key ID for
// verifying capabilities. Several CAs at once let the key rotate.
type Trust struct {
	cas  []*x509.Certificate
	keys map[string]ed25519.PublicKey
	pool *x509.CertPool
}

// NewTrust trusts the CA certificates in caPEMs, each holding one or more
// PEM CERTIFICATE blocks.
func NewTrust(caPEMs ...[]byte) (*Trust, error) {
	t := &Trust{keys: map[string]ed25519.PublicKey{}, pool: x509.NewCertPool()}
	for _, data := range caPEMs {
		cas, err := parseCAs(data)
		if err != nil {
			return nil, err
		}
		for _, ca := range cas {
			if err := t.add(ca); err != nil {
				return nil, err
			}
		}
	}
	if len(t.cas) == 0 {
		return nil, errors.New("no trusted CA certificate")
	}
	return t, nil
}

func (t *Trust) add(ca *x509.Certificate) error {
	if err := checkCA(ca); err != nil {
		return err
	}
	pub := ca.PublicKey.(ed25519.PublicKey) // checkCA checked the type
	id, err := KeyID(pub)
	if err != nil {
		return err
	}
	// A CA certificate re-issued for the same key is fine; two keys with
	// one ID would make the ID ambiguous.
	if old, ok := t.keys[id]; ok && !old.Equal(pub) {
		return fmt.Errorf("two trusted keys have the ID %s", id)
	}
	t.keys[id] = pub
	t.cas = append(t.cas, ca)
	t.pool.AddCert(ca)
	return nil
}

func parseCAs(data []byte) ([]*x509.Certificate, error) {
	var cas []*x509.Certificate
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("PEM block %q where a CA certificate was expected", block.Type)
		}
		ca, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("CA certificate: %w", err)
		}
		cas = append(cas, ca)
	}
	if len(cas) == 0 {
		return nil, errors.New("no PEM CERTIFICATE block")
	}
	return cas, nil
}

// checkCA refuses a certificate that is not a self-signed ed25519 CA, the
// only kind of key that signs capabilities.
func checkCA(ca *x509.Certificate) error {
	if !ca.BasicConstraintsValid || !ca.IsCA {
		return fmt.Errorf("certificate %q is not a CA", ca.Subject)
	}
	if _, ok := ca.PublicKey.(ed25519.PublicKey); !ok {
		return fmt.Errorf("CA %q has a %T key, want ed25519", ca.Subject, ca.PublicKey)
	}
	if err := ca.CheckSignatureFrom(ca); err != nil {
		return fmt.Errorf("CA %q is not self-signed: %w", ca.Subject, err)
	}
	return nil
}

// CertPool returns the trusted CAs as a pool of roots (a copy).
func (t *Trust) CertPool() *x509.CertPool { return t.pool.Clone() }

// Len returns how many CA certificates are trusted.
func (t *Trust) Len() int { return len(t.cas) }
