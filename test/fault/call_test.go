package fault

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc/status"
)

const (
	// callTimeout bounds one attempt of a call; a hang is a failure.
	callTimeout = 2 * time.Minute
	// maxRetries is how often a call that fails (not killed) is retried
	// before it counts as failed for good. The kubelet retries forever, so
	// this is a verdict: a call that fails this often after a restart will
	// not succeed later either.
	maxRetries = 6
	// maxKillsPerCall bounds the kills aimed at one call and its retries.
	maxKillsPerCall = 3
)

// expectedCommands are the child commands each call is known to run, so
// kills can be aimed inside them before the watcher has seen one; what the
// watcher sees is added. An image's CreateVolume runs none: it reserves the
// image's blocks with fallocate(2), in the driver itself and too short to
// aim at by polling, so it is killed at a random delay like every call
// without a command.
var expectedCommands = map[string][]string{
	"CreateVolume/*":         {"lvm"},
	"NodeExpandVolume/*":     {"lvm"},
	"DeleteVolume/*":         {"lvm"},
	"NodeStageVolume/ext4":   {"mkfs.ext4", "e2fsck", "e2image", "resize2fs"},
	"NodeStageVolume/xfs":    {"mkfs.xfs", "xfs_growfs"},
	"NodeStageVolume/btrfs":  {"mkfs.btrfs", "btrfs", "btrfstune"},
	"NodePublishVolume/ext4": {"e2fsck", "e2image", "resize2fs"},
	"NodeExpandVolume/ext4":  {"resize2fs"},
	"NodeExpandVolume/xfs":   {"xfs_growfs"},
	"NodeExpandVolume/btrfs": {"btrfs"},
}

// learned is what clean calls taught about each call kind ("RPC/kind").
type learned struct {
	callTime map[string]time.Duration // moving average of clean calls
	commands map[string][]string      // child commands seen
	cmdTime  map[string]time.Duration // moving average of each command's run
}

func newLearned() *learned {
	return &learned{callTime: map[string]time.Duration{}, commands: map[string][]string{}, cmdTime: map[string]time.Duration{}}
}

func (l *learned) learn(key string, took time.Duration, runs map[string]time.Duration) {
	if old, ok := l.callTime[key]; ok {
		l.callTime[key] = (3*old + took) / 4
	} else {
		l.callTime[key] = took
	}
	for c, d := range runs {
		if !slices.Contains(l.commands[key], c) {
			l.commands[key] = append(l.commands[key], c)
			slices.Sort(l.commands[key])
		}
		if old, ok := l.cmdTime[c]; ok {
			l.cmdTime[c] = (3*old + d) / 4
		} else {
			l.cmdTime[c] = d
		}
	}
}

// plan draws the kill plan of one attempt. It always draws the same number
// of values, so the operations a seed picks do not depend on timing. focus
// are the commands that matter most in this call (mkfs of a new volume, an
// offline growth).
func (r *run) plan(rpc, kind string, kills int, focus []string) trigger {
	rng := r.killRng
	pKill, pCmd, pick, frac := rng.Float64(), rng.Float64(), rng.IntN(1<<30), rng.Float64()
	p := r.cfg.killRate
	if rpc == remoteCreate {
		p *= 1.7 // what the second node is there for: most transfers get a kill
	}
	if len(focus) > 0 || len(expectedCommands[rpc+"/"+kind]) > 0 || len(r.learned.commands[rpc+"/"+kind]) > 0 {
		p *= 1.4 // calls that run commands have more places to be killed at
	}
	// A volume is formatted once in its life, and an offline growth
	// happens once per expansion: most of those get a kill.
	if slices.ContainsFunc(focus, func(c string) bool { return strings.HasPrefix(c, "mkfs.") || c == "resize2fs" }) {
		p = max(p, 0.8)
	}
	if kills > 0 {
		p /= 2
	}
	if kills >= maxKillsPerCall || pKill >= p {
		return trigger{kind: noKill}
	}
	key := rpc + "/" + kind
	cmds := slices.Clone(r.learned.commands[key])
	for _, c := range r.expected(rpc, kind) {
		if !slices.Contains(cmds, c) {
			cmds = append(cmds, c)
		}
	}
	slices.Sort(cmds)
	if len(cmds) > 0 && pCmd < 0.75 {
		switch {
		case len(focus) > 0 && pick%3 != 0:
			// One of them: aimed at all, the kill would land in the
			// first to run (e2fsck before e2image before resize2fs).
			cmds = []string{focus[(pick/3)%len(focus)]}
		case pick%2 == 0:
			// One command the call was seen or is known to run.
			cmds = []string{cmds[(pick/2)%len(cmds)]}
		default:
			// Whichever long command it runs first (not the probes
			// that run before them).
			if long := r.expected(rpc, kind); len(long) > 0 {
				cmds = long
			}
		}
		typical := 10 * time.Millisecond
		for _, c := range cmds {
			typical = max(typical, r.learned.cmdTime[c])
		}
		// Anywhere in the command's run, which is seen a little late.
		return trigger{kind: inCommand, commands: cmds, delay: time.Duration(frac * 0.9 * float64(typical))}
	}
	d, ok := r.learned.callTime[key]
	if !ok {
		d = 50 * time.Millisecond
	}
	if rpc == remoteCreate {
		d = r.transferTime
	}
	return trigger{kind: afterDelay, delay: time.Duration(frac * 1.2 * float64(d))}
}

