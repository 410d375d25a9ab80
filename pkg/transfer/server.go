package transfer

import (
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
	"sync"
	"time"

	"k8s.io/klog/v2"

	"github.com/flashpv/flashpv/pkg/transfer/auth"
	"github.com/flashpv/flashpv/pkg/transfer/stream"
	"github.com/flashpv/flashpv/pkg/transfer/tree"
)

// Content is what a source serves: its header (Layout, Start and Segment
// are the server's to fill) and its data: block content in Data, or a
// file tree in Tree, an open directory.
type Content struct {
	Header
	Data  stream.BlockSource
	Tree  *os.File
	Close func()
	// Base, for a delta (Header.Base), is the snapshot Data is compared
	// with, BaseSize its size.
	Base     stream.BlockSource
	BaseSize int64
}

// Opener finds a content on this node and keeps it from changing or going
// away until Close. Its errors carry a RemoteError where the code matters.
type Opener interface {
	OpenTransfer(ctx context.Context, kind, source string) (*Content, error)
}

// DeltaOpener is an Opener that also opens a volume as a delta against a
// snapshot of it (a move's catch-up), or, where no delta can be made (a
// file tree), the volume whole.
type DeltaOpener interface {
	OpenDelta(ctx context.Context, volume, base string) (*Content, error)
}

// Server serves this node's snapshots and volumes to the nodes that
// capabilities name.
type Server struct {
	Identity *Identity
	Replay   *auth.Replay
	Open     Opener
	Slots    *stream.Slots
	Limit    *stream.Limiter
	Metrics  *Metrics
	// Orders carries out the controller's orders (nil: none taken).
	Orders OrderHandler
	// IdleTimeout ends a transfer whose peer stops reading.
	IdleTimeout time.Duration
	Now         func() time.Time

	ordersOnce sync.Once
	orders     chan struct{} // orders in flight
}

// idle is how long a connection may make no progress.
func (s *Server) idle() time.Duration {
	if s.IdleTimeout > 0 {
		return s.IdleTimeout
	}
	return 2 * time.Minute
}

func (s *Server) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

// Serve listens on addr until ctx ends.
func (s *Server) Serve(ctx context.Context, addr string) error {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	return s.ServeListener(ctx, lis)
}

// ServeListener serves on lis until ctx ends.
func (s *Server) ServeListener(ctx context.Context, lis net.Listener) error {
	cfg := auth.ServerConfig(s.Identity.current, s.Identity.Trust)
	cfg.NextProtos = []string{"http/1.1"}
	srv := &http.Server{
		Handler:           s.Handler(),
		TLSConfig:         cfg,
		ReadHeaderTimeout: 10 * time.Second,
		// A connection carries one transfer: nothing waits on it after.
		IdleTimeout: 10 * time.Second,
		// HTTP/1.1 only: one stream per connection, no flow-control
		// window between the data and the socket.
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){},
		BaseContext:  func(net.Listener) context.Context { return ctx },
		ConnContext:  withBulkConn,
		ErrorLog:     nil,
	}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
		srv.Close()
	}()
	klog.InfoS("Transfer server listening", "address", lis.Addr().String())
	err := srv.ServeTLS(bulkListener{lis}, "", "")
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Handler is the transfer server's HTTP handler (TLS terminated before it).
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+PathRead, s.read)
	mux.HandleFunc("POST "+PathOrder, s.order)
	return mux
}

