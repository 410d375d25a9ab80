package daemon

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// untilDone is a task as the commands have them: it works until its
// context ends, then returns nil. stopped counts the ones that did.
func untilDone(name string, stopped *atomic.Int32) Task {
	return Task{Name: name, Run: func(ctx context.Context) error {
		<-ctx.Done()
		stopped.Add(1)
		return nil
	}}
}

// runWithin runs Run and fails the test if it does not return in time,
// which is what a task left running or a missed cancellation looks like.
func runWithin(t *testing.T, ctx context.Context, tasks ...Task) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- Run(ctx, tasks...) }()
	select {
	case err := <-done:
		return err
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return: a task was not stopped")
		return nil
	}
}

func TestRunEndsAllWhenOneEnds(t *testing.T) {
	errDisk := errors.New("disk gone")
	for _, tc := range []struct {
		name   string
		ending Task
		want   error  // errors.Is
		prefix string // the task's name leads the error
	}{
		{
			name:   "a failing task",
			ending: Task{Name: "csi", Run: func(context.Context) error { return errDisk }},
			want:   errDisk, prefix: "csi: ",
		},
		{
			name:   "a task ending early without an error",
			ending: Task{Name: "registration", Run: func(context.Context) error { return nil }},
			want:   ErrEndedEarly, prefix: "registration: ",
		},
		{
			name:   "a task allowed to finish that fails anyway",
			ending: Task{Name: "cleanup", MayFinish: true, Run: func(context.Context) error { return errDisk }},
			want:   errDisk, prefix: "cleanup: ",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stopped atomic.Int32
			err := runWithin(t, context.Background(), untilDone("a", &stopped), tc.ending, untilDone("b", &stopped))
			if !errors.Is(err, tc.want) || !strings.HasPrefix(err.Error(), tc.prefix) {
				t.Errorf("Run: %v, want %v prefixed %q", err, tc.want, tc.prefix)
			}
			// Run returned, so both others must have seen the cancellation
			// and returned before it.
			if n := stopped.Load(); n != 2 {
				t.Errorf("%d of 2 other tasks had stopped when Run returned", n)
			}
		})
	}
}

// The first task to end decides Run's error; one that fails while
// stopping is not mistaken for the cause.
func TestRunReturnsTheFirstEnding(t *testing.T) {
	first := errors.New("first")
	err := runWithin(t, context.Background(),
		Task{Name: "a", Run: func(context.Context) error { return first }},
		Task{Name: "b", Run: func(ctx context.Context) error {
			<-ctx.Done()
			return errors.New("could not stop")
		}},
	)
	if !errors.Is(err, first) {
		t.Errorf("Run: %v, want a's error", err)
	}
}

func TestRunLetsAFinishingTaskFinish(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	finished := make(chan struct{})
	var stopped atomic.Int32
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx,
			Task{Name: "once", MayFinish: true, Run: func(context.Context) error { close(finished); return nil }},
			untilDone("serve", &stopped),
		)
	}()
	<-finished
	// Give a wrong cancellation time to reach the other task.
	time.Sleep(50 * time.Millisecond)
	select {
	case err := <-done:
		t.Fatalf("Run returned %v when a task allowed to finish did", err)
	default:
	}
	if stopped.Load() != 0 {
		t.Fatal("a task allowed to finish stopped the others")
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run after cancellation: %v", err)
	}
}

func TestRunStopsCleanlyWithItsContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	started := make(chan struct{}, 3)
	var stopped atomic.Int32
	tasks := make([]Task, 3)
	for i := range tasks {
		name := string(rune('a' + i))
		tasks[i] = Task{Name: name, Run: func(ctx context.Context) error {
			started <- struct{}{}
			return untilDone(name, &stopped).Run(ctx)
		}}
	}
	done := make(chan error, 1)
	go func() { done <- Run(ctx, tasks...) }()
	for range tasks {
		<-started
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run after cancellation: %v, want nil", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
	if n := stopped.Load(); n != 3 {
		t.Errorf("%d of 3 tasks had stopped when Run returned", n)
	}
}
