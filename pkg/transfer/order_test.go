package transfer

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flashpv/flashpv/pkg/move"
	"github.com/flashpv/flashpv/pkg/transfer/auth"
)

// fakeOrders answers every order with answer and records what it was
// asked.
type fakeOrders struct {
	answer OrderAnswer
	mu     sync.Mutex
	asked  []move.OrderRequest
}

func (f *fakeOrders) Order(_ context.Context, req move.OrderRequest) (OrderAnswer, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.asked = append(f.asked, req)
	return f.answer, nil
}

func (f *fakeOrders) calls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.asked)
}

// controllerKey is a controller key whose certificates signer issues.
func controllerKey(t *testing.T, signer *auth.Signer, ttl time.Duration) *auth.ControllerKey {
	t.Helper()
	k, err := auth.NewControllerKey(func() (*auth.Signer, error) { return signer, nil }, ttl)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// controllerTLS is the controller's client configuration for node's
// server.
func controllerTLS(t *testing.T, k *auth.ControllerKey, trust func() (*auth.Trust, error), node string) *tls.Config {
	t.Helper()
	cfg := auth.ClientConfig(k.Certificate, trust, node)
	cfg.NextProtos = []string{"http/1.1"}
	return cfg
}

// fenceOrder is an order to node-a, the source, to fence the test volume.
func fenceOrder() move.OrderRequest {
	return move.OrderRequest{MoveID: "move-1", Order: move.OrderFence, Volume: testSource, Source: nodeA, Target: nodeB}
}

func orderBody(t *testing.T, req move.OrderRequest) []byte {
	t.Helper()
	data, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// post posts body to addr's path over one connection, TLS with cfg (plain
// TCP when nil), and returns the answer and its body; an error means no
// HTTP answer came.
func post(addr, path string, cfg *tls.Config, body []byte) (*http.Response, []byte, error) {
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
	req, err := http.NewRequest(http.MethodPost, "https://"+addr+path, bytes.NewReader(body))
	if err != nil {
		return nil, nil, err
	}
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

func TestOrderAdmitsOnlyTheController(t *testing.T) {
	cluster := newTestCluster(t)
	idA, idB := cluster.identity(t, nodeA), cluster.identity(t, nodeB)
	ctl := controllerKey(t, cluster.signer, time.Hour)
	expired := controllerKey(t, cluster.signer, time.Millisecond)
	if _, err := expired.Certificate(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(5 * time.Millisecond) // past its NotAfter
	expiredCert, _ := expired.Certificate()
	foreign := controllerKey(t, otherSigner(t), time.Hour)
	foreignCert, err := foreign.Certificate()
	if err != nil {
		t.Fatal(err)
	}
	expiredCfg := anyServer(*expiredCert)
	// The expired key renews at once when asked; present the old one.
	tests := []struct {
		name     string
		cfg      *tls.Config // nil: plaintext
		status   int         // 0: no HTTP answer (the handshake fails)
		admitted bool
	}{
		{name: "the controller's certificate", cfg: controllerTLS(t, ctl, cluster.trust, nodeA), status: 200, admitted: true},
		{name: "node-b's certificate", cfg: nodeTLS(idB, nodeA), status: http.StatusForbidden},
		{name: "node-a's own certificate", cfg: nodeTLS(idA, nodeA), status: http.StatusForbidden},
		{name: "plaintext HTTP", cfg: nil},
		{name: "no client certificate", cfg: anyServer()},
		{name: "the controller's server certificate", cfg: anyServer(serverCert(t, cluster.signer, brokerName))},
		{name: "a controller certificate from another CA", cfg: anyServer(*foreignCert)},
		{name: "an expired controller certificate", cfg: expiredCfg},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			orders := &fakeOrders{answer: OrderAnswer{Progress: move.Finished, Message: "fenced"}}
			addr, _ := startServer(t, &Server{Identity: idA, Orders: orders})
			resp, body, err := post(addr, PathOrder, tt.cfg, orderBody(t, fenceOrder()))
			switch {
			case tt.admitted:
				var a OrderAnswer
				if err != nil || resp.StatusCode != 200 || json.Unmarshal(body, &a) != nil || a.Progress != move.Finished {
					t.Fatalf("the controller got %v %v %q", err, resp, body)
				}
			case tt.status != 0:
				wantRefusal(t, resp, body, err, tt.status, CodeDenied)
			case tt.cfg == nil:
				if err == nil && resp.StatusCode == 200 {
					t.Fatalf("plaintext client got %s %q", resp.Status, body)
				}
			case err == nil:
				t.Fatalf("handshake accepted: %s %q", resp.Status, body)
			}
			if want := map[bool]int{true: 1, false: 0}[tt.admitted]; orders.calls() != want {
				t.Errorf("the node carried out %d orders, want %d", orders.calls(), want)
			}
		})
	}
}

func TestReadRefusesTheController(t *testing.T) {
	cluster := newTestCluster(t)
	idA := cluster.identity(t, nodeA)
	opener := &fakeOpener{content: smallContent(t)}
	addr, _ := startServer(t, &Server{Identity: idA, Open: opener})
	ctl := controllerKey(t, cluster.signer, time.Hour)
	resp, body, err := post(addr, PathRead, controllerTLS(t, ctl, cluster.trust, nodeA), readBody(t, cluster.capability(t, nil), nil))
	wantRefusal(t, resp, body, err, http.StatusForbidden, CodeDenied)
	if opener.calls.Load() != 0 {
		t.Error("the controller's certificate opened a content")
	}
}

func TestOrderRefusesMalformedOrders(t *testing.T) {
	cluster := newTestCluster(t)
	idA := cluster.identity(t, nodeA)
	cfg := controllerTLS(t, controllerKey(t, cluster.signer, time.Hour), cluster.trust, nodeA)
	with := func(mod func(*move.OrderRequest)) []byte {
		r := fenceOrder()
		mod(&r)
		return orderBody(t, r)
	}
	tests := []struct {
		name string
		body []byte
	}{
		{"not JSON", []byte("fence it")},
		{"two objects", append(orderBody(t, fenceOrder()), orderBody(t, fenceOrder())...)},
		{"an unknown field", []byte(`{"moveID":"m","order":"fence","volume":"v","source":"node-a","target":"node-b","force":true}`)},
		{"over 8 KiB", with(func(r *move.OrderRequest) { r.Capability = strings.Repeat("x", 9<<10) })},
		{"an unknown order", with(func(r *move.OrderRequest) { r.Order = "format" })},
		{"no order", with(func(r *move.OrderRequest) { r.Order = "" })},
		{"no move", with(func(r *move.OrderRequest) { r.MoveID = "" })},
		{"no volume", with(func(r *move.OrderRequest) { r.Volume = "" })},
		{"a fence for another source", with(func(r *move.OrderRequest) { r.Source, r.Target = nodeC, nodeA })},
		{"source and target the same", with(func(r *move.OrderRequest) { r.Target = nodeA })},
		{"an import for another target", with(func(r *move.OrderRequest) {
			r.Order, r.Snapshot, r.SourceAddress, r.Capability = move.OrderImport, "s", "x:1", "c"
		})},
		{"an import here without a capability", with(func(r *move.OrderRequest) {
			r.Order, r.Source, r.Target, r.Snapshot, r.SourceAddress = move.OrderImport, nodeB, nodeA, "s", "x:1"
		})},
		{"a catch-up here without the snapshot", with(func(r *move.OrderRequest) {
			r.Order, r.Source, r.Target, r.SourceAddress, r.Capability = move.OrderCatchUp, nodeB, nodeA, "x:1", "c"
		})},
		{"a drop for two other nodes", with(func(r *move.OrderRequest) { r.Order, r.Source, r.Target = move.OrderDrop, nodeB, nodeC })},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			orders := &fakeOrders{answer: OrderAnswer{Progress: move.Finished}}
			addr, _ := startServer(t, &Server{Identity: idA, Orders: orders})
			resp, body, err := post(addr, PathOrder, cfg, tt.body)
			wantRefusal(t, resp, body, err, http.StatusBadRequest, CodeInvalid)
			if orders.calls() != 0 {
				t.Errorf("the node carried out %d orders", orders.calls())
			}
		})
	}
}

