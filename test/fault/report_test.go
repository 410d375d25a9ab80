package fault

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
)

// stats count what a run did and where its kills landed.
type stats struct {
	ops, verified       int
	restarts, idleKills int
	calls, retries      map[string]int
	// kills by RPC and trigger kind; answered: the answer was on its way.
	kills    map[string]map[triggerKind]int
	answered map[string]int
	// inside counts kills by trigger kind that cut a call short (the
	// answer had not arrived): what the floors judge.
	inside map[triggerKind]int
	// commands counts kills by the child command that ran at the kill
	// ("fallocate(2)": the driver in that system call; "-": none).
	commands map[string]int
	// sides counts kills by RPC and the node killed, with two nodes.
	sides  map[string]map[string]int
	copies copyStats
}

func newStats() *stats {
	return &stats{calls: map[string]int{}, retries: map[string]int{}, kills: map[string]map[triggerKind]int{},
		answered: map[string]int{}, inside: map[triggerKind]int{}, commands: map[string]int{}, sides: map[string]map[string]int{}}
}

func (s *stats) recordSide(rpc, node string) {
	if s.sides[rpc] == nil {
		s.sides[rpc] = map[string]int{}
	}
	s.sides[rpc][node]++
}

func (s *stats) recordKill(rpc string, rec *killRecord, answered bool) {
	if s.kills[rpc] == nil {
		s.kills[rpc] = map[triggerKind]int{}
	}
	s.kills[rpc][rec.trigger.kind]++
	if answered {
		s.answered[rpc]++
	} else {
		s.inside[rec.trigger.kind]++
	}
	for _, c := range rec.commands {
		s.commands[c]++
	}
	if rec.inFalloc {
		s.commands["fallocate(2)"]++
	}
	if len(rec.commands) == 0 && !rec.inFalloc {
		s.commands["-"]++
	}
}

func (s *stats) totalKills() int {
	n := s.idleKills
	for _, byKind := range s.kills {
		for _, k := range byKind {
			n += k
		}
	}
	return n
}

// report is the run's summary: what ran, where kills landed, what failed.
func (r *run) report() string {
	s := r.stats
	var b strings.Builder
	cap := "with CAP_SYS_RESOURCE (ext4 grows online)"
	if !r.canGrowExt4 {
		cap = "without CAP_SYS_RESOURCE (ext4 grows offline)"
	}
	fmt.Fprintf(&b, "flashpv fault injection: seed %d (FLASHPV_FAULT_SEED=%d), %d operations, backend %s, driver %s\n",
		r.cfg.seed, r.cfg.seed, s.ops, r.cfg.backend, cap)
	calls := 0
	for _, n := range s.calls {
		calls += n
	}
	fmt.Fprintf(&b, "%d calls, %d kills (%d between calls), %d driver starts, %d data verifications, %d failures\n\n",
		calls, s.totalKills(), s.idleKills, r.starts, s.verified, len(r.failures))

	w := tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "RPC\tcalls\tretries\tkills inside\tat a delay\tin a command\tanswer already sent\t")
	for _, rpc := range slices.Sorted(maps.Keys(s.calls)) {
		k := s.kills[rpc]
		total := k[afterDelay] + k[inCommand]
		fmt.Fprintf(w, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t\n", rpc, s.calls[rpc], s.retries[rpc], total,
			k[afterDelay], k[inCommand], s.answered[rpc])
	}
	w.Flush()
	b.WriteString(r.floorReport())
	b.WriteString("\n")
	w = tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "running at the kill\tkills\t")
	for _, c := range slices.Sorted(maps.Keys(s.commands)) {
		name := c
		if c == "-" {
			name = "(no child command)"
		}
		fmt.Fprintf(w, "%s\t%d\t\n", name, s.commands[c])
	}
	w.Flush()
	if r.peer != nil {
		r.reportCopies(&b)
	}
	if len(r.failures) > 0 {
		b.WriteString("\nfailures:\n")
		for _, f := range r.failures {
			b.WriteString("- " + f + "\n")
		}
	}
	return b.String()
}
