package auth

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"net/url"
	"sync"
	"time"
)

// The cluster controller gives nodes orders (moving a volume) over their
// transfer servers. It proves who it is with a certificate of its own
// kind: its one URI SAN is ControllerURI, a scheme no node certificate
// has. IssueNodeCert makes only flashpv-node:// URIs of a valid node name,
// and the broker's certificate endpoint calls nothing else, so no node
// can obtain it; NodeOf refuses it, so it opens no transfer either.

const (
	// ControllerURIScheme is the scheme of the controller's URI SAN.
	ControllerURIScheme = "flashpv-controller"
	// controllerCN is the controller certificate's subject.
	controllerCN = "flashpv controller"
)

// ControllerURI is the one URI SAN of a controller certificate.
func ControllerURI() *url.URL { return &url.URL{Scheme: ControllerURIScheme, Host: "controller"} }

// IssueControllerCert issues the controller's client certificate for pub,
// valid for ttl. Only the controller calls it, for a key of its own.
func (s *Signer) IssueControllerCert(pub crypto.PublicKey, ttl time.Duration) ([]byte, error) {
	if ttl <= 0 {
		return nil, fmt.Errorf("certificate lifetime %v is not positive", ttl)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		Subject: pkix.Name{CommonName: controllerCN},
		URIs:    []*url.URL{ControllerURI()},
		// A client only: it serves nothing a node would connect to.
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	return s.issue(tmpl, pub, now.Add(-backdate), now.Add(ttl))
}

// IsController checks that a leaf certificate is a controller
// certificate: one URI SAN, ControllerURI, and no DNS names or other
// identities. It does not check who issued it.
func IsController(cert *x509.Certificate) error {
	if cert == nil {
		return fmt.Errorf("%w: no certificate", ErrUntrustedPeer)
	}
	if len(cert.URIs) != 1 || cert.URIs[0].String() != ControllerURI().String() {
		return fmt.Errorf("%w: not a controller certificate", ErrUntrustedPeer)
	}
	if len(cert.DNSNames) > 0 || len(cert.IPAddresses) > 0 || len(cert.EmailAddresses) > 0 || cert.Subject.CommonName != controllerCN {
		return fmt.Errorf("%w: a controller certificate names nothing else", ErrUntrustedPeer)
	}
	return nil
}

// PeerIsController tells whether the TLS peer is the controller. Only
// meaningful on a connection whose handshake verified the certificate.
func PeerIsController(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return fmt.Errorf("%w: peer sent no certificate", ErrUntrustedPeer)
	}
	return IsController(cs.PeerCertificates[0])
}

// ControllerKey is the controller's own key for giving orders, made in
// memory, and its certificate, issued by the controller's Signer and
// renewed past half its lifetime.
type ControllerKey struct {
	signer func() (*Signer, error)
	ttl    time.Duration
	key    ed25519.PrivateKey

	mu   sync.Mutex
	cert *tls.Certificate
}

// NewControllerKey makes a key whose certificates signer issues, each
// valid for ttl (an hour when 0). signer is asked at each renewal, so a
// rotated key is used from then on.
func NewControllerKey(signer func() (*Signer, error), ttl time.Duration) (*ControllerKey, error) {
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	if ttl <= 0 {
		ttl = time.Hour
	}
	return &ControllerKey{signer: signer, ttl: ttl, key: key}, nil
}

// Certificate returns the current certificate, issuing one first when
// there is none or it is past half its lifetime.
func (k *ControllerKey) Certificate() (*tls.Certificate, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	now := time.Now()
	if c := k.cert; c != nil && now.Before(c.Leaf.NotBefore.Add(c.Leaf.NotAfter.Sub(c.Leaf.NotBefore)/2)) {
		return c, nil
	}
	s, err := k.signer()
	if err != nil {
		return nil, err
	}
	certPEM, err := s.IssueControllerCert(k.key.Public(), k.ttl)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(certPEM)
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, err
	}
	k.cert = &tls.Certificate{Certificate: [][]byte{block.Bytes}, PrivateKey: k.key, Leaf: leaf}
	return k.cert, nil
}
