package clustercontroller

import (
	"context"
	"sync"
	"time"

	"k8s.io/client-go/tools/leaderelection"
)

// status is what the sync loops tell /healthz.
type status struct {
	mu     sync.Mutex
	synced bool
	errs   map[string]error
}

func (s *status) setSynced() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.synced = true
}

func (s *status) record(what string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.errs == nil {
		s.errs = map[string]error{}
	}
	s.errs[what] = err
}

func (s *status) warnings() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for what, err := range s.errs {
		if err != nil {
			out = append(out, what+": "+err.Error())
		}
	}
	return out
}

// leaseCheckSlack is how long past its renew deadline a leader may go
// before /healthz fails; the same value is the elector's WatchDog.
const leaseCheckSlack = 20 * time.Second

// healthz is the controller's daemon.Health: unhealthy only when the
// leader cannot renew its Lease (a restart hands the work to the other
// replica); failing syncs are warnings, since a restart would not fix an
// API error.
type healthz struct {
	st *status
	le *leaderelection.LeaderElector // nil without leader election
}

func (h healthz) Check(context.Context) error {
	if h.le == nil {
		return nil
	}
	return h.le.Check(leaseCheckSlack)
}

func (h healthz) Warnings(context.Context) []string { return h.st.warnings() }
