package transfer

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/flashpv/flashpv/pkg/transfer/auth"
	"github.com/flashpv/flashpv/pkg/transfer/broker"
	"github.com/flashpv/flashpv/pkg/transfer/stream"
	"github.com/flashpv/flashpv/pkg/transfer/tree"
)

// Client fetches contents from other nodes for this node's new volumes.
type Client struct {
	Identity *Identity
	Slots    *stream.Slots
	Limit    *stream.Limiter
	Metrics  *Metrics
	// IdleTimeout ends a transfer whose source stops sending.
	IdleTimeout time.Duration
}

// Session is one attempt at a transfer: the content's header, and its
// frames to receive.
type Session struct {
	Header
	SourceNode string
	client     *Client
	conn       net.Conn
	body       io.ReadCloser
	release    func()
}

// Have is what the target already holds of a content: block content up
// to From, or a tree up to its Checkpoint, of Version.
type Have struct {
	From       int64
	Version    string
	Checkpoint string
}

// Open asks the broker for a capability to copy g's source here and the
// source's node for the content, resuming where have says if it still has
// that version. Refusals are *RemoteError.
func (c *Client) Open(ctx context.Context, g broker.GrantRequest, have Have) (*Session, error) {
	release, ok := c.Slots.TryAcquire()
	if !ok {
		return nil, &RemoteError{CodeBusy, "this node receives as many transfers as it may; retry later"}
	}
	s, err := c.open(ctx, g, have)
	if err != nil {
		release()
		return nil, err
	}
	s.release = release
	c.Metrics.begin(dirIn)
	return s, nil
}

func (c *Client) open(ctx context.Context, g broker.GrantRequest, have Have) (*Session, error) {
	if _, err := c.Identity.Certificate(ctx); err != nil {
		return nil, &RemoteError{CodeBusy, fmt.Sprintf("this node has no transfer certificate yet: %v", err)}
	}
	grant, err := c.Identity.Broker.Grant(ctx, g)
	if err != nil {
		return nil, fromBroker(err)
	}
	req := ReadRequest{Capability: grant.Capability, Kind: g.Kind, Source: g.Source, Target: g.Target, From: have.From, Version: have.Version}
	return c.connect(ctx, Grant{SourceNode: grant.SourceNode, Address: grant.Address, Capability: grant.Capability}, req, have)
}

// Grant is what a capability lets this node read: where, and with which
// capability.
type Grant struct {
	SourceNode, Address, Capability string
}

// OpenGranted asks g's source node for req's content with g's capability,
// which the controller handed out itself (a move's orders) rather than
// through the broker; otherwise as Open. req.Capability is g's.
func (c *Client) OpenGranted(ctx context.Context, g Grant, req ReadRequest, have Have) (*Session, error) {
	release, ok := c.Slots.TryAcquire()
	if !ok {
		return nil, &RemoteError{CodeBusy, "this node receives as many transfers as it may; retry later"}
	}
	if _, err := c.Identity.Certificate(ctx); err != nil {
		release()
		return nil, &RemoteError{CodeBusy, fmt.Sprintf("this node has no transfer certificate yet: %v", err)}
	}
	req.Capability, req.From, req.Version = g.Capability, have.From, have.Version
	s, err := c.connect(ctx, g, req, have)
	if err != nil {
		release()
		return nil, err
	}
	s.release = release
	c.Metrics.begin(dirIn)
	return s, nil
}

