package transfer

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/flashpv/flashpv/pkg/transfer/auth"
	"github.com/flashpv/flashpv/pkg/transfer/broker"
	"github.com/flashpv/flashpv/pkg/transfer/stream"
)

const (
	nodeA = "node-a"
	nodeB = "node-b"
	nodeC = "node-c"

	testSource  = "default.0123456789abcdef0123456789abcdef"
	testTarget  = "pvc-6b1c1a52-7c8e-4c3f-9f34-2a4c0e2f1d10"
	testVersion = "1718000000-3145728"

	// brokerName is the DNS name the broker's certificate carries.
	brokerName = "localhost"
	// testTimeout bounds every wait of these tests.
	testTimeout = 10 * time.Second
)

// testCluster is the controller's side: its signer (the CA and the
// capability key) and a broker over real TLS whose Authenticate maps the
// token "token-<node>" to <node> and whose Authorize sends every grant to
// the route of the moment.
type testCluster struct {
	signer *auth.Signer
	trust  func() (*auth.Trust, error)
	url    string

	mu         sync.Mutex
	sourceNode string
	address    string
	granted    []broker.GrantRequest // what Authorize was asked, in order
}

func newTestCluster(t *testing.T) *testCluster {
	t.Helper()
	signer, err := auth.NewSigner()
	if err != nil {
		t.Fatal(err)
	}
	trust, err := auth.NewTrust(signer.CAPEM())
	if err != nil {
		t.Fatal(err)
	}
	c := &testCluster{signer: signer, trust: func() (*auth.Trust, error) { return trust, nil }}
	bs := &broker.Server{
		Signer: signer,
		Authenticate: func(_ context.Context, token string) (string, error) {
			for _, n := range []string{nodeA, nodeB, nodeC} {
				if token == "token-"+n {
					return n, nil
				}
			}
			return "", broker.Errorf(broker.CodeUnauthenticated, "unknown token")
		},
		Authorize: func(_ context.Context, node string, req broker.GrantRequest) (string, string, error) {
			c.mu.Lock()
			defer c.mu.Unlock()
			if node != nodeB {
				return "", "", broker.Errorf(broker.CodeDenied, "only node-b restores here")
			}
			c.granted = append(c.granted, req)
			return c.sourceNode, c.address, nil
		},
	}
	srv := httptest.NewUnstartedServer(bs.Handler())
	srv.TLS = &tls.Config{
		Certificates: []tls.Certificate{serverCert(t, signer, brokerName)},
		MinVersion:   tls.VersionTLS13,
	}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	c.url = srv.URL
	return c
}

// route makes the broker send grants to sourceNode at address.
func (c *testCluster) route(sourceNode, address string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sourceNode, c.address = sourceNode, address
}

// grants returns what Authorize allowed, in order.
func (c *testCluster) grants() []broker.GrantRequest {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]broker.GrantRequest(nil), c.granted...)
}

