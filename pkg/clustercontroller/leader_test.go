package clustercontroller

import (
	"context"
	"errors"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/record"

	"github.com/flashpv/flashpv/pkg/daemon"
)

// A leader whose task fails gives its Lease up and says why, rather than
// hold the Lease doing nothing; and the election task returns only once
// the leader's other tasks have stopped.
func TestLeaderTaskFailureReleasesTheLease(t *testing.T) {
	client := fake.NewClientset()
	opts := Options{Namespace: "flashpv", LeaseName: "flashpv-controller",
		LeaseDuration: 3 * time.Second, RenewDeadline: 2 * time.Second, RetryPeriod: 100 * time.Millisecond}
	boom := errors.New("boom")
	stopped := make(chan struct{})
	tasks := []daemon.Task{
		{Name: "failing", Run: func(context.Context) error { return boom }},
		{Name: "waiting", Run: func(ctx context.Context) error {
			<-ctx.Done()
			time.Sleep(50 * time.Millisecond) // stopping takes a while
			close(stopped)
			return nil
		}},
	}
	elect, _, err := leaderElection(opts, client, record.NewFakeRecorder(10), tasks)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- elect.Run(context.Background()) }()
	select {
	case err = <-done:
	case <-time.After(time.Minute):
		t.Fatal("the election went on after a leader task failed")
	}
	if !errors.Is(err, boom) {
		t.Errorf("election: %v, want the failing task's error", err)
	}
	select {
	case <-stopped:
	default:
		t.Error("the election returned before the leader's other task stopped")
	}
	lease, err := client.CoordinationV1().Leases(opts.Namespace).Get(context.Background(), opts.LeaseName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if h := lease.Spec.HolderIdentity; h != nil && *h != "" {
		t.Errorf("the Lease is still held by %q", *h)
	}
}