func (s *Server) read(w http.ResponseWriter, r *http.Request) {
	if r.TLS == nil {
		refuse(w, http.StatusForbidden, &RemoteError{CodeDenied, "TLS required"})
		return
	}
	peer, err := auth.PeerNode(*r.TLS)
	if err != nil {
		refuse(w, http.StatusForbidden, &RemoteError{CodeDenied, "no node certificate"})
		return
	}
	// The request is small: a peer that stalls it holds no connection.
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Now().Add(10 * time.Second))
	var req ReadRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxRequest))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil || dec.More() {
		refuse(w, http.StatusBadRequest, &RemoteError{CodeInvalid, "malformed request"})
		return
	}
	_ = rc.SetReadDeadline(time.Time{})
	if err := s.authorize(peer, req); err != nil {
		klog.InfoS("Transfer refused", "peer", peer, "kind", req.Kind, "source", req.Source, "target", req.Target, "reason", err)
		s.Metrics.served(resultDenied)
		refuse(w, http.StatusForbidden, &RemoteError{CodeDenied, err.Error()})
		return
	}
	release, ok := s.Slots.TryAcquire()
	if !ok {
		s.Metrics.served(resultBusy)
		refuse(w, http.StatusServiceUnavailable, &RemoteError{CodeBusy, "this node runs as many transfers as it may; retry later"})
		return
	}
	defer release()
	s.send(w, r, peer, req)
}

// authorize checks the capability: signed by a trusted key, in time, for
// this node as source and peer as target, for this very content and
// target, and never used before.
func (s *Server) authorize(peer string, req ReadRequest) error {
	trust, err := s.Identity.Trust()
	if err != nil {
		return fmt.Errorf("no trusted keys: %w", err)
	}
	now := s.now()
	c, err := trust.Verify(req.Capability, now)
	if err != nil {
		return err
	}
	if req.Kind == auth.KindDelta {
		err = auth.AuthorizeDelta(c, s.Identity.Node, peer, req.Source, req.Base)
	} else if req.Base != "" {
		err = fmt.Errorf("%w: a base for a %s", auth.ErrWrongSource, req.Kind)
	} else {
		err = auth.Authorize(c, s.Identity.Node, peer, req.Kind, req.Source)
	}
	if err != nil {
		return err
	}
	if c.Target != req.Target {
		return fmt.Errorf("%w: the capability is for volume %q", auth.ErrWrongSource, c.Target)
	}
	return s.Replay.Use(c.ID, time.Unix(c.Expires, 0), now)
}

