package auth

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestMutualTLS(t *testing.T) {
	s := newTestSigner(t)
	tr := newTestTrust(t, s)
	server, client := nodeCert(t, s, "node-a"), nodeCert(t, s, "node-b")
	res := handshake(t,
		ServerConfig(fixedCert(server), fixedTrust(tr)),
		ClientConfig(fixedCert(client), fixedTrust(tr), "node-a"))
	if res.serverErr != nil || res.clientErr != nil {
		t.Fatalf("handshake: server %v, client %v", res.serverErr, res.clientErr)
	}
	if v := res.serverState.Version; v != tls.VersionTLS13 {
		t.Errorf("version %x, want TLS 1.3", v)
	}
	if got, err := PeerNode(res.serverState); got != "node-b" || err != nil {
		t.Errorf("server's PeerNode = %q, %v, want node-b", got, err)
	}
	if got, err := PeerNode(res.clientState); got != "node-a" || err != nil {
		t.Errorf("client's PeerNode = %q, %v, want node-a", got, err)
	}
}

func TestMutualTLSRefused(t *testing.T) {
	s, other := newTestSigner(t), newTestSigner(t)
	tr := newTestTrust(t, s)
	now := time.Now()
	serverA, clientB := nodeCert(t, s, "node-a"), nodeCert(t, s, "node-b")
	expired := func(node string) *tls.Certificate {
		return rawCert(t, s, nodeTemplate(node, x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth),
			now.Add(-2*time.Hour), now.Add(-time.Hour))
	}
	brokerCert, err := s.IssueServerCert([]string{"node-a"}, serverA.Leaf.PublicKey, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	badCN := nodeTemplate("node-b", x509.ExtKeyUsageClientAuth)
	badCN.Subject.CommonName = "node-c"
	tls12 := &tls.Config{
		MinVersion: tls.VersionTLS12, MaxVersion: tls.VersionTLS12, InsecureSkipVerify: true,
		Certificates: []tls.Certificate{*clientB},
	}
	tests := []struct {
		name   string
		server *tls.Certificate
		client *tls.Config
		// refuser is the side that must refuse the peer with
		// ErrUntrustedPeer; "" where the TLS library refuses.
		refuser string
	}{
		{"client without a certificate", serverA,
			ClientConfig(fixedCert(&tls.Certificate{}), fixedTrust(tr), "node-a"), ""},
		{"client certificate from another CA", serverA,
			ClientConfig(fixedCert(nodeCert(t, other, "node-b")), fixedTrust(tr), "node-a"), "server"},
		{"self-signed client certificate", serverA,
			ClientConfig(fixedCert(rawCert(t, nil, nodeTemplate("node-b", x509.ExtKeyUsageClientAuth), now.Add(-time.Hour), now.Add(time.Hour))), fixedTrust(tr), "node-a"), "server"},
		{"client certificate not for clients", serverA,
			ClientConfig(fixedCert(rawCert(t, s, nodeTemplate("node-b", x509.ExtKeyUsageServerAuth), now.Add(-time.Hour), now.Add(time.Hour))), fixedTrust(tr), "node-a"), "server"},
		{"client certificate whose CN is another node", serverA,
			ClientConfig(fixedCert(rawCert(t, s, badCN, now.Add(-time.Hour), now.Add(time.Hour))), fixedTrust(tr), "node-a"), "server"},
		{"expired client certificate", serverA,
			ClientConfig(fixedCert(expired("node-b")), fixedTrust(tr), "node-a"), "server"},
		{"client's certificate fails", serverA,
			ClientConfig(func() (*tls.Certificate, error) { return nil, ErrNoCertificate }, fixedTrust(tr), "node-a"), ""},
		{"TLS 1.2 client", serverA, tls12, ""},
		{"server certificate naming the wrong node", nodeCert(t, s, "node-c"),
			ClientConfig(fixedCert(clientB), fixedTrust(tr), "node-a"), "client"},
		{"server certificate from another CA", nodeCert(t, other, "node-a"),
			ClientConfig(fixedCert(clientB), fixedTrust(tr), "node-a"), "client"},
		{"expired server certificate", expired("node-a"),
			ClientConfig(fixedCert(clientB), fixedTrust(tr), "node-a"), "client"},
		{"server certificate not for servers", rawCert(t, s, nodeTemplate("node-a", x509.ExtKeyUsageClientAuth), now.Add(-time.Hour), now.Add(time.Hour)),
			ClientConfig(fixedCert(clientB), fixedTrust(tr), "node-a"), "client"},
		{"server with the controller's certificate", certFromPEM(t, brokerCert, serverA),
			ClientConfig(fixedCert(clientB), fixedTrust(tr), "node-a"), "client"},
		{"client wanting no node", serverA,
			ClientConfig(fixedCert(clientB), fixedTrust(tr), ""), "client"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := handshake(t, ServerConfig(fixedCert(tt.server), fixedTrust(tr)), tt.client)
			if res.serverErr == nil || res.clientErr == nil {
				t.Fatalf("handshake: server %v, client %v; want both to fail", res.serverErr, res.clientErr)
			}
			refusal := map[string]error{"server": res.serverErr, "client": res.clientErr}[tt.refuser]
			if tt.refuser != "" && !errors.Is(refusal, ErrUntrustedPeer) {
				t.Errorf("%s's error %v, want ErrUntrustedPeer", tt.refuser, refusal)
			}
		})
	}
}