func TestOrderClient(t *testing.T) {
	cluster := newTestCluster(t)
	idA, idB := cluster.identity(t, nodeA), cluster.identity(t, nodeB)
	orders := &fakeOrders{answer: OrderAnswer{Progress: move.Running, Message: "importing"}}
	addrA, _ := startServer(t, &Server{Identity: idA, Orders: orders})
	addrB, _ := startServer(t, &Server{Identity: idB, Orders: orders})
	addrs := map[string]string{nodeA: addrA, nodeB: addrB}
	c := &OrderClient{
		Key:   controllerKey(t, cluster.signer, time.Hour),
		Trust: cluster.trust,
		Address: func(_ context.Context, node string) (string, error) {
			return addrs[node], nil
		},
	}
	ctx := testContext(t)
	p, msg, err := c.Send(ctx, nodeA, fenceOrder())
	if err != nil || p != move.Running || msg != "importing" {
		t.Fatalf("Send: %v %q %v, want Running from the node", p, msg, err)
	}
	if got := orders.asked[0]; got != fenceOrder() {
		t.Errorf("the node was asked %+v, want %+v", got, fenceOrder())
	}
	// An order the node can never carry out is Failed, not retried.
	bad := fenceOrder()
	bad.Source, bad.Target = nodeB, nodeA
	if p, msg, err := c.Send(ctx, nodeA, bad); err != nil || p != move.Failed || !strings.Contains(msg, "for the source") {
		t.Errorf("a fence of another node: %v %q %v, want Failed with the reason", p, msg, err)
	}
	// A server that is another node's gets no order.
	addrs[nodeC] = addrB
	if p, _, err := c.Send(ctx, nodeC, fenceOrder()); err == nil {
		t.Errorf("node-b's server, asked as node-c: %v, want an error", p)
	}
	if n := orders.calls(); n != 1 {
		t.Errorf("%d orders carried out, want 1", n)
	}
}

