package auth

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"
)

func parsePEM(t *testing.T, data []byte) *x509.Certificate {
	t.Helper()
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" {
		t.Fatalf("no PEM certificate in %q", data)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func TestNewSigner(t *testing.T) {
	s := newTestSigner(t)
	der, err := x509.MarshalPKIXPublicKey(s.key.Public())
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(der)
	if want := hex.EncodeToString(sum[:])[:16]; s.ID() != want {
		t.Errorf("ID = %q, want %q", s.ID(), want)
	}
	ca := parsePEM(t, s.CAPEM())
	if want := "flashpv transfer CA " + s.ID(); ca.Subject.CommonName != want {
		t.Errorf("CA CN = %q, want %q", ca.Subject.CommonName, want)
	}
	if !ca.IsCA || ca.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Errorf("CA: IsCA %v, key usage %b; want a CA that signs certificates", ca.IsCA, ca.KeyUsage)
	}
	if life := ca.NotAfter.Sub(time.Now()); life < 9*365*24*time.Hour || life > 11*365*24*time.Hour {
		t.Errorf("CA valid for %v more, want 10 years", life)
	}
	if newTestSigner(t).ID() == s.ID() {
		t.Errorf("two signers have the ID %s", s.ID())
	}
}

func TestLoadSigner(t *testing.T) {
	s, other := newTestSigner(t), newTestSigner(t)
	keyPEM, err := s.EncodeKey()
	if err != nil {
		t.Fatal(err)
	}
	otherKeyPEM, err := other.EncodeKey()
	if err != nil {
		t.Fatal(err)
	}
	leafPEM, err := s.IssueNodeCert("node-a", s.key.Public(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	t.Run("round trip", func(t *testing.T) {
		loaded, err := LoadSigner(keyPEM, s.CAPEM())
		if err != nil {
			t.Fatalf("LoadSigner: %v", err)
		}
		if loaded.ID() != s.ID() {
			t.Errorf("ID = %q, want %q", loaded.ID(), s.ID())
		}
		now := time.Now()
		if _, err := newTestTrust(t, s).Verify(mustSign(t, loaded, testCapability(now)), now); err != nil {
			t.Errorf("a token of the loaded signer: Verify = %v", err)
		}
	})
	tests := []struct {
		name       string
		key, caPEM []byte
	}{
		{"key of another CA", otherKeyPEM, s.CAPEM()},
		{"no key", nil, s.CAPEM()},
		{"garbage key", []byte("garbage"), s.CAPEM()},
		{"certificate as key", s.CAPEM(), s.CAPEM()},
		{"no CA", keyPEM, nil},
		{"key as CA", keyPEM, keyPEM},
		{"leaf as CA", keyPEM, leafPEM},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := LoadSigner(tt.key, tt.caPEM); err == nil {
				t.Errorf("LoadSigner succeeded, want an error")
			}
		})
	}
}

func TestIssueNodeCert(t *testing.T) {
	s := newTestSigner(t)
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	certPEM, err := s.IssueNodeCert("node-a.example", pub, time.Hour)
	if err != nil {
		t.Fatalf("IssueNodeCert: %v", err)
	}
	cert := parsePEM(t, certPEM)
	if err := cert.CheckSignatureFrom(s.ca); err != nil {
		t.Errorf("not signed by the CA: %v", err)
	}
	if cert.Subject.CommonName != "node-a.example" {
		t.Errorf("CN = %q", cert.Subject.CommonName)
	}
	if want := (&url.URL{Scheme: "flashpv-node", Host: "node-a.example"}); len(cert.URIs) != 1 || *cert.URIs[0] != *want {
		t.Errorf("URIs = %v, want %v", cert.URIs, want)
	}
	wantUsage := []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	if !slices.Equal(cert.ExtKeyUsage, wantUsage) || cert.IsCA {
		t.Errorf("ExtKeyUsage = %v, IsCA %v; want %v, not a CA", cert.ExtKeyUsage, cert.IsCA, wantUsage)
	}
	if d := cert.NotBefore.Sub(now.Add(-time.Minute)); d < -2*time.Second || d > 2*time.Second {
		t.Errorf("NotBefore = %v, want a minute before %v", cert.NotBefore, now)
	}
	if d := cert.NotAfter.Sub(now.Add(time.Hour)); d < -2*time.Second || d > 2*time.Second {
		t.Errorf("NotAfter = %v, want an hour after %v", cert.NotAfter, now)
	}
	again := parsePEM(t, must(t)(s.IssueNodeCert("node-a.example", pub, time.Hour)))
	if again.SerialNumber.Cmp(cert.SerialNumber) == 0 {
		t.Errorf("two certificates have the serial %v", cert.SerialNumber)
	}
}

func TestIssueRefuses(t *testing.T) {
	s := newTestSigner(t)
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		node string
		ttl  time.Duration
		ok   bool
	}{
		{"plain", "node-1", time.Hour, true},
		{"subdomain", "node-1.zone-a.example", time.Hour, true},
		{"longest name", strings.Repeat("a.", 126) + "a", time.Hour, true},
		{"empty", "", time.Hour, false},
		{"upper case", "Node-1", time.Hour, false},
		{"underscore", "node_1", time.Hour, false},
		{"leading hyphen", "-node", time.Hour, false},
		{"trailing hyphen", "node-", time.Hour, false},
		{"empty label", "node..a", time.Hour, false},
		{"trailing dot", "node.", time.Hour, false},
		{"slash", "node/a", time.Hour, false},
		{"port", "node:1", time.Hour, false},
		{"too long", strings.Repeat("a.", 126) + "ab", time.Hour, false},
		{"no lifetime", "node-1", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := s.IssueNodeCert(tt.node, pub, tt.ttl)
			if (err == nil) != tt.ok {
				t.Errorf("IssueNodeCert(%q) = %v, want ok %v", tt.node, err, tt.ok)
			}
			_, err = s.IssueServerCert([]string{tt.node}, pub, tt.ttl)
			if (err == nil) != tt.ok {
				t.Errorf("IssueServerCert(%q) = %v, want ok %v", tt.node, err, tt.ok)
			}
		})
	}
	if _, err := s.IssueServerCert(nil, pub, time.Hour); err == nil {
		t.Errorf("IssueServerCert without names succeeded")
	}
	if _, err := s.IssueNodeCert("node-1", nil, time.Hour); err == nil {
		t.Errorf("IssueNodeCert without a key succeeded")
	}
}

func TestIssueServerCert(t *testing.T) {
	s := newTestSigner(t)
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	names := []string{"flashpv-controller.kube-system.svc", "flashpv-controller"}
	cert := parsePEM(t, must(t)(s.IssueServerCert(names, pub, time.Hour)))
	if !slices.Equal(cert.DNSNames, names) || len(cert.URIs) != 0 {
		t.Errorf("DNS names %v, URIs %v; want %v and no URI", cert.DNSNames, cert.URIs, names)
	}
	if !slices.Equal(cert.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}) {
		t.Errorf("ExtKeyUsage = %v, want server only", cert.ExtKeyUsage)
	}
}

// must(t)(f()) is what f returned, or fails the test.
func must(t *testing.T) func([]byte, error) []byte {
	return func(b []byte, err error) []byte {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
}
