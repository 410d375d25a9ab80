package broker

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flashpv/flashpv/pkg/transfer/auth"
)

const serverName = "flashpv-controller.flashpv.svc"

// fixture is a broker over TLS with fake Authenticate and Authorize: the
// token "node-<name>" is node <name>, "bad" is refused, "boom" fails; the
// source "snap-1" is on n1, "denied" is refused, "missing" is not found,
// "local" is on the asking node.
type fixture struct {
	signer *auth.Signer
	server *Server
	url    string
	now    time.Time

	mu         sync.Mutex
	authorized []string // nodes Authorize was asked for
	results    []string
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	signer, err := auth.NewSigner()
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{signer: signer, now: time.Now().Truncate(time.Second)}
	f.server = &Server{
		Signer: signer,
		Now:    func() time.Time { return f.now },
		Authenticate: func(_ context.Context, token string) (string, error) {
			switch {
			case token == "boom":
				return "", errors.New("TokenReview: connection refused to 10.0.0.1")
			case strings.HasPrefix(token, "node-"):
				return strings.TrimPrefix(token, "node-"), nil
			}
			return "", Errorf(CodeUnauthenticated, "the token is not valid")
		},
		Authorize: func(_ context.Context, node string, req GrantRequest) (string, string, error) {
			f.mu.Lock()
			f.authorized = append(f.authorized, node)
			f.mu.Unlock()
			switch req.Source {
			case "denied":
				return "", "", Errorf(CodeDenied, "the class forbids it")
			case "missing":
				return "", "", Errorf(CodeNotFound, "claim not found")
			case "local":
				return node, "10.0.0.2:9811", nil
			case "secret-failure":
				return "", "", errors.New("GET claim: etcd password wrong")
			}
			return "n1", "10.0.0.1:9811", nil
		},
		Record: func(r string) {
			f.mu.Lock()
			f.results = append(f.results, r)
			f.mu.Unlock()
		},
	}
	srv := httptest.NewUnstartedServer(f.server.Handler())
	srv.TLS = &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{serverCert(t, signer, serverName)}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	f.url = srv.URL
	return f
}

// seen returns what Authorize and Record were told, and forgets it.
func (f *fixture) seen() (authorized, results []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	authorized, results = f.authorized, f.results
	f.authorized, f.results = nil, nil
	return authorized, results
}