func TestOrderCapability(t *testing.T) {
	cluster := newTestCluster(t)
	trust, _ := cluster.trust()
	now := time.Now()
	req := move.OrderRequest{MoveID: "m", Order: move.OrderCatchUp, Volume: testSource, Snapshot: "default.00112233445566778899aabbccddeeff", Source: nodeA, Target: nodeB}
	tok, err := OrderCapability(cluster.signer, req, now, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	c, err := trust.Verify(tok, now)
	if err != nil {
		t.Fatal(err)
	}
	if err := auth.AuthorizeDelta(c, nodeA, nodeB, testSource, req.Snapshot); err != nil {
		t.Errorf("a catch-up's capability: %v", err)
	}
	if err := auth.Authorize(c, nodeA, nodeB, auth.KindDelta, testSource); err != nil {
		t.Errorf("a catch-up's capability, without its base: %v", err)
	}
	if err := auth.AuthorizeDelta(c, nodeA, nodeB, testSource, "default.ffffffffffffffffffffffffffffffff"); err == nil {
		t.Error("a catch-up's capability opens the delta against another snapshot")
	}
	req.Order = move.OrderImport
	tok, err = OrderCapability(cluster.signer, req, now, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if c, err = trust.Verify(tok, now); err != nil {
		t.Fatal(err)
	}
	if c.Kind != "snapshot" || c.Source != req.Snapshot || c.Target != testSource || c.Base != "" {
		t.Errorf("an import's capability: %+v", c)
	}
	req.Order = move.OrderFence
	if _, err := OrderCapability(cluster.signer, req, now, time.Minute); err == nil {
		t.Error("a fence got a capability")
	}
}