// certFromPEM pairs certPEM with the private key of key.
func certFromPEM(t *testing.T, certPEM []byte, key *tls.Certificate) *tls.Certificate {
	t.Helper()
	block, _ := pem.Decode(certPEM)
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Certificate{Certificate: [][]byte{block.Bytes}, PrivateKey: key.PrivateKey, Leaf: leaf}
}

func TestMutualTLSFollowsTrustRotation(t *testing.T) {
	old, cur := newTestSigner(t), newTestSigner(t)
	dir := t.TempDir()
	write(t, filepath.Join(dir, "old.pem"), old.CAPEM())
	write(t, filepath.Join(dir, "cur.pem"), cur.CAPEM())
	trust := NewTrustDir(dir, 0).Current
	server := ServerConfig(fixedCert(nodeCert(t, cur, "node-a")), trust)
	oldClient := ClientConfig(fixedCert(nodeCert(t, old, "node-b")), trust, "node-a")
	if res := handshake(t, server, oldClient); res.serverErr != nil || res.clientErr != nil {
		t.Fatalf("before the rotation: server %v, client %v", res.serverErr, res.clientErr)
	}
	if err := os.Remove(filepath.Join(dir, "old.pem")); err != nil {
		t.Fatal(err)
	}
	if res := handshake(t, server, oldClient); res.serverErr == nil {
		t.Errorf("after the rotation, the server accepted a client of the removed CA")
	}
}

func TestBrokerClientConfig(t *testing.T) {
	s, other := newTestSigner(t), newTestSigner(t)
	tr := newTestTrust(t, s)
	const name = "flashpv-controller.kube-system.svc"
	brokerCert := func(signer *Signer, names ...string) *tls.Certificate {
		pub, key, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		certPEM, err := signer.IssueServerCert(names, pub, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return certFromPEM(t, certPEM, &tls.Certificate{PrivateKey: key})
	}
	tests := []struct {
		name       string
		cert       *tls.Certificate
		serverName string
		wantErr    bool
	}{
		{"the controller", brokerCert(s, name), name, false},
		{"another name", brokerCert(s, "other.kube-system.svc"), name, true},
		{"another CA", brokerCert(other, name), name, true},
		{"a node's certificate", nodeCert(t, s, "node-a"), name, true},
		{"no server name", brokerCert(s, name), "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			server := &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{*tt.cert}}
			res := handshake(t, server, BrokerClientConfig(fixedTrust(tr), tt.serverName))
			if gotErr := res.clientErr != nil; gotErr != tt.wantErr {
				t.Errorf("client error %v, want an error: %v", res.clientErr, tt.wantErr)
			}
		})
	}
	t.Run("TLS 1.2 server", func(t *testing.T) {
		server := &tls.Config{MaxVersion: tls.VersionTLS12, Certificates: []tls.Certificate{*brokerCert(s, name)}}
		if res := handshake(t, server, BrokerClientConfig(fixedTrust(tr), name)); res.clientErr == nil {
			t.Errorf("handshake with a TLS 1.2 server succeeded")
		}
	})
}

func TestNodeOf(t *testing.T) {
	s := newTestSigner(t)
	now := time.Now()
	cert := func(tmpl *x509.Certificate) *x509.Certificate {
		return rawCert(t, s, tmpl, now.Add(-time.Hour), now.Add(time.Hour)).Leaf
	}
	withCN := func(node, cn string) *x509.Certificate {
		tmpl := nodeTemplate(node, x509.ExtKeyUsageClientAuth)
		tmpl.Subject = pkix.Name{CommonName: cn}
		return cert(tmpl)
	}
	withURI := func(uri string) *x509.Certificate {
		tmpl := nodeTemplate("node-a", x509.ExtKeyUsageClientAuth)
		u := *tmpl.URIs[0]
		tmpl.URIs[0] = &u
		if err := tmpl.URIs[0].UnmarshalBinary([]byte(uri)); err != nil {
			t.Fatal(err)
		}
		return cert(tmpl)
	}
	twoURIs := nodeTemplate("node-a", x509.ExtKeyUsageClientAuth)
	twoURIs.URIs = append(twoURIs.URIs, nodeURI("node-b"))
	tests := []struct {
		name    string
		cert    *x509.Certificate
		want    string
		wantErr bool
	}{
		{"node certificate", nodeCert(t, s, "node-a.example").Leaf, "node-a.example", false},
		{"nil", nil, "", true},
		{"CN disagrees", withCN("node-a", "node-b"), "", true},
		{"other scheme", withURI("spiffe://node-a"), "", true},
		{"port", withURI("flashpv-node://node-a:443"), "", true},
		{"path", withURI("flashpv-node://node-a/x"), "", true},
		{"user", withURI("flashpv-node://u@node-a"), "", true},
		{"two URIs", cert(twoURIs), "", true},
		{"no URI", cert(&x509.Certificate{Subject: pkix.Name{CommonName: "node-a"}}), "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := NodeOf(tt.cert)
			if got != tt.want || (err != nil) != tt.wantErr {
				t.Errorf("NodeOf = %q, %v; want %q, error %v", got, err, tt.want, tt.wantErr)
			}
			if err != nil && !errors.Is(err, ErrUntrustedPeer) {
				t.Errorf("NodeOf error %v is not ErrUntrustedPeer", err)
			}
		})
	}
}