func serverCert(t *testing.T, signer *auth.Signer, name string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, err := signer.IssueServerCert([]string{name}, key.Public(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(certPEM)
	return tls.Certificate{Certificate: [][]byte{block.Bytes}, PrivateKey: key}
}

// client returns a client of the fixture that sends token.
func (f *fixture) client(t *testing.T, token string) *Client {
	t.Helper()
	file := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(file, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	trust := func() (*auth.Trust, error) { return auth.NewTrust(f.signer.CAPEM()) }
	return &Client{URL: f.url, TokenFile: file, TLS: auth.BrokerClientConfig(trust, serverName)}
}

func codeOfErr(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return ""
}

var grantReq = GrantRequest{Kind: KindSnapshot, Source: "default.snap-1", Target: "pvc-1234", ClaimNamespace: "apps", ClaimName: "data-0"}

// A grant's capability verifies with the signer's CA and names the
// authenticated node as its target.
func TestGrant(t *testing.T) {
	f := newFixture(t)
	resp, err := f.client(t, "node-n2").Grant(context.Background(), grantReq)
	if err != nil {
		t.Fatal(err)
	}
	if resp.SourceNode != "n1" || resp.Address != "10.0.0.1:9811" {
		t.Errorf("grant %+v", resp)
	}
	trust, err := auth.NewTrust(f.signer.CAPEM())
	if err != nil {
		t.Fatal(err)
	}
	c, err := trust.Verify(resp.Capability, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	want := auth.Capability{ID: c.ID, KeyID: f.signer.ID(), Kind: KindSnapshot, Source: "default.snap-1", SourceNode: "n1",
		TargetNode: "n2", Target: "pvc-1234", IssuedAt: f.now.Unix(), Expires: f.now.Add(5 * time.Minute).Unix()}
	if c != want || len(c.ID) < 32 {
		t.Errorf("capability %+v, want %+v", c, want)
	}
	authorized, results := f.seen()
	if len(authorized) != 1 || authorized[0] != "n2" {
		t.Errorf("Authorize asked for %v, want the authenticated node n2", authorized)
	}
	if len(results) != 1 || results[0] != ResultGranted {
		t.Errorf("results %v", results)
	}
	// A second grant is another capability.
	again, err := f.client(t, "node-n2").Grant(context.Background(), grantReq)
	if err != nil {
		t.Fatal(err)
	}
	if c2, _ := trust.Verify(again.Capability, time.Now()); c2.ID == c.ID {
		t.Error("two grants share a capability ID")
	}
}

// The certificate is for the authenticated node and the key sent.
func TestCertificate(t *testing.T) {
	f := newFixture(t)
	key, err := auth.NewNodeKey()
	if err != nil {
		t.Fatal(err)
	}
	der, err := key.PublicDER()
	if err != nil {
		t.Fatal(err)
	}
	certPEM, err := f.client(t, "node-n2").Certificate(context.Background(), der)
	if err != nil {
		t.Fatal(err)
	}
	if err := key.SetCertificate(certPEM); err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(certPEM)
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if node, err := auth.NodeOf(cert); err != nil || node != "n2" {
		t.Errorf("certificate for node %q (%v), want n2", node, err)
	}
	roots, _ := auth.NewTrust(f.signer.CAPEM())
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots.CertPool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("certificate does not chain to the signer's CA: %v", err)
	}
	if life := cert.NotAfter.Sub(cert.NotBefore); life < 23*time.Hour || life > 25*time.Hour+time.Minute {
		t.Errorf("certificate lifetime %v, want the default 24h", life)
	}
	if _, err := f.client(t, "node-n2").Certificate(context.Background(), []byte("not a key")); codeOfErr(err) != CodeInvalid {
		t.Errorf("garbage key: %v", err)
	}
}

// Refusals reach the client as *Error with the server's code; a failure
// that is not an *Error is Internal with nothing of its details.
func TestClientErrors(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	for _, tc := range []struct {
		name, token, source, code, result string
	}{
		{"bad token", "bad", "default.snap-1", CodeUnauthenticated, ResultUnauthenticated},
		{"authenticate fails", "boom", "default.snap-1", CodeInternal, ResultError},
		{"denied", "node-n2", "denied", CodeDenied, ResultDenied},
		{"not found", "node-n2", "missing", CodeNotFound, ResultDenied},
		{"source on this node", "node-n2", "local", CodeDenied, ResultDenied},
		{"authorize fails", "node-n2", "secret-failure", CodeInternal, ResultError},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f.seen()
			req := grantReq
			req.Source = tc.source
			_, err := f.client(t, tc.token).Grant(ctx, req)
			var e *Error
			if !errors.As(err, &e) || e.Code != tc.code {
				t.Fatalf("error %v, want code %s", err, tc.code)
			}
			if strings.Contains(e.Message, "10.0.0.1") || strings.Contains(e.Message, "password") {
				t.Errorf("internal details reach the client: %q", e.Message)
			}
			if _, results := f.seen(); len(results) != 1 || results[0] != tc.result {
				t.Errorf("results %v, want %s", results, tc.result)
			}
		})
	}
	if _, err := f.client(t, "bad").Certificate(ctx, []byte{1}); codeOfErr(err) != CodeUnauthenticated {
		t.Errorf("certificate with a bad token: %v", err)
	}
}

// The token file is read on every call: the kubelet rotates it.
func TestClientRereadsToken(t *testing.T) {
	f := newFixture(t)
	c := f.client(t, "bad")
	if _, err := c.Grant(context.Background(), grantReq); codeOfErr(err) != CodeUnauthenticated {
		t.Fatalf("bad token: %v", err)
	}
	if err := os.WriteFile(c.TokenFile, []byte("node-n3"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Grant(context.Background(), grantReq); err != nil {
		t.Fatalf("after rotation: %v", err)
	}
	if authorized, _ := f.seen(); authorized[len(authorized)-1] != "n3" {
		t.Errorf("authorized %v", authorized)
	}
}

// The client refuses to send its token in clear text or to a server its
// trust does not vouch for.
func TestClientRefusesUntrustedServer(t *testing.T) {
	f := newFixture(t)
	c := f.client(t, "node-n2")
	c.URL = strings.Replace(f.url, "https://", "http://", 1)
	if _, err := c.Grant(context.Background(), grantReq); err == nil || !strings.Contains(err.Error(), "https") {
		t.Errorf("plain http: %v", err)
	}
	other, err := auth.NewSigner()
	if err != nil {
		t.Fatal(err)
	}
	c = f.client(t, "node-n2")
	c.TLS = auth.BrokerClientConfig(func() (*auth.Trust, error) { return auth.NewTrust(other.CAPEM()) }, serverName)
	if _, err := c.Grant(context.Background(), grantReq); err == nil || codeOfErr(err) != "" {
		t.Errorf("server of another CA: %v", err)
	}
	c = f.client(t, "node-n2")
	c.TLS = auth.BrokerClientConfig(func() (*auth.Trust, error) { return auth.NewTrust(f.signer.CAPEM()) }, "someone-else.flashpv.svc")
	if _, err := c.Grant(context.Background(), grantReq); err == nil || codeOfErr(err) != "" {
		t.Errorf("server of another name: %v", err)
	}
}

// Requests the handler refuses before Authorize sees them.
func TestHandlerRefuses(t *testing.T) {
	f := newFixture(t)
	h := f.server.Handler()
	body := func(v any) string {
		b, _ := json.Marshal(v)
		return string(b)
	}
	pub := base64.StdEncoding.EncodeToString([]byte("x"))
	for _, tc := range []struct {
		name, method, path, auth, body string
		status                         int
		code                           string
	}{
		{"no token", "POST", PathGrant, "", body(grantReq), 401, CodeUnauthenticated},
		{"not bearer", "POST", PathGrant, "Basic bm9kZS1uMg==", body(grantReq), 401, CodeUnauthenticated},
		{"empty bearer", "POST", PathGrant, "Bearer ", body(grantReq), 401, CodeUnauthenticated},
		{"bad token", "POST", PathGrant, "Bearer bad", body(grantReq), 401, CodeUnauthenticated},
		{"no certificate without token", "POST", PathCertificate, "", body(CertificateRequest{PublicKey: pub}), 401, CodeUnauthenticated},
		{"body too big", "POST", PathGrant, "Bearer node-n2", `{"kind":"` + strings.Repeat("a", MaxRequestBytes) + `"}`, 400, CodeInvalid},
		{"unknown field", "POST", PathGrant, "Bearer node-n2", `{"kind":"snapshot","source":"s","target":"t","claimNamespace":"a","claimName":"b","targetNode":"n9"}`, 400, CodeInvalid},
		{"unknown field in certificate", "POST", PathCertificate, "Bearer node-n2", `{"publicKey":"` + pub + `","node":"n9"}`, 400, CodeInvalid},
		{"two objects", "POST", PathGrant, "Bearer node-n2", body(grantReq) + body(grantReq), 400, CodeInvalid},
		{"not JSON", "POST", PathGrant, "Bearer node-n2", "kind=snapshot", 400, CodeInvalid},
		{"bad kind", "POST", PathGrant, "Bearer node-n2", body(GrantRequest{Kind: "disk", Source: "s", Target: "t", ClaimNamespace: "a", ClaimName: "b"}), 400, CodeInvalid},
		{"no source", "POST", PathGrant, "Bearer node-n2", body(GrantRequest{Kind: KindVolume, Target: "t", ClaimNamespace: "a", ClaimName: "b"}), 400, CodeInvalid},
		{"long target", "POST", PathGrant, "Bearer node-n2", body(GrantRequest{Kind: KindVolume, Source: "s", Target: strings.Repeat("t", 257), ClaimNamespace: "a", ClaimName: "b"}), 400, CodeInvalid},
		{"control character", "POST", PathGrant, "Bearer node-n2", body(GrantRequest{Kind: KindVolume, Source: "s\n", Target: "t", ClaimNamespace: "a", ClaimName: "b"}), 400, CodeInvalid},
		{"bad namespace", "POST", PathGrant, "Bearer node-n2", body(GrantRequest{Kind: KindVolume, Source: "s", Target: "t", ClaimNamespace: "a.b", ClaimName: "b"}), 400, CodeInvalid},
		{"bad claim name", "POST", PathGrant, "Bearer node-n2", body(GrantRequest{Kind: KindVolume, Source: "s", Target: "t", ClaimNamespace: "a", ClaimName: "B/../c"}), 400, CodeInvalid},
		{"GET", "GET", PathGrant, "Bearer node-n2", "", 405, CodeInvalid},
		{"unknown path", "POST", "/v1/keys", "Bearer node-n2", "{}", 404, CodeNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f.seen()
			req := httptest.NewRequest(tc.method, tc.path, strings.NewReader(tc.body))
			if tc.auth != "" {
				req.Header.Set("Authorization", tc.auth)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			var e ErrorResponse
			if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil {
				t.Fatalf("answer %d %q: %v", rec.Code, rec.Body, err)
			}
			if rec.Code != tc.status || e.Code != tc.code {
				t.Errorf("answer %d %+v, want %d %s", rec.Code, e, tc.status, tc.code)
			}
			if tc.name == "body too big" && !strings.Contains(e.Message, "over 16384 bytes") {
				t.Errorf("body too big: %q", e.Message)
			}
			if authorized, _ := f.seen(); len(authorized) != 0 {
				t.Errorf("Authorize was asked")
			}
		})
	}
}

// The node a certificate is for comes from the token, never the request.
func TestCertificateForAuthenticatedNodeOnly(t *testing.T) {
	f := newFixture(t)
	key, _ := auth.NewNodeKey()
	der, _ := key.PublicDER()
	for _, token := range []string{"node-n1", "node-n2"} {
		certPEM, err := f.client(t, token).Certificate(context.Background(), der)
		if err != nil {
			t.Fatal(err)
		}
		block, _ := pem.Decode(certPEM)
		cert, _ := x509.ParseCertificate(block.Bytes)
		if node, _ := auth.NodeOf(cert); "node-"+node != token {
			t.Errorf("token %s got a certificate for %q", token, node)
		}
	}
}
