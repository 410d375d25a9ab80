package auth

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"time"
)

// IssueNodeCert issues node's certificate for pub, valid for ttl: CN and
// a flashpv-node:// URI SAN name the node, and it serves both ends of a
// transfer connection.
func (s *Signer) IssueNodeCert(node string, pub crypto.PublicKey, ttl time.Duration) ([]byte, error) {
	if !validNodeName(node) {
		return nil, fmt.Errorf("node name %q is not a DNS-1123 subdomain", node)
	}
	if ttl <= 0 {
		return nil, fmt.Errorf("certificate lifetime %v is not positive", ttl)
	}
	now := time.Now()
	tmpl := nodeTemplate(node, x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth)
	return s.issue(tmpl, pub, now.Add(-backdate), now.Add(ttl))
}

// IssueServerCert issues a certificate for the controller's own HTTPS
// endpoint, for the DNS names it is reached by. It names no node, so it
// opens no transfer.
func (s *Signer) IssueServerCert(dnsNames []string, pub crypto.PublicKey, ttl time.Duration) ([]byte, error) {
	if len(dnsNames) == 0 {
		return nil, errors.New("a server certificate needs a DNS name")
	}
	for _, n := range dnsNames {
		if !validNodeName(n) {
			return nil, fmt.Errorf("DNS name %q is not a DNS-1123 subdomain", n)
		}
	}
	if ttl <= 0 {
		return nil, fmt.Errorf("certificate lifetime %v is not positive", ttl)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: dnsNames[0]},
		DNSNames:    append([]string(nil), dnsNames...),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	return s.issue(tmpl, pub, now.Add(-backdate), now.Add(ttl))
}

func nodeTemplate(node string, usage ...x509.ExtKeyUsage) *x509.Certificate {
	return &x509.Certificate{
		Subject:     pkix.Name{CommonName: node},
		URIs:        []*url.URL{nodeURI(node)},
		ExtKeyUsage: usage,
	}
}

// issue signs the leaf tmpl for pub, valid from notBefore to notAfter (but
// not past the CA), and returns it PEM.
func (s *Signer) issue(tmpl *x509.Certificate, pub crypto.PublicKey, notBefore, notAfter time.Time) ([]byte, error) {
	if pub == nil {
		return nil, errors.New("no public key to certify")
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	tmpl.SerialNumber = serial
	tmpl.NotBefore = notBefore
	tmpl.NotAfter = notAfter
	if tmpl.NotAfter.After(s.ca.NotAfter) {
		tmpl.NotAfter = s.ca.NotAfter
	}
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	tmpl.BasicConstraintsValid = true
	der, err := x509.CreateCertificate(rand.Reader, tmpl, s.ca, pub, s.key)
	if err != nil {
		return nil, fmt.Errorf("issuing a certificate for %q: %w", tmpl.Subject.CommonName, err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
}

// randomSerial is a random positive 127-bit serial number.
func randomSerial() (*big.Int, error) {
	limit := new(big.Int).Lsh(big.NewInt(1), 127)
	n, err := rand.Int(rand.Reader, limit)
	if err != nil {
		return nil, err
	}
	return n.Add(n, big.NewInt(1)), nil
}
