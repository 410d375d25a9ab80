//go:build powerloss

package powerloss

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"sync"
)

// An event is one line the guest prints, "PL " and JSON, on the output the
// host streams from the VM. A call line is printed before a call starts and
// an ack line only once it has returned success (a record's ack once its
// fsync has returned), so the lines the host holds at a power cut tell what
// was acknowledged: those results must survive the cut. A call without its
// ack was in flight: its result may or may not be there, but never half.
type event struct {
	Ev   string `json:"ev"`             // call, ack, or start/done/check (progress)
	Op   string `json:"op"`             // create, delete, snap, delsnap, expand, rec
	Seq  int    `json:"seq,omitempty"`  // matches a call and its ack
	Pool string `json:"pool,omitempty"` // pool of a volume or snapshot
	Name string `json:"name,omitempty"` // volume or snapshot name
	ID   string `json:"id,omitempty"`   // volume or snapshot ID
	Kind string `json:"kind,omitempty"` // ext4, xfs, btrfs, block
	Size int64  `json:"size,omitempty"` // created or expanded size
	// Src: a snapshot's source volume ID; Snap: a restore's snapshot ID.
	Src  string `json:"src,omitempty"`
	Snap string `json:"snap,omitempty"`
	// Recs: records acknowledged (rec), in the source before the snapshot
	// was taken (snap), expected in a restore (create).
	Recs int    `json:"recs,omitempty"`
	Msg  string `json:"msg,omitempty"`
}

const linePrefix = "PL "

// emitter prints events, one write(2) per line, in the order they happen.
type emitter struct {
	mu  sync.Mutex
	seq int
}

func (e *emitter) emit(ev event) {
	b, err := json.Marshal(ev)
	if err != nil {
		panic(err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	os.Stdout.Write([]byte(linePrefix + string(b) + "\n"))
}

// call prints a call line and returns its sequence number for the ack.
func (e *emitter) call(ev event) int {
	e.mu.Lock()
	e.seq++
	ev.Seq = e.seq
	e.mu.Unlock()
	ev.Ev = "call"
	e.emit(ev)
	return ev.Seq
}

func (e *emitter) ack(seq int, ev event) {
	ev.Ev, ev.Seq = "ack", seq
	e.emit(ev)
}

func (e *emitter) progress(ev string, format string, args ...any) {
	e.emit(event{Ev: ev, Msg: fmt.Sprintf(format, args...)})
}

// mark tells the host how far the boot got, in seconds since the kernel
// started.
func (e *emitter) mark(what string) {
	up := "?"
	if b, err := os.ReadFile("/proc/uptime"); err == nil {
		up = strings.Fields(string(b))[0]
	}
	e.progress("mark", "%s %s", what, up)
}

// parseEvent reads one line of output; ok is false for other lines and for
// a line cut short by the power cut.
func parseEvent(line string) (event, bool) {
	var ev event
	rest, found := strings.CutPrefix(line, linePrefix)
	if !found || json.Unmarshal([]byte(rest), &ev) != nil {
		return ev, false
	}
	return ev, true
}
