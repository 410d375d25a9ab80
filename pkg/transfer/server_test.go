package transfer

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flashpv/flashpv/pkg/transfer/auth"
	"github.com/flashpv/flashpv/pkg/transfer/broker"
	"github.com/flashpv/flashpv/pkg/transfer/stream"
)

// received is what one transfer into a target brought.
type received struct {
	Header
	SourceNode string
	Commits    []int64
	Stats      stream.Stats
}

// receive opens the test snapshot on c, resuming at from of version, and
// receives all of it into dst.
func receive(ctx context.Context, c *Client, from int64, version string, dst *os.File) (received, error) {
	s, err := c.Open(ctx, grantRequest(), Have{From: from, Version: version})
	if err != nil {
		return received{}, err
	}
	defer s.Close()
	r := received{Header: s.Header, SourceNode: s.SourceNode}
	r.Stats, err = s.Receive(ctx, stream.FileTarget(dst), func(next int64) error {
		r.Commits = append(r.Commits, next)
		return nil
	})
	return r, err
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

func TestTransferDeliversContent(t *testing.T) {
	cluster := newTestCluster(t)
	idA, idB := cluster.identity(t, nodeA), cluster.identity(t, nodeB)
	tests := []struct {
		name    string
		content func(t *testing.T) *testContent
	}{
		{"3 MiB with holes and zero blocks", smallContent},
		{"all holes", func(t *testing.T) *testContent { return newTestContent(t, 2<<20, nil) }},
		{"empty", func(t *testing.T) *testContent { return newTestContent(t, 0, nil) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			content := tt.content(t)
			opener := &fakeOpener{content: content}
			addr, _ := startServer(t, &Server{Identity: idA, Open: opener})
			cluster.route(nodeA, addr)
			size := content.header.Size
			// Garbage where the source has data, holes and zeros.
			dst := newTarget(t, size, stream.Extent{Off: size / 8, Len: size / 2})

			got, err := receive(testContext(t), &Client{Identity: idB}, 0, "", dst)
			if err != nil {
				t.Fatalf("transfer: %v", err)
			}
			want := content.header
			want.Segment = stream.DefaultSegment
			if got.Header != want {
				t.Errorf("header %+v, want %+v", got.Header, want)
			}
			if got.SourceNode != nodeA {
				t.Errorf("source node %q, want %q", got.SourceNode, nodeA)
			}
			if g := cluster.grants(); len(g) == 0 || g[len(g)-1] != grantRequest() {
				t.Errorf("broker asked %+v, want %+v last", g, grantRequest())
			}
			if size > 0 && (len(got.Commits) != 1 || got.Commits[0] != size) {
				t.Errorf("commits %v, want [%d]", got.Commits, size)
			}
			src, err := os.Open(content.path)
			if err != nil {
				t.Fatal(err)
			}
			defer src.Close()
			sameRange(t, src, dst, 0, size)
			if n := opener.calls.Load(); n != 1 {
				t.Errorf("opener called %d times, want 1", n)
			}
			waitFor(t, "the content to be closed", func() bool { return opener.closes.Load() == 1 })
		})
	}
}

// tamper decodes token's payload, changes it with mod and puts it back
// beside the original signature.
func tamper(t *testing.T, token string, mod func(*auth.Capability)) string {
	t.Helper()
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		t.Fatalf("token %q is not v1.<payload>.<signature>", token)
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var c auth.Capability
	if err := json.Unmarshal(payload, &c); err != nil {
		t.Fatal(err)
	}
	mod(&c)
	if payload, err = json.Marshal(c); err != nil {
		t.Fatal(err)
	}
	parts[1] = base64.RawURLEncoding.EncodeToString(payload)
	return strings.Join(parts, ".")
}

const otherSource = "default.fedcba9876543210fedcba9876543210"

func TestServerRefusesCapability(t *testing.T) {
	cluster := newTestCluster(t)
	ids := map[string]*Identity{}
	for _, n := range []string{nodeA, nodeB, nodeC} {
		ids[n] = cluster.identity(t, n)
	}
	now := time.Now()
	tests := []struct {
		name  string
		token func(t *testing.T) string
		req   func(*ReadRequest)
		peer  string           // the connection's node; node-b if empty
		now   func() time.Time // the server's clock, if not time.Now
	}{
		{name: "none", token: func(*testing.T) string { return "" }},
		{name: "not a token", token: func(*testing.T) string { return "v1.bm90.YQ" }},
		{name: "signed by another key", token: func(t *testing.T) string { return signCapability(t, otherSigner(t), nil) }},
		{name: "payload changed after signing", token: func(t *testing.T) string {
			return tamper(t, cluster.capability(t, func(c *auth.Capability) { c.Target = "pvc-other" }),
				func(c *auth.Capability) { c.Target = testTarget })
		}},
		{name: "expired", token: func(t *testing.T) string {
			return cluster.capability(t, func(c *auth.Capability) {
				c.IssuedAt, c.Expires = now.Add(-65*time.Minute).Unix(), now.Add(-5*time.Minute).Unix()
			})
		}},
		{name: "expired by the server's clock", token: func(t *testing.T) string { return cluster.capability(t, nil) },
			now: func() time.Time { return time.Now().Add(10 * time.Minute) }},
		{name: "not yet valid", token: func(t *testing.T) string {
			return cluster.capability(t, func(c *auth.Capability) {
				c.IssuedAt, c.Expires = now.Add(10*time.Minute).Unix(), now.Add(15*time.Minute).Unix()
			})
		}},
		{name: "node-c's capability on node-b's connection", token: func(t *testing.T) string {
			return cluster.capability(t, func(c *auth.Capability) { c.TargetNode = nodeC })
		}},
		{name: "node-b's capability on node-c's connection", peer: nodeC,
			token: func(t *testing.T) string { return cluster.capability(t, nil) }},
		{name: "another source node", token: func(t *testing.T) string {
			return cluster.capability(t, func(c *auth.Capability) { c.SourceNode = nodeC })
		}},
		{name: "another snapshot", token: func(t *testing.T) string {
			return cluster.capability(t, func(c *auth.Capability) { c.Source = otherSource })
		}},
		{name: "the right capability for another snapshot", token: func(t *testing.T) string { return cluster.capability(t, nil) },
			req: func(r *ReadRequest) { r.Source = otherSource }},
		{name: "a volume's capability for a snapshot", token: func(t *testing.T) string {
			return cluster.capability(t, func(c *auth.Capability) { c.Kind = broker.KindVolume })
		}},
		{name: "another target volume", token: func(t *testing.T) string {
			return cluster.capability(t, func(c *auth.Capability) { c.Target = "pvc-other" })
		}},
		{name: "the right capability for another target volume", token: func(t *testing.T) string { return cluster.capability(t, nil) },
			req: func(r *ReadRequest) { r.Target = "pvc-other" }},
	}
	content := smallContent(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opener := &fakeOpener{content: content}
			srv := &Server{Identity: ids[nodeA], Open: opener, Now: tt.now}
			addr, _ := startServer(t, srv)
			peer := tt.peer
			if peer == "" {
				peer = nodeB
			}
			resp, body, err := exchange(addr, nodeTLS(ids[peer], nodeA), readBody(t, tt.token(t), tt.req))
			wantRefusal(t, resp, body, err, 403, CodeDenied)
			if n := opener.calls.Load(); n != 0 {
				t.Errorf("opener called %d times, want never", n)
			}
			if n := srv.Replay.Len(); n != 0 {
				t.Errorf("%d capabilities recorded as used, want none", n)
			}
		})
	}
}

