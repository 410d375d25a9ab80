package clustercontroller

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"

	"github.com/flashpv/flashpv/pkg/daemon"
)

// leaderElection returns the task that holds the Lease and runs tasks
// while it does, and the elector, for /healthz. The task ends with an
// error when this replica loses the Lease, or when the leader's tasks end
// while it leads (daemon.Run's rule): then it releases the Lease rather
// than hold it doing nothing, and the process exits for another replica
// to take over.
func leaderElection(opts Options, client kubernetes.Interface, recorder record.EventRecorder, tasks []daemon.Task) (daemon.Task, *leaderelection.LeaderElector, error) {
	id, _ := os.Hostname()
	lock, err := resourcelock.New(resourcelock.LeasesResourceLock, opts.Namespace, opts.LeaseName,
		client.CoreV1(), client.CoordinationV1(), resourcelock.ResourceLockConfig{Identity: id, EventRecorder: recorder})
	if err != nil {
		return daemon.Task{}, nil, err
	}
	l := &leading{}
	le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock: lock, Name: opts.LeaseName, ReleaseOnCancel: true,
		LeaseDuration: opts.LeaseDuration, RenewDeadline: opts.RenewDeadline, RetryPeriod: opts.RetryPeriod,
		WatchDog: leaderelection.NewLeaderHealthzAdaptor(leaseCheckSlack),
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(ctx context.Context) {
				klog.InfoS("Leading", "lease", klog.KRef(opts.Namespace, opts.LeaseName), "identity", id)
				l.run(ctx, tasks)
			},
			// Required by the elector; elect tells why leading stopped.
			OnStoppedLeading: func() {},
		},
	})
	if err != nil {
		return daemon.Task{}, nil, err
	}
	return daemon.Task{Name: "leader election", Run: func(ctx context.Context) error { return l.elect(ctx, le) }}, le, nil
}

// leading ties the leader's tasks to the elector: their failure stops the
// elector, and the elector's task returns only once they have.
type leading struct {
	mu      sync.Mutex
	stop    context.CancelCauseFunc // the running elector's; nil before and after
	running sync.WaitGroup
}

// run runs tasks under the elector's leading context ctx. The elector
// starts it in a goroutine it does not wait for, so a run that starts
// after elect has returned does nothing.
func (l *leading) run(ctx context.Context, tasks []daemon.Task) {
	l.mu.Lock()
	stop := l.stop
	if stop != nil {
		l.running.Add(1)
	}
	l.mu.Unlock()
	if stop == nil {
		return
	}
	defer l.running.Done()
	if err := daemon.Run(ctx, tasks...); err != nil {
		stop(err)
	}
}

// elect runs le until ctx ends (nil) or leading stops while ctx is live
// (an error saying why).
func (l *leading) elect(ctx context.Context, le *leaderelection.LeaderElector) error {
	ectx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	l.mu.Lock()
	l.stop = stop
	l.mu.Unlock()
	le.Run(ectx)
	// Read before the tasks finish: one failing while they stop after a
	// lost Lease is not why leading stopped.
	failed := ectx.Err() != nil
	l.mu.Lock()
	l.stop = nil
	l.mu.Unlock()
	l.running.Wait()
	switch {
	case ctx.Err() != nil:
		return nil
	case failed:
		return fmt.Errorf("while leading: %w", context.Cause(ectx))
	}
	return errors.New("lost the leader election Lease")
}
