package driver

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/flashpv/flashpv/pkg/move"
	"github.com/flashpv/flashpv/pkg/pool"
)

func TestMoveAnswers(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want move.Progress
	}{
		{"done", nil, move.Finished},
		{"a cut connection", orderErr(fmt.Errorf("%w: receiving: EOF", errAborted)), move.Running},
		{"a stop", orderErr(context.Canceled), move.Running},
		{"a busy volume", fmt.Errorf("%w: busy", errRetry), move.Running},
		{"a source that refuses", orderErr(fmt.Errorf("%w: volume in use", errPrecondition)), move.Failed},
		{"a pool that cannot take it", orderErr(invalid("pool kind")), move.Failed},
		{"anything else", errors.New("the copy does not match"), move.Failed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := answer("", tt.err).Progress; got != tt.want {
				t.Errorf("%v: %s, want %s", tt.err, got, tt.want)
			}
		})
	}
}

func TestMoveCopiesAreNotAbandoned(t *testing.T) {
	old := time.Now().Add(-2 * time.Hour)
	restore := &pool.Volume{NodeState: pool.NodeState{Incoming: &pool.Incoming{Updated: old}}}
	moved := &pool.Volume{NodeState: pool.NodeState{Incoming: &pool.Incoming{Updated: old, Received: true}, Move: &pool.Move{ID: "m"}}}
	if !abandoned(restore, time.Hour) {
		t.Error("a restore without progress for 2 h is not abandoned")
	}
	if abandoned(moved, time.Hour) {
		t.Error("a move's copy waiting for its catch-up is taken for abandoned")
	}
}

func TestFenced(t *testing.T) {
	for _, tt := range []struct {
		move *pool.Move
		want bool
	}{
		{nil, false},
		{&pool.Move{ID: "m", Peer: "node-b"}, false}, // a copy a move brought
		{&pool.Move{ID: "m", Fenced: true, Peer: "node-b"}, true},
	} {
		err := fenced(&pool.Volume{ID: "default.x", NodeState: pool.NodeState{Move: tt.move}})
		if (err != nil) != tt.want || (err != nil && !errors.Is(err, errPrecondition)) {
			t.Errorf("move %+v: %v, want fenced %v (FailedPrecondition)", tt.move, err, tt.want)
		}
	}
}
