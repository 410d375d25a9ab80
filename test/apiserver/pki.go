package apiserver

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// pki is what the API server and its admin client need: a CA, the
// server's certificate for 127.0.0.1, an admin client certificate in
// system:masters, and the ServiceAccount token signing key.
type pki struct {
	caPEM                 []byte
	adminCert, adminKey   []byte
	caFile                string
	serverCert, serverKey string
	serviceAccountKey     string // private key: signs, and its public half verifies
}

func newKey() (*ecdsa.PrivateKey, []byte, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	der, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		return nil, nil, err
	}
	return k, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), nil
}

func certPEM(tmpl, parent *x509.Certificate, pub any, signer *ecdsa.PrivateKey) ([]byte, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return nil, err
	}
	tmpl.SerialNumber = serial
	tmpl.NotBefore = time.Now().Add(-time.Hour)
	tmpl.NotAfter = time.Now().Add(24 * time.Hour)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
}

// newPKI writes the files the API server reads into dir.
func newPKI(dir string) (*pki, error) {
	caKey, _, err := newKey()
	if err != nil {
		return nil, err
	}
	caTmpl := &x509.Certificate{Subject: pkix.Name{CommonName: "flashpv-test-ca"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	caPEM, err := certPEM(caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(caPEM)
	ca, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, err
	}
	leaf := func(tmpl *x509.Certificate) (certOut, keyOut []byte, err error) {
		k, keyPEM, err := newKey()
		if err != nil {
			return nil, nil, err
		}
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
		c, err := certPEM(tmpl, ca, k.Public(), caKey)
		return c, keyPEM, err
	}
	serverCert, serverKey, err := leaf(&x509.Certificate{Subject: pkix.Name{CommonName: "kube-apiserver"},
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	if err != nil {
		return nil, err
	}
	adminCert, adminKey, err := leaf(&x509.Certificate{Subject: pkix.Name{CommonName: "flashpv-test-admin", Organization: []string{"system:masters"}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	if err != nil {
		return nil, err
	}
	_, saKey, err := newKey()
	if err != nil {
		return nil, err
	}
	p := &pki{caPEM: caPEM, adminCert: adminCert, adminKey: adminKey,
		caFile: filepath.Join(dir, "ca.crt"), serverCert: filepath.Join(dir, "server.crt"), serverKey: filepath.Join(dir, "server.key"),
		serviceAccountKey: filepath.Join(dir, "sa.key")}
	for path, data := range map[string][]byte{p.caFile: caPEM, p.serverCert: serverCert, p.serverKey: serverKey, p.serviceAccountKey: saKey} {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			return nil, err
		}
	}
	return p, nil
}
