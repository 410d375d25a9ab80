package auth

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"net/url"
	"testing"
	"time"
)

func controllerCert(t *testing.T, s *Signer) *x509.Certificate {
	t.Helper()
	k, err := NewControllerKey(func() (*Signer, error) { return s, nil }, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c, err := k.Certificate()
	if err != nil {
		t.Fatal(err)
	}
	return c.Leaf
}

func TestControllerAndNodeCertificatesAreDistinct(t *testing.T) {
	s := newTestSigner(t)
	ctl := controllerCert(t, s)
	if err := IsController(ctl); err != nil {
		t.Errorf("the controller's certificate: %v", err)
	}
	if node, err := NodeOf(ctl); err == nil {
		t.Errorf("the controller's certificate names node %q", node)
	}
	if ctl.ExtKeyUsage[0] != x509.ExtKeyUsageClientAuth || len(ctl.ExtKeyUsage) != 1 {
		t.Errorf("the controller's certificate has usages %v, want client only", ctl.ExtKeyUsage)
	}
	// A node named like the controller gets a node certificate.
	for _, node := range []string{"controller", "flashpv-controller", "node-a"} {
		leaf := nodeCert(t, s, node).Leaf
		if err := IsController(leaf); !errors.Is(err, ErrUntrustedPeer) {
			t.Errorf("node %s's certificate is a controller's: %v", node, err)
		}
	}
	if _, err := s.IssueNodeCert("flashpv-controller://controller", ctl.PublicKey, time.Hour); err == nil {
		t.Error("a node certificate issued for the controller's URI as node name")
	}
	now := time.Now()
	forged := []struct {
		name string
		tmpl *x509.Certificate
	}{
		{"the controller's URI and a node's", &x509.Certificate{Subject: pkix.Name{CommonName: controllerCN},
			URIs: []*url.URL{ControllerURI(), nodeURI("node-a")}}},
		{"the controller's URI and a DNS name", &x509.Certificate{Subject: pkix.Name{CommonName: controllerCN},
			URIs: []*url.URL{ControllerURI()}, DNSNames: []string{"node-a"}}},
		{"the controller's URI with another subject", &x509.Certificate{Subject: pkix.Name{CommonName: "node-a"},
			URIs: []*url.URL{ControllerURI()}}},
		{"another host", &x509.Certificate{Subject: pkix.Name{CommonName: controllerCN},
			URIs: []*url.URL{{Scheme: ControllerURIScheme, Host: "node-a"}}}},
	}
	for _, f := range forged {
		leaf := rawCert(t, s, f.tmpl, now.Add(-time.Minute), now.Add(time.Hour)).Leaf
		if err := IsController(leaf); err == nil {
			t.Errorf("%s: taken for the controller", f.name)
		}
	}
}

func TestServerConfigAdmitsTheController(t *testing.T) {
	s := newTestSigner(t)
	trust := newTestTrust(t, s)
	server := ServerConfig(fixedCert(nodeCert(t, s, "node-a")), fixedTrust(trust))
	k, err := NewControllerKey(func() (*Signer, error) { return s, nil }, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	res := handshake(t, server, ClientConfig(k.Certificate, fixedTrust(trust), "node-a"))
	if res.serverErr != nil || res.clientErr != nil {
		t.Fatalf("the controller's handshake: server %v, client %v", res.serverErr, res.clientErr)
	}
	if err := PeerIsController(res.serverState); err != nil {
		t.Errorf("the server sees: %v", err)
	}
	// Of a CA the node does not trust: refused.
	other, err := NewControllerKey(func() (*Signer, error) { return newTestSigner(t), nil }, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	res = handshake(t, ServerConfig(fixedCert(nodeCert(t, s, "node-a")), fixedTrust(trust)), ClientConfig(other.Certificate, fixedTrust(trust), "node-a"))
	if res.serverErr == nil {
		t.Error("a controller certificate of another CA was admitted")
	}
}

func TestDeltaCapabilities(t *testing.T) {
	s := newTestSigner(t)
	now := time.Now()
	c := testCapability(now)
	c.Kind, c.Base = KindDelta, "default.00112233445566778899aabbccddeeff"
	trust := newTestTrust(t, s)
	got, err := trust.Verify(mustSign(t, s, c), now)
	if err != nil {
		t.Fatal(err)
	}
	if err := AuthorizeDelta(got, c.SourceNode, c.TargetNode, c.Source, c.Base); err != nil {
		t.Errorf("the delta it names: %v", err)
	}
	for name, base := range map[string]string{"another base": "default.ffffffffffffffffffffffffffffffff", "no base": ""} {
		if err := AuthorizeDelta(got, c.SourceNode, c.TargetNode, c.Source, base); !errors.Is(err, ErrWrongSource) {
			t.Errorf("%s: %v, want ErrWrongSource", name, err)
		}
	}
	// A delta without a base, or another kind with one, is never signed.
	for _, bad := range []Capability{
		func() Capability { b := c; b.Base = ""; return b }(),
		func() Capability { b := c; b.Kind = "snapshot"; return b }(),
	} {
		if _, err := s.Sign(bad); !errors.Is(err, ErrForged) {
			t.Errorf("signing kind %q with base %q: %v, want ErrForged", bad.Kind, bad.Base, err)
		}
	}
	// A capability of before deltas still verifies.
	if _, err := trust.Verify(mustSign(t, s, testCapability(now)), now); err != nil {
		t.Errorf("a snapshot capability: %v", err)
	}
}