// connect asks the source node for req's content.
func (c *Client) connect(ctx context.Context, grant Grant, rr ReadRequest, have Have) (*Session, error) {
	g := broker.GrantRequest{Kind: rr.Kind, Source: rr.Source, Target: rr.Target}
	cfg := auth.ClientConfig(c.Identity.current, c.Identity.Trust, grant.SourceNode)
	cfg.NextProtos = []string{"http/1.1"}
	raw, err := dialTLS(ctx, grant.Address, cfg)
	if err != nil {
		return nil, &RemoteError{CodeBusy, fmt.Sprintf("connecting to node %s at %s: %v", grant.SourceNode, grant.Address, err)}
	}
	conn := &idleConn{Conn: raw, idle: c.idle()}
	tr := &http.Transport{
		DialTLSContext:    func(context.Context, string, string) (net.Conn, error) { return conn, nil },
		DisableKeepAlives: true,
	}
	body, _ := json.Marshal(rr)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+grant.Address+PathRead, bytes.NewReader(body))
	if err != nil {
		conn.Close()
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(HeaderTreeFormat, strconv.Itoa(TreeFormatCheckpoints))
	if have.Checkpoint != "" && have.Version != "" {
		req.Header.Set(HeaderTreeResume, have.Checkpoint)
	}
	resp, err := tr.RoundTrip(req)
	if err != nil {
		conn.Close()
		return nil, &RemoteError{CodeBusy, fmt.Sprintf("asking node %s for %s: %v", grant.SourceNode, g.Source, err)}
	}
	if resp.StatusCode != http.StatusOK {
		defer conn.Close()
		return nil, readRefusal(resp, grant.SourceNode)
	}
	h, err := readHeader(resp.Body)
	if err == nil {
		err = checkHeader(h, g, have)
	}
	if err == nil && rr.Kind == auth.KindDelta && h.Base != rr.Base && (h.Base != "" || !h.IsTree()) {
		err = fmt.Errorf("%w: a delta against %q, asked against %q", errBadHeader, h.Base, rr.Base)
	}
	if err == nil && rr.Kind != auth.KindDelta && h.Base != "" {
		err = fmt.Errorf("%w: a delta, asked for %s %s", errBadHeader, rr.Kind, rr.Source)
	}
	if err != nil {
		conn.Close()
		return nil, &RemoteError{CodeInternal, fmt.Sprintf("node %s: %v", grant.SourceNode, err)}
	}
	return &Session{Header: h, SourceNode: grant.SourceNode, client: c, conn: conn, body: resp.Body}, nil
}

// dialTLS connects to addr over TLS, reading the connection in bulkSize
// reads rather than one or two per 16 KiB record.
func dialTLS(ctx context.Context, addr string, cfg *tls.Config) (*tls.Conn, error) {
	d := net.Dialer{Timeout: 10 * time.Second, KeepAlive: 15 * time.Second}
	tcp, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	conn := tls.Client(newBulkConn(tcp), cfg)
	hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := conn.HandshakeContext(hctx); err != nil {
		tcp.Close()
		return nil, err
	}
	return conn, nil
}

func (c *Client) idle() time.Duration {
	if c.IdleTimeout > 0 {
		return c.IdleTimeout
	}
	return 2 * time.Minute
}

// checkHeader refuses a header that answers another question than asked.
func checkHeader(h Header, g broker.GrantRequest, have Have) error {
	from, version := have.From, have.Version
	switch {
	case h.Kind != g.Kind || h.Source != g.Source:
		return fmt.Errorf("%w: sent %s %s, not %s %s", errBadHeader, h.Kind, h.Source, g.Kind, g.Source)
	case !h.IsTree() && (h.Segment < 1<<20 || h.Segment > 1<<30):
		return fmt.Errorf("%w: segment of %d bytes", errBadHeader, h.Segment)
	case h.Start != 0 && (h.Start != from || h.Version != version || version == ""):
		return fmt.Errorf("%w: starts at %d of version %q, asked %d of %q", errBadHeader, h.Start, h.Version, from, version)
	case h.Resume != "" && (h.Resume != have.Checkpoint || h.Version != version):
		return fmt.Errorf("%w: resumes the tree of version %q at another checkpoint than asked", errBadHeader, h.Version)
	}
	return nil
}

