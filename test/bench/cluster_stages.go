package main

// The stages of a scale-up's replicas, as the bench's poll sees them, and
// their summaries per round and over rounds.

import (
	"fmt"
	"time"
)

// The stages a replica goes through, in order. A claim of a
// WaitForFirstConsumer class gets its node from the scheduler (the
// selected-node annotation), then is provisioned and bound, then its pod is
// bound to the node; on emptyDir a pod is bound at once.
var stageNames = []string{"created", "node picked", "claim bound", "pod scheduled", "pod ready"}

// stageTimes records, per stage and replica, when the poll first saw it.
type stageTimes map[string]map[string]time.Duration

func (st stageTimes) see(stage, replica string, at time.Duration) {
	if st[stage] == nil {
		st[stage] = map[string]time.Duration{}
	}
	if _, ok := st[stage][replica]; !ok {
		st[stage][replica] = at
	}
}

// stage is one stage over the replicas: the median time to it and the time
// the last replica got there, in seconds from the scale request.
type stage struct {
	Name   string  `json:"name"`
	Median float64 `json:"median_sec"`
	Last   float64 `json:"last_sec"`
}

func (s stage) String() string { return fmt.Sprintf("%s %.1f/%.1f", s.Name, s.Median, s.Last) }

func (st stageTimes) summary() []stage {
	var out []stage
	for _, name := range stageNames {
		var xs []float64
		for _, d := range st[name] {
			xs = append(xs, d.Seconds())
		}
		if len(xs) == 0 {
			continue
		}
		sp := spreadOf(xs)
		out = append(out, stage{Name: name, Median: sp.Median, Last: sp.Max})
	}
	return out
}

// medianStages takes the median of each stage's times over rounds.
func medianStages(rounds [][]stage) []stage {
	var out []stage
	for _, name := range stageNames {
		var med, last []float64
		for _, r := range rounds {
			for _, s := range r {
				if s.Name == name {
					med, last = append(med, s.Median), append(last, s.Last)
				}
			}
		}
		if len(med) > 0 {
			out = append(out, stage{Name: name, Median: spreadOf(med).Median, Last: spreadOf(last).Median})
		}
	}
	return out
}