// identity is node's transfer identity, its certificate already issued by
// the broker.
func (c *testCluster) identity(t *testing.T, node string) *Identity {
	t.Helper()
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("token-"+node+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	b := &broker.Client{URL: c.url, TokenFile: tokenFile, TLS: auth.BrokerClientConfig(c.trust, brokerName)}
	id, err := NewIdentity(node, b, c.trust)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	if _, err := id.Certificate(ctx); err != nil {
		t.Fatalf("certificate of %s from the broker: %v", node, err)
	}
	return id
}

// capability is a capability signed by the cluster's key to copy the test
// snapshot from node-a into testTarget on node-b, changed by mod.
func (c *testCluster) capability(t *testing.T, mod func(*auth.Capability)) string {
	t.Helper()
	return signCapability(t, c.signer, mod)
}

func signCapability(t *testing.T, s *auth.Signer, mod func(*auth.Capability)) string {
	t.Helper()
	now := time.Now()
	capa := auth.Capability{
		ID: auth.NewCapabilityID(), Kind: broker.KindSnapshot, Source: testSource,
		SourceNode: nodeA, TargetNode: nodeB, Target: testTarget,
		IssuedAt: now.Unix(), Expires: now.Add(5 * time.Minute).Unix(),
	}
	if mod != nil {
		mod(&capa)
	}
	token, err := s.Sign(capa)
	if err != nil {
		t.Fatalf("signing %+v: %v", capa, err)
	}
	return token
}

// serverCert is a certificate of s for the DNS name, on a fresh key.
func serverCert(t *testing.T, s *auth.Signer, name string) tls.Certificate {
	t.Helper()
	pub, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, err := s.IssueServerCert([]string{name}, pub, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(certPEM)
	return tls.Certificate{Certificate: [][]byte{block.Bytes}, PrivateKey: key}
}

// grantRequest asks for the test snapshot into testTarget.
func grantRequest() broker.GrantRequest {
	return broker.GrantRequest{
		Kind: broker.KindSnapshot, Source: testSource, Target: testTarget,
		ClaimNamespace: "default", ClaimName: "restored",
	}
}

// testContent is a sparse file served as the test snapshot.
type testContent struct {
	path   string
	header Header
}

// newTestContent makes a file of size bytes with random data in data and
// holes elsewhere.
func newTestContent(t *testing.T, size int64, data []stream.Extent) *testContent {
	t.Helper()
	path := filepath.Join(t.TempDir(), "snapshot.img")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	for _, e := range data {
		b := make([]byte, e.Len)
		rand.Read(b)
		if _, err := f.WriteAt(b, e.Off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	return &testContent{path: path, header: Header{
		Kind: broker.KindSnapshot, Source: testSource, Size: size,
		Mode: "filesystem", FsType: "ext4", Format: "done", Version: testVersion,
	}}
}

// smallContent is 3 MiB: data, a hole, data, a single byte, a written
// block of zeros (data Send leaves out) and a hole at the end.
func smallContent(t *testing.T) *testContent {
	t.Helper()
	c := newTestContent(t, 3<<20, []stream.Extent{
		{Off: 0, Len: 256 << 10},
		{Off: 1<<20 + 4<<10, Len: 300 << 10},
	})
	f, err := os.OpenFile(c.path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt([]byte{0xff}, 2<<20+17); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(make([]byte, 64<<10), 5<<19); err != nil {
		t.Fatal(err)
	}
	return c
}

// fakeOpener serves one content, and counts what it is asked.
type fakeOpener struct {
	content *testContent
	// gate, when set, holds every Send at its first look at the data
	// until it is closed; started is told each time one is held.
	gate    chan struct{}
	started chan struct{}

	calls  atomic.Int32
	closes atomic.Int32
}

func (o *fakeOpener) OpenTransfer(_ context.Context, kind, source string) (*Content, error) {
	o.calls.Add(1)
	h := o.content.header
	if kind != h.Kind || source != h.Source {
		return nil, &RemoteError{CodeNotFound, fmt.Sprintf("no %s %s here", kind, source)}
	}
	f, err := os.Open(o.content.path)
	if err != nil {
		return nil, err
	}
	var src stream.BlockSource = stream.FileSource(f, h.Size)
	if o.gate != nil {
		src = &gatedSource{BlockSource: src, gate: o.gate, started: o.started}
	}
	return &Content{Header: h, Data: src, Close: func() {
		f.Close()
		o.closes.Add(1)
	}}, nil
}

// gatedSource waits for its gate before it gives its first extent.
type gatedSource struct {
	stream.BlockSource
	gate    chan struct{}
	started chan struct{}
	once    sync.Once
}

func (s *gatedSource) NextData(off int64) (stream.Extent, bool, error) {
	s.once.Do(func() {
		s.started <- struct{}{}
		<-s.gate
	})
	return s.BlockSource.NextData(off)
}

// startServer serves s on a fresh 127.0.0.1 port, with a replay cache in
// a temporary directory unless s has one, and returns its address and a
// stop that waits for the server to return (also run when the test ends).
func startServer(t *testing.T, s *Server) (addr string, stop func()) {
	t.Helper()
	if s.Replay == nil {
		s.Replay = openReplay(t, filepath.Join(t.TempDir(), "replay.json"))
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.ServeListener(ctx, lis) }()
	stop = sync.OnceFunc(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("ServeListener: %v", err)
		}
	})
	t.Cleanup(stop)
	return lis.Addr().String(), stop
}

func openReplay(t *testing.T, path string) *auth.Replay {
	t.Helper()
	r, err := auth.OpenReplay(path)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// nodeTLS is id's client configuration for a server of wantNode.
func nodeTLS(id *Identity, wantNode string) *tls.Config {
	cfg := auth.ClientConfig(id.current, id.Trust, wantNode)
	cfg.NextProtos = []string{"http/1.1"}
	return cfg
}

// readBody is a ReadRequest for the test snapshot into testTarget.
func readBody(t *testing.T, token string, mod func(*ReadRequest)) []byte {
	t.Helper()
	req := ReadRequest{Capability: token, Kind: broker.KindSnapshot, Source: testSource, Target: testTarget}
	if mod != nil {
		mod(&req)
	}
	data, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// exchange posts body to addr's PathRead over one connection, TLS with cfg
// (plain TCP when cfg is nil), and returns the answer and all of its body.
// An error means no HTTP answer came.
func exchange(addr string, cfg *tls.Config, body []byte) (*http.Response, []byte, error) {
	raw, err := net.DialTimeout("tcp", addr, testTimeout)
	if err != nil {
		return nil, nil, err
	}
	defer raw.Close()
	conn := raw
	if cfg != nil {
		conn = tls.Client(raw, cfg)
	}
	if err := conn.SetDeadline(time.Now().Add(testTimeout)); err != nil {
		return nil, nil, err
	}
	req, err := http.NewRequest(http.MethodPost, "https://"+addr+PathRead, bytes.NewReader(body))
	if err != nil {
		return nil, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Close = true
	if err := req.Write(conn); err != nil {
		return nil, nil, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	return resp, data, err
}

// wantRefusal fails the test unless resp is a refusal with status and code.
func wantRefusal(t *testing.T, resp *http.Response, body []byte, err error, status int, code string) {
	t.Helper()
	if err != nil {
		t.Fatalf("no answer: %v", err)
	}
	if resp.StatusCode != status {
		t.Fatalf("status %d (%q), want %d", resp.StatusCode, body, status)
	}
	var e RemoteError
	if err := json.Unmarshal(body, &e); err != nil {
		t.Fatalf("refusal %q is not a RemoteError: %v", body, err)
	}
	if e.Code != code {
		t.Fatalf("code %q (%s), want %q", e.Code, e.Message, code)
	}
}

// wantRemoteCode fails the test unless err is a *RemoteError with code.
func wantRemoteCode(t *testing.T, err error, code string) *RemoteError {
	t.Helper()
	var re *RemoteError
	if !errors.As(err, &re) {
		t.Fatalf("error %v (%T), want a *RemoteError", err, err)
	}
	if re.Code != code {
		t.Fatalf("code %q (%s), want %q", re.Code, re.Message, code)
	}
	return re
}

// newTarget makes a file of size bytes whose first extent of garbage an
// earlier volume or attempt left behind, and returns it open.
func newTarget(t *testing.T, size int64, garbage stream.Extent) *os.File {
	t.Helper()
	f, err := os.Create(filepath.Join(t.TempDir(), "target.img"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	if garbage.Len > 0 {
		b := make([]byte, garbage.Len)
		rand.Read(b)
		if _, err := f.WriteAt(b, garbage.Off); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

// sameRange fails the test unless a and b hold the same n bytes from off.
func sameRange(t *testing.T, a, b io.ReaderAt, off, n int64) {
	t.Helper()
	x, y := make([]byte, 1<<20), make([]byte, 1<<20)
	for pos := off; pos < off+n; {
		k := min(int64(len(x)), off+n-pos)
		if _, err := a.ReadAt(x[:k], pos); err != nil {
			t.Fatalf("reading at %d: %v", pos, err)
		}
		if _, err := b.ReadAt(y[:k], pos); err != nil {
			t.Fatalf("reading at %d: %v", pos, err)
		}
		if !bytes.Equal(x[:k], y[:k]) {
			t.Fatalf("first difference at byte %d", pos+int64(firstDifference(x[:k], y[:k])))
		}
		pos += k
	}
}

func firstDifference(x, y []byte) int {
	for i := range x {
		if x[i] != y[i] {
			return i
		}
	}
	return -1
}

// waitFor fails the test unless cond holds within testTimeout.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// otherSigner is a signing key the nodes do not trust.
func otherSigner(t *testing.T) *auth.Signer {
	t.Helper()
	s, err := auth.NewSigner()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// selfSignedNodeCert is a certificate naming node, signed by its own key.
func selfSignedNodeCert(t *testing.T, node string) tls.Certificate {
	t.Helper()
	pub, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: node},
		URIs:                  []*url.URL{{Scheme: auth.NodeURIScheme, Host: node}},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// otherCANodeCert is node's certificate from a CA the nodes do not trust.
func otherCANodeCert(t *testing.T, node string) tls.Certificate {
	t.Helper()
	c, err := nodeKeyFrom(t, otherSigner(t), node).Certificate()
	if err != nil {
		t.Fatal(err)
	}
	return *c
}

// anyServer is a TLS 1.3 client configuration that presents certs and
// accepts any server: the server's refusal is what is tested.
func anyServer(certs ...tls.Certificate) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13, InsecureSkipVerify: true,
		Certificates: certs, NextProtos: []string{"http/1.1"},
	}
}

// nodeKeyFrom is a node key with node's certificate from signer.
func nodeKeyFrom(t *testing.T, signer *auth.Signer, node string) *auth.NodeKey {
	t.Helper()
	k, err := auth.NewNodeKey()
	if err != nil {
		t.Fatal(err)
	}
	certPEM, err := signer.IssueNodeCert(node, k.Public(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := k.SetCertificate(certPEM); err != nil {
		t.Fatal(err)
	}
	return k
}

// identityFrom is node's identity with a certificate of signer, trusting
// only signer.
func identityFrom(t *testing.T, signer *auth.Signer, node string) *Identity {
	t.Helper()
	trust, err := auth.NewTrust(signer.CAPEM())
	if err != nil {
		t.Fatal(err)
	}
	k := nodeKeyFrom(t, signer, node)
	return &Identity{Node: node, Trust: func() (*auth.Trust, error) { return trust, nil }, key: k}
}
