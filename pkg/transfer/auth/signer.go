package auth

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"time"
)

const (
	caValidity   = 10 * 365 * 24 * time.Hour
	caNamePrefix = "flashpv transfer CA "
	// backdate covers nodes whose clock is a little behind the controller's.
	backdate = time.Minute
)

// Signer is the controller's ed25519 key: the CA of the node certificates
// and the signer of capabilities.
type Signer struct {
	key   ed25519.PrivateKey
	ca    *x509.Certificate
	caPEM []byte
	id    string
}

// NewSigner makes a fresh random key and its self-signed CA certificate.
func NewSigner() (*Signer, error) {
	pub, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	id, err := KeyID(pub)
	if err != nil {
		return nil, err
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: caNamePrefix + id},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(caValidity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		// Leaves only: no intermediate CA can chain to this one.
		MaxPathLenZero: true,
		KeyUsage:       x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, key)
	if err != nil {
		return nil, fmt.Errorf("creating the CA certificate: %w", err)
	}
	return newSigner(key, der)
}

// LoadSigner reads a Signer from what EncodeKey and CAPEM produced, and
// checks that the certificate is the key's CA certificate.
func LoadSigner(keyPEM, caPEM []byte) (*Signer, error) {
	block, _ := pem.Decode(keyPEM)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, errors.New("signing key: no PEM PRIVATE KEY block")
	}
	parsed, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("signing key: %w", err)
	}
	key, ok := parsed.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("signing key is a %T, want ed25519", parsed)
	}
	block, _ = pem.Decode(caPEM)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("CA certificate: no PEM CERTIFICATE block")
	}
	return newSigner(key, block.Bytes)
}

func newSigner(key ed25519.PrivateKey, caDER []byte) (*Signer, error) {
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, fmt.Errorf("CA certificate: %w", err)
	}
	if err := checkCA(ca); err != nil {
		return nil, err
	}
	if !key.Public().(ed25519.PublicKey).Equal(ca.PublicKey) {
		return nil, errors.New("the CA certificate is not the signing key's")
	}
	id, err := KeyID(key.Public())
	if err != nil {
		return nil, err
	}
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	return &Signer{key: key, ca: ca, caPEM: caPEM, id: id}, nil
}

// KeyID names a public key: the first 16 hex digits of the SHA-256 of its
// PKIX DER encoding.
func KeyID(pub crypto.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:8]), nil
}

// ID is the signer's key ID, which capabilities name as "kid".
func (s *Signer) ID() string { return s.id }

// EncodeKey returns the private key, PKCS#8 PEM.
func (s *Signer) EncodeKey() ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(s.key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// CAPEM returns the CA certificate, PEM.
func (s *Signer) CAPEM() []byte {
	return append([]byte(nil), s.caPEM...)
}
