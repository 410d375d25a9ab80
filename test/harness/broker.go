package harness

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"encoding/pem"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flashpv/flashpv/pkg/config"
	"github.com/flashpv/flashpv/pkg/transfer/auth"
	"github.com/flashpv/flashpv/pkg/transfer/broker"
)

// Broker is a transfer broker for tests: the real broker server and
// signer, with the Kubernetes checks (TokenReview, the claim's data source
// and selected node) replaced by a token file per node and a table of
// where each source lives. The cluster controller's own checks are tested
// in pkg/clustercontroller and end to end.
type Broker struct {
	URL      string
	Signer   *auth.Signer
	TrustDir string

	dir     string
	mu      sync.Mutex
	sources map[string]string // source ID -> node
	servers map[string]string // node -> transfer address
}

// StartBroker serves a broker on 127.0.0.1 until the test ends.
func StartBroker(t testing.TB) *Broker {
	t.Helper()
	signer, err := auth.NewSigner()
	if err != nil {
		t.Fatal(err)
	}
	b := &Broker{Signer: signer, dir: t.TempDir(), sources: map[string]string{}, servers: map[string]string{}}
	b.TrustDir = filepath.Join(b.dir, "trust")
	if err := os.MkdirAll(b.TrustDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(b.TrustDir, "ca-"+signer.ID()+".pem"), signer.CAPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, err := signer.IssueServerCert([]string{"localhost"}, key.Public(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(certPEM)
	srv := &broker.Server{Signer: signer, Authenticate: b.authenticate, Authorize: b.authorize}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: srv.Handler(), TLSConfig: &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{{Certificate: [][]byte{blk.Bytes}, PrivateKey: key}},
	}}
	go hs.ServeTLS(lis, "", "")
	t.Cleanup(func() { hs.Close() })
	// By address: a VM's guest may not resolve "localhost". The
	// certificate's name is checked as BrokerName.
	b.URL = "https://" + lis.Addr().String()
	return b
}

// Node returns the transfer options of a node plugin named node that
// serves on a free loopback port, and registers that address.
func (b *Broker) Node(t testing.TB, node string) config.Transfer {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	token := filepath.Join(b.dir, "token-"+node)
	if err := os.WriteFile(token, []byte("node:"+node), 0o600); err != nil {
		t.Fatal(err)
	}
	b.mu.Lock()
	b.servers[node] = addr
	b.mu.Unlock()
	return config.Transfer{Address: addr, Broker: b.URL, BrokerName: "localhost", TokenFile: token, TrustDir: b.TrustDir,
		MaxConcurrent: 2, AbandonAfter: time.Hour}
}

// Locate says which node holds a snapshot or volume.
func (b *Broker) Locate(source, node string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.sources[source] = node
}

func (b *Broker) authenticate(_ context.Context, token string) (string, error) {
	node, ok := strings.CutPrefix(token, "node:")
	if !ok || node == "" {
		return "", broker.Errorf(broker.CodeUnauthenticated, "unknown token")
	}
	return node, nil
}

func (b *Broker) authorize(_ context.Context, node string, req broker.GrantRequest) (string, string, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	src, ok := b.sources[req.Source]
	if !ok {
		return "", "", broker.Errorf(broker.CodeNotFound, "no such source %s", req.Source)
	}
	if src == node {
		return "", "", broker.Errorf(broker.CodeDenied, "the source is on this node")
	}
	return src, b.servers[src], nil
}
