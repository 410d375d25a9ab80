package auth

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"io"
	"net"
	"testing"
	"time"
)

func newTestSigner(t *testing.T) *Signer {
	t.Helper()
	s, err := NewSigner()
	if err != nil {
		t.Fatalf("NewSigner: %v", err)
	}
	return s
}

func newTestTrust(t *testing.T, signers ...*Signer) *Trust {
	t.Helper()
	var pems [][]byte
	for _, s := range signers {
		pems = append(pems, s.CAPEM())
	}
	tr, err := NewTrust(pems...)
	if err != nil {
		t.Fatalf("NewTrust: %v", err)
	}
	return tr
}

// testCapability is a valid capability issued at now.
func testCapability(now time.Time) Capability {
	return Capability{
		ID:         NewCapabilityID(),
		Kind:       "snapshot",
		Source:     "snap-1",
		SourceNode: "node-a",
		TargetNode: "node-b",
		Target:     "pvc-1234",
		IssuedAt:   now.Unix(),
		Expires:    now.Add(10 * time.Minute).Unix(),
	}
}

func mustSign(t *testing.T, s *Signer, c Capability) string {
	t.Helper()
	token, err := s.Sign(c)
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}
	return token
}

// nodeCert is node's certificate from s on a fresh NodeKey.
func nodeCert(t *testing.T, s *Signer, node string) *tls.Certificate {
	t.Helper()
	k, err := NewNodeKey()
	if err != nil {
		t.Fatal(err)
	}
	certPEM, err := s.IssueNodeCert(node, k.Public(), time.Hour)
	if err != nil {
		t.Fatalf("IssueNodeCert: %v", err)
	}
	if err := k.SetCertificate(certPEM); err != nil {
		t.Fatalf("SetCertificate: %v", err)
	}
	cert, err := k.Certificate()
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// rawCert is a certificate from the template tmpl on a fresh key, signed by
// s (or self-signed if s is nil), bypassing the checks of IssueNodeCert and
// NodeKey, to make the certificates they would refuse.
func rawCert(t *testing.T, s *Signer, tmpl *x509.Certificate, notBefore, notAfter time.Time) *tls.Certificate {
	t.Helper()
	pub, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	var der []byte
	if s != nil {
		certPEM, err := s.issue(tmpl, pub, notBefore, notAfter)
		if err != nil {
			t.Fatal(err)
		}
		block, _ := pem.Decode(certPEM)
		der = block.Bytes
	} else {
		serial, err := randomSerial()
		if err != nil {
			t.Fatal(err)
		}
		tmpl.SerialNumber, tmpl.NotBefore, tmpl.NotAfter = serial, notBefore, notAfter
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
		der, err = x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, key)
		if err != nil {
			t.Fatal(err)
		}
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

func fixedCert(c *tls.Certificate) func() (*tls.Certificate, error) {
	return func() (*tls.Certificate, error) { return c, nil }
}

func fixedTrust(tr *Trust) func() (*Trust, error) {
	return func() (*Trust, error) { return tr, nil }
}

type handshakeResult struct {
	serverErr, clientErr     error
	serverState, clientState tls.ConnectionState
}

// handshake connects a client and a server over loopback TCP (whose
// buffers, unlike net.Pipe's, let a side send its alert while the other
// still writes). Each side's error covers its handshake and a one-byte
// exchange after it: in TLS 1.3 the client's handshake ends before the
// server has checked its certificate, so a refusal only reaches the client
// when it reads.
func handshake(t *testing.T, serverCfg, clientCfg *tls.Config) handshakeResult {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	deadline := time.Now().Add(10 * time.Second)
	var res handshakeResult
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			res.serverErr = err
			return
		}
		_ = c.SetDeadline(deadline)
		srv := tls.Server(c, serverCfg)
		defer srv.Close()
		res.serverErr = srv.Handshake()
		if res.serverErr == nil {
			res.serverState = srv.ConnectionState()
			_, res.serverErr = srv.Write([]byte{1})
		}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(deadline)
	cli := tls.Client(c, clientCfg)
	res.clientErr = cli.Handshake()
	if res.clientErr == nil {
		res.clientState = cli.ConnectionState()
		var b [1]byte
		_, res.clientErr = io.ReadFull(cli, b[:])
	}
	cli.Close()
	<-done
	return res
}
