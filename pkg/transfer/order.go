package transfer

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"k8s.io/klog/v2"

	"github.com/flashpv/flashpv/pkg/move"
	"github.com/flashpv/flashpv/pkg/transfer/auth"
	"github.com/flashpv/flashpv/pkg/transfer/broker"
)

// Orders: the cluster controller tells a node's flashpv what to do for a
// move (docs/moving.md) with one HTTPS POST to PathOrder on the node's
// transfer server, over the same mutual TLS 1.3, but from the
// controller's certificate (auth.IsController), never a node's. The body
// is a move.OrderRequest; a 200 answer's body an OrderAnswer. A refused
// request's body is a RemoteError: 403 for a client that is not the
// controller, 400 for an order this node cannot take (malformed, unknown,
// for another node), which a repetition would not change.

const (
	// PathOrder is the endpoint of orders.
	PathOrder = "/v1/order"
	// maxOrdersInFlight bounds the orders a node serves at once; each is
	// short (a job runs in the background), so more are a flood.
	maxOrdersInFlight = 16
)

// OrderAnswer is a node's answer to an order.
type OrderAnswer struct {
	Progress move.Progress `json:"progress"`
	Message  string        `json:"message,omitempty"`
}

// OrderHandler carries orders out on this node: it answers the order's
// progress, starting it when it is not known yet. An error refuses the
// order itself; a *RemoteError chooses its code (CodeInvalid: the order
// can never be carried out here).
type OrderHandler interface {
	Order(ctx context.Context, req move.OrderRequest) (OrderAnswer, error)
}

// knownOrders are the orders a node takes.
var knownOrders = map[move.Order]bool{
	move.OrderImport: true, move.OrderFence: true, move.OrderUnfence: true,
	move.OrderCatchUp: true, move.OrderDrop: true,
}

func (s *Server) order(w http.ResponseWriter, r *http.Request) {
	if r.TLS == nil {
		refuse(w, http.StatusForbidden, &RemoteError{CodeDenied, "TLS required"})
		return
	}
	if err := auth.PeerIsController(*r.TLS); err != nil {
		peer, _ := auth.PeerNode(*r.TLS)
		klog.InfoS("Order refused: not from the controller", "peer", peer, "reason", err)
		refuse(w, http.StatusForbidden, &RemoteError{CodeDenied, "orders come from the cluster controller only"})
		return
	}
	select {
	case s.orderSlots() <- struct{}{}:
		defer func() { <-s.orders }()
	default:
		refuse(w, http.StatusServiceUnavailable, &RemoteError{CodeBusy, "too many orders in flight"})
		return
	}
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Now().Add(10 * time.Second))
	var req move.OrderRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxRequest))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil || dec.More() {
		refuse(w, http.StatusBadRequest, &RemoteError{CodeInvalid, "malformed order"})
		return
	}
	if err := s.checkOrder(req); err != nil {
		klog.InfoS("Order refused", "move", req.MoveID, "order", req.Order, "volume", req.Volume, "reason", err)
		refuse(w, http.StatusBadRequest, &RemoteError{CodeInvalid, err.Error()})
		return
	}
	if s.Orders == nil {
		refuse(w, http.StatusNotFound, &RemoteError{CodeInvalid, "this node takes no orders"})
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	a, err := s.Orders.Order(ctx, req)
	if err != nil {
		var re *RemoteError
		if !errors.As(err, &re) {
			re = &RemoteError{CodeInternal, err.Error()}
		}
		klog.InfoS("Order refused", "move", req.MoveID, "order", req.Order, "volume", req.Volume, "reason", re)
		refuse(w, statusOf(re.Code), re)
		return
	}
	klog.V(2).InfoS("Order answered", "move", req.MoveID, "order", req.Order, "volume", req.Volume, "progress", a.Progress, "message", a.Message)
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(a)
}

func (s *Server) orderSlots() chan struct{} {
	s.ordersOnce.Do(func() { s.orders = make(chan struct{}, maxOrdersInFlight) })
	return s.orders
}