func TestServerRefusesReplayedCapability(t *testing.T) {
	cluster := newTestCluster(t)
	idA, idB := cluster.identity(t, nodeA), cluster.identity(t, nodeB)
	content := smallContent(t)
	for _, restart := range []bool{false, true} {
		name := "same server"
		if restart {
			name = "after a restart"
		}
		t.Run(name, func(t *testing.T) {
			replayFile := filepath.Join(t.TempDir(), "replay.json")
			first := &fakeOpener{content: content}
			addr, stop := startServer(t, &Server{Identity: idA, Open: first, Replay: openReplay(t, replayFile)})
			token := cluster.capability(t, nil)
			body := readBody(t, token, nil)

			resp, data, err := exchange(addr, nodeTLS(idB, nodeA), body)
			if err != nil || resp.StatusCode != 200 {
				t.Fatalf("first use: %v %v %q", err, resp, data)
			}
			if h, err := readHeader(bytes.NewReader(data)); err != nil || h.Source != testSource {
				t.Fatalf("first use: header %+v, %v", h, err)
			}
			second := first
			if restart {
				stop()
				second = &fakeOpener{content: content}
				addr, _ = startServer(t, &Server{Identity: idA, Open: second, Replay: openReplay(t, replayFile)})
			}
			resp, data, err = exchange(addr, nodeTLS(idB, nodeA), body)
			wantRefusal(t, resp, data, err, 403, CodeDenied)
			if !strings.Contains(string(data), auth.ErrReplayed.Error()) {
				t.Errorf("refusal %q does not say the capability was used", data)
			}
			n := first.calls.Load()
			if restart {
				n += second.calls.Load()
			}
			if n != 1 {
				t.Errorf("opener called %d times, want once", n)
			}
		})
	}
}

