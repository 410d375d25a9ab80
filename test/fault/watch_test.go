package fault

import (
	"runtime"
	"slices"
	"sync"
	"time"
)

// A watcher runs beside every call: it polls the driver's children every
// millisecond (what commands a call runs and for how long is learned from
// the calls that are not killed) and, when the call's kill plan says so,
// kills the driver's process group.

// triggerKind says when a planned kill fires.
type triggerKind int

const (
	noKill     triggerKind = iota
	afterDelay             // a random moment of the call
	inCommand              // a random moment of a child command's run
)

// triggerKinds are the kinds that kill.
var triggerKinds = []triggerKind{afterDelay, inCommand}

func (k triggerKind) String() string {
	return [...]string{"none", "delay", "command"}[k]
}

// trigger is a kill plan for one attempt of a call.
type trigger struct {
	kind     triggerKind
	delay    time.Duration // afterDelay: from the start; inCommand: from when a command is first seen
	commands []string      // inCommand: the commands aimed at, the first one seen counts
}

// sighting is one child seen while a call ran.
type sighting struct {
	comm        string
	first, last time.Time
}

// killRecord is where a kill landed.
type killRecord struct {
	trigger  trigger
	at       time.Duration // from the call's start
	commands []string      // child commands running at the kill
	inFalloc bool          // the driver was in fallocate(2)
}

// watch polls one call. stop ends it.
type watch struct {
	r  *run
	p  *driverProc
	tr trigger
	// falloc: the call may fallocate(2), so a kill records whether it
	// landed there (reading every thread's system call costs time before
	// the kill). fallocate(2) is too short to aim at by polling: a kill
	// lands in it only at a delay.
	falloc bool
	start  time.Time
	quit   chan struct{}
	done   chan struct{}

	// mu orders a kill against the end of the call: once callDone is set,
	// no kill fires, so a kill always lands while the call is in flight.
	mu       *sync.Mutex
	callDone bool
	killed   *killRecord
	victims  []int
	seen     map[int]*sighting
}

func (r *run) watch(p *driverProc, tr trigger, falloc bool) *watch {
	w := &watch{r: r, p: p, tr: tr, falloc: falloc, start: time.Now(), quit: make(chan struct{}), done: make(chan struct{}),
		mu: &r.killMu, seen: map[int]*sighting{}}
	go w.loop()
	return w
}

func (w *watch) loop() {
	defer close(w.done)
	var fireAt time.Time
	if w.tr.kind == afterDelay {
		fireAt = w.start.Add(w.tr.delay)
	}
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for {
		now := time.Now()
		for pid, c := range descendants(w.p.pid) {
			s := w.seen[pid]
			if s == nil {
				s = &sighting{comm: c, first: now}
				w.seen[pid] = s
			}
			if c != "" && c != s.comm {
				s.comm = c // exec'd after the fork was first seen
			}
			s.last = now
			if w.tr.kind == inCommand && fireAt.IsZero() && slices.Contains(w.tr.commands, s.comm) {
				fireAt = now.Add(w.tr.delay)
			}
		}
		if !fireAt.IsZero() && !now.Before(fireAt) && w.fire() {
			return
		}
		// Most calls take a few milliseconds: a kill at a delay is aimed
		// by spinning through the last stretch, not by the ticker.
		if w.tr.kind == afterDelay && time.Until(fireAt) < 2*time.Millisecond {
			for time.Now().Before(fireAt) {
				select {
				case <-w.quit:
					return
				default:
					runtime.Gosched()
				}
			}
			if w.fire() {
				return
			}
		}
		select {
		case <-w.quit:
			return
		case <-tick.C:
		}
	}
}

// fire kills the driver unless the call is over; it reports whether the
// watch is done.
func (w *watch) fire() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.callDone {
		return true
	}
	below := descendants(w.p.pid)
	rec := &killRecord{trigger: w.tr, at: time.Since(w.start), inFalloc: w.falloc && inSyscall(w.p.pid, fallocateNr)}
	w.victims = w.p.signalGroup(below)
	for _, c := range below {
		if c == "" || c == "flashpv" || c == "setpriv" {
			c = "(fork)" // forked, not yet exec'd
		}
		rec.commands = append(rec.commands, c)
	}
	slices.Sort(rec.commands)
	rec.commands = slices.Compact(rec.commands)
	w.killed = rec
	return true
}

// stop marks the call as over and ends the watch. It returns the kill, if
// one fired, and the commands seen with how long each was seen running.
func (w *watch) stop() (*killRecord, []int, map[string]time.Duration) {
	w.mu.Lock()
	w.callDone = true
	w.mu.Unlock()
	close(w.quit)
	<-w.done
	runs := map[string]time.Duration{}
	for _, s := range w.seen {
		if s.comm != "" && s.comm != "flashpv" && s.comm != "setpriv" {
			runs[s.comm] = max(runs[s.comm], s.last.Sub(s.first))
		}
	}
	return w.killed, w.victims, runs
}