func readRefusal(resp *http.Response, node string) error {
	var e RemoteError
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	if json.Unmarshal(data, &e) != nil || e.Code == "" {
		return &RemoteError{CodeInternal, fmt.Sprintf("node %s answered %s", node, resp.Status)}
	}
	e.Message = fmt.Sprintf("node %s: %s", node, e.Message)
	return &e
}

// fromBroker turns a broker refusal into the code the caller answers with.
func fromBroker(err error) error {
	var be *broker.Error
	if !errors.As(err, &be) {
		return &RemoteError{CodeBusy, fmt.Sprintf("asking the broker: %v", err)}
	}
	code := CodeInternal
	switch be.Code {
	case broker.CodeDenied, broker.CodeUnauthenticated:
		code = CodeDenied
	case broker.CodeNotFound:
		code = CodeNotFound
	case broker.CodeInvalid:
		code = CodeInvalid
	case broker.CodeUnavailable:
		code = CodeBusy
	}
	return &RemoteError{code, "broker: " + be.Message}
}

// Receive writes the session's block content into dst; see
// stream.Receive.
func (s *Session) Receive(ctx context.Context, dst stream.BlockTarget, commit func(next int64) error) (stream.Stats, error) {
	if s.IsTree() || s.Base != "" {
		return stream.Stats{}, fmt.Errorf("%w: %s is not a whole block content", stream.ErrInvalid, s.Source)
	}
	st, err := stream.Receive(ctx, s.body, dst, s.Size, s.Start, s.Segment, s.client.Limit, commit)
	s.client.Metrics.add(dirIn, st)
	return st, err
}

// ReceiveDelta applies the session's delta onto dst, which holds its
// base; see stream.ReceiveDelta.
func (s *Session) ReceiveDelta(ctx context.Context, dst stream.DeltaTarget, commit func(next int64) error) (stream.Stats, error) {
	if s.IsTree() || s.Base == "" {
		return stream.Stats{}, fmt.Errorf("%w: %s is not a delta", stream.ErrInvalid, s.Source)
	}
	st, err := stream.ReceiveDelta(ctx, s.body, dst, s.Size, s.Start, s.Segment, s.client.Limit, commit)
	s.client.Metrics.add(dirIn, st)
	return st, err
}

// ReceiveTree makes the session's file tree in dir: an open empty
// directory, or, when the session resumes (Header.Resume), what the
// attempts before made up to that checkpoint. See tree.Receive.
func (s *Session) ReceiveTree(ctx context.Context, dir *os.File, progress func(tree.Stats, *tree.Checkpoint) error) (tree.Stats, error) {
	if !s.IsTree() {
		return tree.Stats{}, fmt.Errorf("%w: %s is block content, not a file tree", stream.ErrInvalid, s.Source)
	}
	opt, err := s.treeOptions()
	if err != nil {
		return tree.Stats{}, err
	}
	st, err := tree.Receive(ctx, s.body, dir, s.client.Limit, opt, progress)
	moved := stream.Stats{DataBytes: st.DataBytes, WireBytes: st.WireBytes}
	if opt.From != nil {
		moved.DataBytes -= opt.From.DataBytes // received by attempts before
	}
	s.client.Metrics.add(dirIn, moved)
	return st, err
}

// Close ends the session.
func (s *Session) Close() {
	s.body.Close()
	s.conn.Close()
	s.client.Metrics.end(dirIn)
	s.release()
}

// idleConn moves its deadline on with every read and write: a source that
// stops sending ends the transfer, a slow one does not.
type idleConn struct {
	net.Conn
	idle time.Duration
}

func (c *idleConn) Read(p []byte) (int, error) {
	_ = c.Conn.SetReadDeadline(time.Now().Add(c.idle))
	return c.Conn.Read(p)
}

func (c *idleConn) Write(p []byte) (int, error) {
	_ = c.Conn.SetWriteDeadline(time.Now().Add(c.idle))
	return c.Conn.Write(p)
}