func TestServerAdmitsOnlyNodeCertificates(t *testing.T) {
	cluster := newTestCluster(t)
	idA, idB := cluster.identity(t, nodeA), cluster.identity(t, nodeB)
	content := smallContent(t)
	sample := make([]byte, 64) // the content's first bytes, random data
	if f, err := os.Open(content.path); err != nil {
		t.Fatal(err)
	} else if _, err := f.ReadAt(sample, 0); err != nil {
		t.Fatal(err)
	} else {
		f.Close()
	}
	tls12 := nodeTLS(idB, nodeA)
	tls12.MinVersion, tls12.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
	tests := []struct {
		name     string
		cfg      *tls.Config // nil: plaintext
		admitted bool
	}{
		{name: "node-b's certificate", cfg: nodeTLS(idB, nodeA), admitted: true},
		{name: "plaintext HTTP", cfg: nil},
		{name: "no client certificate", cfg: anyServer()},
		{name: "self-signed node certificate", cfg: anyServer(selfSignedNodeCert(t, nodeB))},
		{name: "node certificate from another CA", cfg: anyServer(otherCANodeCert(t, nodeB))},
		{name: "the controller's server certificate", cfg: anyServer(serverCert(t, cluster.signer, brokerName))},
		{name: "TLS 1.2 with node-b's certificate", cfg: tls12},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opener := &fakeOpener{content: content}
			srv := &Server{Identity: idA, Open: opener}
			addr, _ := startServer(t, srv)
			resp, body, err := exchange(addr, tt.cfg, readBody(t, cluster.capability(t, nil), nil))
			switch {
			case tt.admitted:
				if err != nil || resp.StatusCode != 200 || !bytes.Contains(body, sample) {
					t.Fatalf("admitted client got %v %v and %d bytes without the content", err, resp, len(body))
				}
				return
			case tt.cfg == nil:
				// Go answers plain HTTP on a TLS port with a 400 of its own.
				if err == nil && (resp.StatusCode == 200 || bytes.Contains(body, sample)) {
					t.Fatalf("plaintext client got %s and %d bytes", resp.Status, len(body))
				}
			case err == nil:
				t.Fatalf("handshake accepted: %s %q", resp.Status, body)
			case errors.Is(err, os.ErrDeadlineExceeded):
				t.Fatalf("no refusal, a timeout: %v", err)
			}
			if n := opener.calls.Load(); n != 0 {
				t.Errorf("opener called %d times, want never", n)
			}
			if n := srv.Replay.Len(); n != 0 {
				t.Errorf("%d capabilities recorded as used, want none", n)
			}
		})
	}
}

func TestServerRejectsMalformedRequests(t *testing.T) {
	cluster := newTestCluster(t)
	idA, idB := cluster.identity(t, nodeA), cluster.identity(t, nodeB)
	content := smallContent(t)
	tests := []struct {
		name string
		body func(t *testing.T) []byte
	}{
		{"over the size limit", func(t *testing.T) []byte {
			return readBody(t, cluster.capability(t, nil), func(r *ReadRequest) { r.Version = strings.Repeat("v", maxRequest) })
		}},
		{"unknown field", func(t *testing.T) []byte {
			body := readBody(t, cluster.capability(t, nil), nil)
			return append(body[:len(body)-1], `,"sourceNode":"node-a"}`...)
		}},
		{"not JSON", func(*testing.T) []byte { return []byte("capability=v1.x.y") }},
		{"empty", func(*testing.T) []byte { return nil }},
		{"from of the wrong type", func(t *testing.T) []byte {
			return bytes.Replace(readBody(t, cluster.capability(t, nil), nil), []byte(`"kind"`), []byte(`"from":"0","kind"`), 1)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opener := &fakeOpener{content: content}
			srv := &Server{Identity: idA, Open: opener}
			addr, _ := startServer(t, srv)
			resp, body, err := exchange(addr, nodeTLS(idB, nodeA), tt.body(t))
			wantRefusal(t, resp, body, err, 400, CodeInvalid)
			if n := opener.calls.Load(); n != 0 {
				t.Errorf("opener called %d times, want never", n)
			}
			if n := srv.Replay.Len(); n != 0 {
				t.Errorf("%d capabilities recorded as used, want none", n)
			}
		})
	}
}