// checkOrder refuses an order that is not for this node, whatever the
// node holds: which end each order is for, and that the fields it needs
// are there.
func (s *Server) checkOrder(req move.OrderRequest) error {
	if !knownOrders[req.Order] {
		return fmt.Errorf("unknown order %q", truncated(string(req.Order)))
	}
	if req.MoveID == "" || len(req.MoveID) > 128 || req.Volume == "" {
		return errors.New("an order names its move (at most 128 bytes) and its volume")
	}
	if req.Source == "" || req.Target == "" || req.Source == req.Target {
		return fmt.Errorf("an order names two nodes, source %q and target %q", truncated(req.Source), truncated(req.Target))
	}
	me := s.Identity.Node
	switch req.Order {
	case move.OrderImport, move.OrderCatchUp:
		if req.Target != me {
			return fmt.Errorf("%s is an order for the target, node %q; this is node %q", req.Order, truncated(req.Target), me)
		}
		if req.Snapshot == "" || req.SourceAddress == "" || req.Capability == "" {
			return fmt.Errorf("%s needs the snapshot, the source's address and a capability", req.Order)
		}
	case move.OrderFence, move.OrderUnfence:
		if req.Source != me {
			return fmt.Errorf("%s is an order for the source, node %q; this is node %q", req.Order, truncated(req.Source), me)
		}
	case move.OrderDrop:
		if req.Source != me && req.Target != me {
			return fmt.Errorf("drop for nodes %q and %q; this is node %q", truncated(req.Source), truncated(req.Target), me)
		}
	}
	return nil
}

func truncated(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}

// OrderClient sends the controller's orders to nodes (move.Orders), with
// the controller's certificate, to a server that must present the node's.
type OrderClient struct {
	Key   *auth.ControllerKey
	Trust func() (*auth.Trust, error)
	// Address finds a node's transfer server (host:port).
	Address func(ctx context.Context, node string) (string, error)
	// Timeout bounds one order (10 s when 0).
	Timeout time.Duration
}

var _ move.Orders = (*OrderClient)(nil)

// Send sends req to node. A node that refuses the order as one it can
// never carry out (400, or 404 from a node without orders) answers Failed
// with its reason; anything else that is not an answer is an error, to be
// tried again.
func (c *OrderClient) Send(ctx context.Context, node string, req move.OrderRequest) (move.Progress, string, error) {
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	addr, err := c.Address(ctx, node)
	if err != nil {
		return move.Unknown, "", fmt.Errorf("finding node %s: %w", node, err)
	}
	cfg := auth.ClientConfig(c.Key.Certificate, c.Trust, node)
	cfg.NextProtos = []string{"http/1.1"}
	tr := &http.Transport{TLSClientConfig: cfg, DisableKeepAlives: true, ForceAttemptHTTP2: false}
	defer tr.CloseIdleConnections()
	body, err := json.Marshal(req)
	if err != nil {
		return move.Unknown, "", err
	}
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+addr+PathOrder, bytes.NewReader(body))
	if err != nil {
		return move.Unknown, "", err
	}
	hr.Header.Set("Content-Type", "application/json")
	resp, err := tr.RoundTrip(hr)
	if err != nil {
		return move.Unknown, "", fmt.Errorf("ordering %s of node %s: %w", req.Order, node, err)
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
		var a OrderAnswer
		dec := json.NewDecoder(io.LimitReader(resp.Body, maxRequest))
		if err := dec.Decode(&a); err != nil {
			return move.Unknown, "", fmt.Errorf("node %s: malformed answer: %w", node, err)
		}
		switch a.Progress {
		case move.Running, move.Finished, move.Failed:
			return a.Progress, a.Message, nil
		}
		return move.Unknown, "", fmt.Errorf("node %s answered progress %q", node, truncated(string(a.Progress)))
	case http.StatusBadRequest, http.StatusNotFound:
		return move.Failed, readRefusal(resp, node).Error(), nil
	}
	return move.Unknown, "", readRefusal(resp, node)
}

// OrderCapability signs the capability an import or a catch-up order
// carries, valid for ttl from now: the target may read the snapshot
// (import) or the volume as it differs from the snapshot (catch-up) from
// the source, into the volume of the same ID. Capabilities are used once:
// sign a new one for every Send.
func OrderCapability(s *auth.Signer, req move.OrderRequest, now time.Time, ttl time.Duration) (string, error) {
	c := auth.Capability{
		ID: auth.NewCapabilityID(), SourceNode: req.Source, TargetNode: req.Target, Target: req.Volume,
		IssuedAt: now.Unix(), Expires: now.Add(ttl).Unix(),
	}
	switch req.Order {
	case move.OrderImport:
		c.Kind, c.Source = broker.KindSnapshot, req.Snapshot
	case move.OrderCatchUp:
		c.Kind, c.Source, c.Base = auth.KindDelta, req.Volume, req.Snapshot
	default:
		return "", fmt.Errorf("order %s carries no capability", req.Order)
	}
	return s.Sign(c)
}
