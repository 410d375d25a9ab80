package driver

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"k8s.io/klog/v2"

	"github.com/flashpv/flashpv/pkg/move"
	"github.com/flashpv/flashpv/pkg/pool"
	"github.com/flashpv/flashpv/pkg/transfer"
)

// MoveOrders carries out the cluster controller's orders for moving a
// volume between nodes (docs/moving.md). Each order is idempotent: its
// state is the volume's metadata (Move, Incoming), and a job that fetches
// data runs in the background, its answer Running until it ends. A node
// that restarts forgets its jobs, not what they did: the order sent again
// starts the job again, and it goes on from the metadata.
type MoveOrders struct {
	d *Driver

	mu      sync.Mutex
	jobs    map[jobKey]*moveJob
	retries map[jobKey]*retries // attempts that ended to be tried again
	base    context.Context     // Run's: jobs end with it
	running sync.WaitGroup
}

type jobKey struct {
	move  string
	order move.Order
}

// moveJob is a running or ended import or catch-up.
type moveJob struct {
	done   chan struct{}
	cancel context.CancelFunc
	answer transfer.OrderAnswer // once done
	retry  bool                 // ended by something a new attempt may not meet
}

// NewMoveOrders returns d's order handler, for its transfer server.
func NewMoveOrders(d *Driver) *MoveOrders {
	return &MoveOrders{d: d, jobs: map[jobKey]*moveJob{}, retries: map[jobKey]*retries{}}
}

var _ transfer.OrderHandler = (*MoveOrders)(nil)

// Run lets jobs run until ctx ends, then ends them and waits for them: a
// stop cuts a fetch at once, as a kill would, and the order sent again
// after the restart resumes it.
func (o *MoveOrders) Run(ctx context.Context) error {
	o.mu.Lock()
	o.base = ctx
	o.mu.Unlock()
	<-ctx.Done()
	o.mu.Lock()
	for _, j := range o.jobs {
		j.cancel()
	}
	o.mu.Unlock()
	o.running.Wait()
	return nil
}

// errRetry marks a failure that a new attempt may not meet (a cut
// connection, a restart of the source, a lock held for a while): the order
// stays Running, and the next one sent starts over.
var errRetry = errors.New("retrying")

// A job whose attempts keep ending to be tried again, at least
// maxAttempts of them for at least giveUpAfter in one process, is Failed:
// a failure that keeps coming back is no cut connection, and the move had
// better roll back than wait for ever. A source that restarts, even a
// node that reboots, is back sooner.
const (
	maxAttempts = 8
	giveUpAfter = 15 * time.Minute
)

// retries counts the attempts of a job that ended to be tried again.
type retries struct {
	n     int
	since time.Time
}

// Order carries out req, or answers how far it is.
func (o *MoveOrders) Order(ctx context.Context, req move.OrderRequest) (transfer.OrderAnswer, error) {
	id, err := pool.ParseVolumeID(req.Volume)
	if err != nil {
		return transfer.OrderAnswer{}, &transfer.RemoteError{Code: transfer.CodeInvalid, Message: err.Error()}
	}
	var a transfer.OrderAnswer
	switch req.Order {
	case move.OrderFence, move.OrderUnfence:
		a = answer(o.fence(ctx, req, req.Order == move.OrderFence))
	case move.OrderDrop:
		a = answer(o.drop(ctx, req))
	case move.OrderImport, move.OrderCatchUp:
		if o.d.remote == nil {
			return a, &transfer.RemoteError{Code: transfer.CodeInvalid, Message: "this node fetches no data from other nodes"}
		}
		if o.d.pools[id.Pool] == nil {
			return failed("node %s has no pool %s, which volume %s names", o.d.nodeID, id.Pool, req.Volume), nil
		}
		a = o.background(req)
	default:
		return a, &transfer.RemoteError{Code: transfer.CodeInvalid, Message: fmt.Sprintf("unknown order %q", req.Order)}
	}
	return a, nil
}

func failed(format string, args ...any) transfer.OrderAnswer {
	return transfer.OrderAnswer{Progress: move.Failed, Message: fmt.Sprintf(format, args...)}
}

// answer is the answer of an order done at once: Finished, Running for
// what a repetition may get past, or Failed with why.
func answer(msg string, err error) transfer.OrderAnswer {
	switch {
	case err == nil:
		return transfer.OrderAnswer{Progress: move.Finished, Message: msg}
	case errors.Is(err, errRetry), errors.Is(err, errAborted):
		return transfer.OrderAnswer{Progress: move.Running, Message: err.Error()}
	}
	return transfer.OrderAnswer{Progress: move.Failed, Message: err.Error()}
}