func TestServerSlotsLimitConcurrentTransfers(t *testing.T) {
	cluster := newTestCluster(t)
	idA, idB := cluster.identity(t, nodeA), cluster.identity(t, nodeB)
	content := smallContent(t)
	gate := make(chan struct{})
	release := sync.OnceFunc(func() { close(gate) })
	opener := &fakeOpener{content: content, gate: gate, started: make(chan struct{}, 4)}
	addr, _ := startServer(t, &Server{Identity: idA, Open: opener, Slots: stream.NewSlots(1)})
	t.Cleanup(release) // before the server stops
	cluster.route(nodeA, addr)
	client := &Client{Identity: idB}
	ctx := testContext(t)

	size := content.header.Size
	firstDst := newTarget(t, size, stream.Extent{})
	first := make(chan error, 1)
	go func() {
		_, err := receive(ctx, client, 0, "", firstDst)
		first <- err
	}()
	select {
	case <-opener.started:
	case err := <-first:
		t.Fatalf("first transfer ended before it was held: %v", err)
	case <-ctx.Done():
		t.Fatal("the first transfer never started")
	}

	resp, body, err := exchange(addr, nodeTLS(idB, nodeA), readBody(t, cluster.capability(t, nil), nil))
	wantRefusal(t, resp, body, err, 503, CodeBusy)
	_, err = client.Open(ctx, grantRequest(), Have{})
	wantRemoteCode(t, err, CodeBusy)
	if n := opener.calls.Load(); n != 1 {
		t.Errorf("opener called %d times while the slot was taken, want once", n)
	}

	release()
	if err := <-first; err != nil {
		t.Fatalf("first transfer: %v", err)
	}
	src, err := os.Open(content.path)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	sameRange(t, src, firstDst, 0, size)
	// The slot is free again.
	if _, err := receive(ctx, client, 0, "", newTarget(t, size, stream.Extent{})); err != nil {
		t.Fatalf("transfer after the first ended: %v", err)
	}
}

func TestClientRefusesServerOfAnotherNode(t *testing.T) {
	cluster := newTestCluster(t)
	idB := cluster.identity(t, nodeB)
	content := smallContent(t)
	tests := []struct {
		name     string
		impostor func(t *testing.T) *Identity
	}{
		{"node-c's certificate", func(t *testing.T) *Identity { return cluster.identity(t, nodeC) }},
		{"node-a's name from another CA", func(t *testing.T) *Identity { return identityFrom(t, otherSigner(t), nodeA) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opener := &fakeOpener{content: content}
			addr, _ := startServer(t, &Server{Identity: tt.impostor(t), Open: opener})
			cluster.route(nodeA, addr) // the grant names node-a
			_, err := (&Client{Identity: idB}).Open(testContext(t), grantRequest(), Have{})
			re := wantRemoteCode(t, err, CodeBusy)
			if !strings.Contains(re.Message, "connecting to node "+nodeA) {
				t.Errorf("refused %q, want the connection to node-a refused", re.Message)
			}
			if n := opener.calls.Load(); n != 0 {
				t.Errorf("impostor's opener called %d times, want never", n)
			}
		})
	}
}

func TestClientResumesSameVersion(t *testing.T) {
	cluster := newTestCluster(t)
	idA, idB := cluster.identity(t, nodeA), cluster.identity(t, nodeB)
	const seg = stream.DefaultSegment
	// Two segments: data in both and across their boundary.
	content := newTestContent(t, seg+3<<20, []stream.Extent{
		{Off: 0, Len: 256 << 10},
		{Off: seg - 64<<10, Len: 512 << 10},
		{Off: seg + 2<<20, Len: 100 << 10},
	})
	size := content.header.Size
	addr, _ := startServer(t, &Server{Identity: idA, Open: &fakeOpener{content: content}})
	cluster.route(nodeA, addr)
	src, err := os.Open(content.path)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	tests := []struct {
		name      string
		from      int64
		version   string
		wantStart int64
	}{
		{"one segment of the same version", seg, testVersion, seg},
		{"one segment of another version", seg, "1717000000-3145728", 0},
		{"one segment of no version", seg, "", 0},
		{"not a segment boundary", seg - 4<<10, testVersion, 0},
		{"nothing yet", 0, testVersion, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Garbage in the first segment's hole: kept by a resume, zeroed
			// by a transfer from the start.
			garbage := stream.Extent{Off: 1 << 20, Len: 1 << 20}
			dst := newTarget(t, size, garbage)
			got, err := receive(testContext(t), &Client{Identity: idB}, tt.from, tt.version, dst)
			if err != nil {
				t.Fatalf("transfer: %v", err)
			}
			if got.Start != tt.wantStart || got.Version != testVersion {
				t.Fatalf("start %d of version %q, want %d of %q", got.Start, got.Version, tt.wantStart, testVersion)
			}
			sameRange(t, src, dst, tt.wantStart, size-tt.wantStart)
			wantCommits := []int64{seg, size}
			if tt.wantStart == seg {
				wantCommits = []int64{size}
				kept := make([]byte, garbage.Len)
				if _, err := dst.ReadAt(kept, garbage.Off); err != nil {
					t.Fatal(err)
				}
				if bytes.Count(kept, []byte{0}) == len(kept) {
					t.Error("a resume rewrote the first segment")
				}
			}
			if !slices.Equal(got.Commits, wantCommits) {
				t.Errorf("commits %v, want %v", got.Commits, wantCommits)
			}
		})
	}
}
