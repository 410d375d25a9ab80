package auth

import (
	"crypto/ed25519"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"testing"
	"time"
)

func TestNodeKeyCertificate(t *testing.T) {
	s, other := newTestSigner(t), newTestSigner(t)
	k, err := NewNodeKey()
	if err != nil {
		t.Fatal(err)
	}
	der, err := k.PublicDER()
	if err != nil {
		t.Fatal(err)
	}
	if pub, err := x509.ParsePKIXPublicKey(der); err != nil || !k.key.Public().(ed25519.PublicKey).Equal(pub) {
		t.Errorf("PublicDER does not parse back to Public: %v", err)
	}
	now := time.Now()
	if _, err := k.Certificate(); !errors.Is(err, ErrNoCertificate) {
		t.Errorf("no certificate yet: Certificate = %v, want ErrNoCertificate", err)
	}
	if !k.NeedsRenewal(now) {
		t.Errorf("no certificate yet: NeedsRenewal = false")
	}

	otherKey, err := NewNodeKey()
	if err != nil {
		t.Fatal(err)
	}
	refused := []struct {
		name    string
		certPEM []byte
	}{
		{"another key's", must(t)(s.IssueNodeCert("node-a", otherKey.Public(), time.Hour))},
		{"not a node's", must(t)(s.IssueServerCert([]string{"node-a"}, k.Public(), time.Hour))},
		{"expired", must(t)(s.issue(nodeTemplate("node-a", x509.ExtKeyUsageClientAuth), k.Public(), now.Add(-2*time.Hour), now.Add(-time.Hour)))},
		{"garbage", []byte("garbage")},
		{"a key", must(t)(s.EncodeKey())},
	}
	for _, tt := range refused {
		t.Run(tt.name, func(t *testing.T) {
			if err := k.SetCertificate(tt.certPEM); err == nil {
				t.Errorf("SetCertificate succeeded, want an error")
			}
			if _, err := k.Certificate(); !errors.Is(err, ErrNoCertificate) {
				t.Errorf("Certificate = %v after a refused one, want ErrNoCertificate", err)
			}
		})
	}

	// A certificate from an untrusted CA is the handshake's business.
	if err := k.SetCertificate(must(t)(other.IssueNodeCert("node-a", k.Public(), time.Hour))); err != nil {
		t.Fatalf("SetCertificate: %v", err)
	}
	if err := k.SetCertificate(must(t)(s.IssueNodeCert("node-a", k.Public(), time.Hour))); err != nil {
		t.Fatalf("SetCertificate: %v", err)
	}
	cert, err := k.Certificate()
	if err != nil {
		t.Fatalf("Certificate: %v", err)
	}
	if err := cert.Leaf.CheckSignatureFrom(s.ca); err != nil {
		t.Errorf("Certificate is not the latest one set: %v", err)
	}
}

func TestNodeKeyNeedsRenewal(t *testing.T) {
	s := newTestSigner(t)
	k, err := NewNodeKey()
	if err != nil {
		t.Fatal(err)
	}
	if err := k.SetCertificate(must(t)(s.IssueNodeCert("node-a", k.Public(), 2*time.Hour))); err != nil {
		t.Fatal(err)
	}
	leaf := k.cert.Leaf
	half := leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore) / 2)
	tests := []struct {
		name string
		now  time.Time
		want bool
	}{
		{"fresh", leaf.NotBefore.Add(time.Minute), false},
		{"just before half", half.Add(-time.Second), false},
		{"at half", half, true},
		{"expired", leaf.NotAfter.Add(time.Second), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := k.NeedsRenewal(tt.now); got != tt.want {
				t.Errorf("NeedsRenewal = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestNodeKeyCertificateExpires(t *testing.T) {
	s := newTestSigner(t)
	k, err := NewNodeKey()
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	expired := rawCert(t, s, nodeTemplate("node-a", x509.ExtKeyUsageClientAuth), now.Add(-2*time.Hour), now.Add(-time.Hour))
	// Set as SetCertificate would have, while it was still valid.
	k.cert = &tls.Certificate{Certificate: expired.Certificate, PrivateKey: k.key, Leaf: expired.Leaf}
	if _, err := k.Certificate(); !errors.Is(err, ErrNoCertificate) {
		t.Errorf("expired certificate: Certificate = %v, want ErrNoCertificate", err)
	}
}