// background answers an import's or a catch-up's progress, starting it
// when no job of it runs or it ended in a way worth trying again.
func (o *MoveOrders) background(req move.OrderRequest) transfer.OrderAnswer {
	key := jobKey{req.MoveID, req.Order}
	o.mu.Lock()
	defer o.mu.Unlock()
	if j := o.jobs[key]; j != nil {
		select {
		case <-j.done:
			if !j.retry {
				return j.answer
			}
			r := o.retries[key]
			if r == nil {
				r = &retries{since: time.Now()}
				o.retries[key] = r
			}
			if r.n++; r.n >= maxAttempts && time.Since(r.since) >= giveUpAfter {
				j.retry = false
				j.answer = failed("%d attempts failed since %s, the last: %s", r.n, r.since.UTC().Format(time.RFC3339), j.answer.Message)
				return j.answer
			}
			delete(o.jobs, key) // and start again
		default:
			return transfer.OrderAnswer{Progress: move.Running, Message: o.progress(req)}
		}
	}
	if o.base == nil || o.base.Err() != nil {
		return transfer.OrderAnswer{Progress: move.Running, Message: "this node is starting or stopping"}
	}
	run := o.importCopy
	if req.Order == move.OrderCatchUp {
		run = o.catchUp
	}
	ctx, cancel := context.WithCancel(o.base)
	j := &moveJob{done: make(chan struct{}), cancel: cancel}
	o.jobs[key] = j
	o.running.Add(1)
	go func() {
		defer o.running.Done()
		defer cancel()
		msg, err := run(ctx, req)
		if err != nil {
			klog.InfoS("Move order ended", "move", req.MoveID, "order", req.Order, "volumeID", req.Volume, "err", err)
		} else {
			klog.InfoS("Move order done", "move", req.MoveID, "order", req.Order, "volumeID", req.Volume, "result", msg)
		}
		j.answer = answer(msg, err)
		j.retry = j.answer.Progress == move.Running || ctx.Err() != nil
		close(j.done)
	}()
	return transfer.OrderAnswer{Progress: move.Running, Message: "started"}
}

// progress says how far the volume's copy is.
func (o *MoveOrders) progress(req move.OrderRequest) string {
	_, v, err := o.d.lookup(req.Volume)
	if err != nil || v.Incoming == nil {
		return string(req.Order) + " in progress"
	}
	return fmt.Sprintf("%s in progress: %d of %d bytes received", req.Order, v.Incoming.Next, v.Incoming.Size)
}

// stop ends the jobs of a move and waits for them.
func (o *MoveOrders) stop(moveID string) {
	o.mu.Lock()
	var running []*moveJob
	for k, j := range o.jobs {
		if k.move == moveID {
			j.cancel()
			running = append(running, j)
			delete(o.jobs, k)
			delete(o.retries, k)
		}
	}
	o.mu.Unlock()
	for _, j := range running {
		<-j.done
	}
}

// lockVolume takes a volume's lock for an order; a volume busy with
// another call is retried.
func (o *MoveOrders) lockVolume(id string) (func(), error) {
	release, err := o.d.locks.acquire(id)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errRetry, err)
	}
	return release, nil
}

// fence holds the volume on this node (on) or lets it go again (off).
func (o *MoveOrders) fence(ctx context.Context, req move.OrderRequest, on bool) (string, error) {
	release, err := o.lockVolume(req.Volume)
	if err != nil {
		return "", err
	}
	defer release()
	p, v, err := o.d.lookup(req.Volume)
	if errors.Is(err, pool.ErrNotFound) {
		if !on {
			return "no such volume here, nothing to unfence", nil
		}
		return "", fmt.Errorf("no volume %s on node %s to fence", req.Volume, o.d.nodeID)
	}
	if err != nil {
		return "", fmt.Errorf("%w: %v", errRetry, err)
	}
	m := v.Move
	switch {
	case on && v.Incoming != nil:
		return "", fmt.Errorf("volume %s on node %s is itself a copy still arriving", v.ID, o.d.nodeID)
	case m != nil && m.Fenced && m.ID != req.MoveID:
		return "", fmt.Errorf("volume %s is fenced by another move, %s", v.ID, m.ID)
	case on && m != nil && m.Fenced:
		return "fenced", nil
	case !on && (m == nil || !m.Fenced):
		return "not fenced", nil
	}
	st := v.NodeState
	st.Move = nil
	if on {
		st.Move = &pool.Move{ID: req.MoveID, Fenced: true, Peer: req.Target}
	}
	if _, err := p.SetNodeState(ctx, v.Key(), st); err != nil {
		return "", fmt.Errorf("%w: recording the fence: %v", errRetry, err)
	}
	klog.InfoS("Move fence", "volumeID", v.ID, "move", req.MoveID, "fenced", on, "target", req.Target)
	if on {
		return "fenced", nil
	}
	return "unfenced", nil
}

// drop deletes this node's copy of the volume: the source's, fenced by the
// move, or the target's, made by it. Nothing else: a volume the move did
// not fence or make is not the move's to delete.
func (o *MoveOrders) drop(ctx context.Context, req move.OrderRequest) (string, error) {
	o.stop(req.MoveID)
	release, err := o.lockVolume(req.Volume)
	if err != nil {
		return "", err
	}
	defer release()
	p, v, err := o.d.lookup(req.Volume)
	if errors.Is(err, pool.ErrNotFound) {
		return "no such volume here", nil
	}
	if err != nil {
		return "", fmt.Errorf("%w: %v", errRetry, err)
	}
	if v.Move == nil || v.Move.ID != req.MoveID {
		return "", fmt.Errorf("volume %s on node %s is not part of move %s; it is not deleted", v.ID, o.d.nodeID, req.MoveID)
	}
	if err := o.d.releaseForDelete(ctx, p, v); err != nil {
		return "", err
	}
	if err := p.Delete(ctx, v.Key()); err != nil {
		return "", fmt.Errorf("%w: deleting volume %s: %v", errRetry, v.ID, err)
	}
	klog.InfoS("Move dropped a copy", "volumeID", v.ID, "move", req.MoveID, "incoming", v.Incoming != nil)
	return "deleted", nil
}