// focus lists the commands that matter most in a call on v.
func (r *run) focus(rpc string, v *volume) []string {
	var out []string
	switch {
	case rpc == "CreateVolume":
		out = []string{"lvm"}
	case rpc == "NodeStageVolume" && v.kind != "block" && !v.formatted:
		out = []string{"mkfs." + v.kind}
	case rpc == "NodeStageVolume" && v.kind == "ext4", rpc == "NodePublishVolume" && v.fsBehind:
		out = []string{"e2fsck", "e2image", "resize2fs"}
	case rpc == "NodeExpandVolume":
		out = append([]string{"lvm"}, expectedCommands[rpc+"/"+v.kind]...)
	}
	return slices.DeleteFunc(out, func(c string) bool { return !r.backendRuns(c) })
}

// expected lists the commands a call is known to run on this backend.
func (r *run) expected(rpc, kind string) []string {
	var out []string
	for _, k := range []string{rpc + "/*", rpc + "/" + kind} {
		for _, c := range expectedCommands[k] {
			if r.backendRuns(c) {
				out = append(out, c)
			}
		}
	}
	return out
}

// backendRuns tells whether the pool's kind runs a command at all.
func (r *run) backendRuns(c string) bool {
	if c == "lvm" {
		return strings.HasPrefix(r.cfg.backend, "lvm")
	}
	return true
}

// permanent is a call that failed for good.
type permanent struct {
	rpc   string
	err   error
	tries int
	kills []string
}

func (p *permanent) Error() string {
	s := fmt.Sprintf("%s still fails after %d retries: %v", p.rpc, p.tries, p.err)
	if len(p.kills) > 0 {
		s += "; kills before: " + strings.Join(p.kills, "; ")
	}
	return s
}

// call runs one CSI call as the kubelet or the provisioner would: it is
// retried after every failure, against a restarted driver after a kill,
// until it succeeds. accept marks an error that is the call's final answer
// (nil: none is). kills may be aimed at every attempt.
func (r *run) call(rpc string, v *volume, fn func(ctx context.Context) error, accept func(error) bool) error {
	key := rpc + "/" + v.kind
	var kills []string
	fails := 0
	for {
		tr := r.plan(rpc, v.kind, len(kills), r.focus(rpc, v))
		// The node whose driver a kill hits: the one called, or, in a
		// transfer, either side.
		victim := r.victim(rpc, v, tr)
		w := r.watch(victim.drv, tr, r.cfg.backend == "image" && (rpc == "CreateVolume" || rpc == "NodeExpandVolume"))
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		err := fn(ctx)
		cancel()
		took := time.Since(start)
		rec, victims, runs := w.stop()
		r.checkTransferError(rpc, v, err)
		r.stats.calls[rpc]++
		if rec != nil {
			r.stats.recordKill(rpc, rec, err == nil)
			desc := describeKill(rpc, rec, err)
			if r.peer != nil {
				r.stats.recordSide(rpc, victim.name)
				desc = victim.name + " " + desc
			}
			r.event("op %d: KILL %s", r.opNum, desc)
			kills = append(kills, desc)
			if werr := victim.drv.waitGone(victims); werr != nil {
				return werr
			}
			victim.drv = nil
			r.afterKill(rpc, v, victim)
			r.stats.restarts++
			if serr := victim.startDriver(); serr != nil {
				return fmt.Errorf("restarting flashpv on %s after a kill: %w", victim.name, serr)
			}
			if err == nil {
				return nil // the answer came before the kill
			}
			continue
		}
		if crashed := r.crashedNodes(); len(crashed) > 0 {
			for _, n := range crashed {
				r.failf(v, "%s: flashpv on %s exited by itself (%v) during the call; log: %s", rpc, n.name, n.drv.err, n.driverLog.Name())
				if serr := n.restart(); serr != nil {
					return serr
				}
			}
			continue
		}
		if err == nil {
			r.learned.learn(key, took, runs)
			return nil
		}
		if accept != nil && accept(err) {
			r.event("op %d: %s %s: accepted answer: %v", r.opNum, rpc, v.name, err)
			return err
		}
		fails++
		r.stats.retries[rpc]++
		r.event("op %d: %s %s: attempt %d failed: %v", r.opNum, rpc, v.name, fails, err)
		if fails > maxRetries {
			return &permanent{rpc: rpc, err: err, tries: maxRetries, kills: kills}
		}
		// The kubelet backs off exponentially; a short version of it.
		time.Sleep(time.Duration(25<<min(fails, 5)) * time.Millisecond)
	}
}

func describeKill(rpc string, rec *killRecord, err error) string {
	where := "no child command"
	if len(rec.commands) > 0 {
		where = "during " + strings.Join(rec.commands, ",")
	}
	if rec.inFalloc {
		where += ", in fallocate(2)"
	}
	s := fmt.Sprintf("in %s at %v (%s trigger", rpc, rec.at.Round(time.Millisecond), rec.trigger.kind)
	if len(rec.trigger.commands) > 0 {
		s += " " + strings.Join(rec.trigger.commands, "|")
	}
	s += "), " + where
	if err == nil {
		s += ", after the answer arrived"
	}
	return s
}

// isPermanent tells a call that failed for good from a broken test.
func isPermanent(err error) bool {
	var p *permanent
	return errors.As(err, &p)
}

// statusText is an error's gRPC code and message, for reports.
func statusText(err error) string {
	if s, ok := status.FromError(err); ok {
		return s.Code().String() + ": " + s.Message()
	}
	return err.Error()
}

// newRng makes a generator from the seed and a stream number.
func newRng(seed uint64, stream uint64) *rand.Rand {
	return rand.New(rand.NewPCG(seed, stream))
}