func (s *Server) send(w http.ResponseWriter, r *http.Request, peer string, req ReadRequest) {
	ctx := r.Context()
	c, err := s.open(ctx, req)
	if err != nil {
		var re *RemoteError
		if !errors.As(err, &re) {
			re = &RemoteError{CodeInternal, err.Error()}
		}
		klog.InfoS("Transfer source unavailable", "peer", peer, "source", req.Source, "err", err)
		s.Metrics.served(resultFailed)
		refuse(w, statusOf(re.Code), re)
		return
	}
	defer c.Close()
	h := c.Header
	h.Layout, h.Start, h.Segment = "", 0, stream.DefaultSegment
	if c.Tree != nil {
		h.Layout, h.Segment = LayoutTree, 0
		treeFormat(&h, r.Header, req)
	} else if c.Base != nil {
		h.Version = "" // a delta starts over: the volume is no snapshot
	} else if h.Version != "" && req.Version == h.Version && req.From > 0 && req.From <= h.Size && req.From%h.Segment == 0 {
		h.Start = req.From
	}
	rc := http.NewResponseController(w)
	out := &deadlineWriter{w: w, rc: rc, idle: s.idle(), bulk: bulkConnOf(ctx)}
	if out.bulk != nil {
		out.bulk.setBulk(true)
		// Before the server ends the response.
		defer out.bulk.setBulk(false)
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.WriteHeader(http.StatusOK)
	start := time.Now()
	klog.InfoS("Transfer started", "peer", peer, "source", h.Source, "target", req.Target, "size", h.Size, "from", h.Start, "tree", c.Tree != nil, "treeResumed", h.Resume != "")
	s.Metrics.begin(dirOut)
	defer s.Metrics.end(dirOut)
	// Straight to the connection: the block and tree senders buffer their
	// frames themselves, and a buffer here would copy every byte once more.
	err = writeHeader(out, h)
	var st stream.Stats
	if err == nil {
		st, err = s.frames(ctx, out, c, h)
	}
	s.Metrics.add(dirOut, st)
	if err != nil {
		klog.InfoS("Transfer cut short", "peer", peer, "source", h.Source, "target", req.Target, "err", err, "dataBytes", st.DataBytes)
		s.Metrics.served(resultFailed)
		return
	}
	s.Metrics.served(resultDone)
	klog.InfoS("Transfer sent", "peer", peer, "source", h.Source, "target", req.Target, "dataBytes", st.DataBytes, "wireBytes", st.WireBytes, "duration", time.Since(start))
}

// open opens what req asks for.
func (s *Server) open(ctx context.Context, req ReadRequest) (*Content, error) {
	if req.Kind != auth.KindDelta {
		return s.Open.OpenTransfer(ctx, req.Kind, req.Source)
	}
	do, ok := s.Open.(DeltaOpener)
	if !ok {
		return nil, &RemoteError{CodeInvalid, "this node sends no deltas"}
	}
	return do.OpenDelta(ctx, req.Source, req.Base)
}

// treeFormat chooses how a tree is sent: with checkpoints to a target
// that asks for them, resumed after the target's checkpoint when the
// source is a snapshot (a Version) of the version the target holds. A
// volume, which may have changed since, starts over.
func treeFormat(h *Header, hdr http.Header, req ReadRequest) {
	if hdr.Get(HeaderTreeFormat) != strconv.Itoa(TreeFormatCheckpoints) {
		return
	}
	h.TreeFormat = TreeFormatCheckpoints
	cp := hdr.Get(HeaderTreeResume)
	if cp == "" || h.Version == "" || req.Version != h.Version {
		return
	}
	if _, err := tree.ParseCheckpoint(cp); err == nil {
		h.Resume = cp
	}
}

// frames writes c's frames, which follow its header h.
func (s *Server) frames(ctx context.Context, w io.Writer, c *Content, h Header) (stream.Stats, error) {
	if c.Tree != nil {
		opt, err := h.treeOptions()
		if err != nil {
			return stream.Stats{}, err
		}
		st, err := tree.Send(ctx, w, c.Tree, s.Limit, opt)
		if opt.From != nil {
			st.DataBytes -= opt.From.DataBytes // sent by attempts before
		}
		return stream.Stats{DataBytes: st.DataBytes, WireBytes: st.WireBytes}, err
	}
	if c.Base != nil {
		return stream.SendDelta(ctx, w, c.Data, c.Base, h.Size, c.BaseSize, h.Start, h.Segment, s.Limit)
	}
	return stream.Send(ctx, w, c.Data, h.Size, h.Start, h.Segment, s.Limit)
}

// deadlineWriter moves the connection's write deadline on with every
// write: a peer that stops reading ends the transfer, a slow one does not.
// Each write's TLS records leave in one go when the connection gathers
// them (bulk).
type deadlineWriter struct {
	w    http.ResponseWriter
	rc   *http.ResponseController
	idle time.Duration
	bulk *bulkConn
}

func (d *deadlineWriter) Write(p []byte) (int, error) {
	_ = d.rc.SetWriteDeadline(time.Now().Add(d.idle))
	n, err := d.w.Write(p)
	if err == nil && d.bulk != nil {
		err = d.bulk.Flush()
	}
	return n, err
}

func statusOf(code string) int {
	switch code {
	case CodeNotFound:
		return http.StatusNotFound
	case CodeInvalid:
		return http.StatusBadRequest
	case CodeBusy, CodeAborted:
		return http.StatusServiceUnavailable
	case CodePrecondition:
		return http.StatusConflict
	case CodeDenied:
		return http.StatusForbidden
	}
	return http.StatusInternalServerError
}

func refuse(w http.ResponseWriter, status int, e *RemoteError) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Connection", "close")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(e)
}
