package nodeplugin

import (
	"context"
	"encoding/json"
	"net/http"
	"time"

	"github.com/flashpv/flashpv/pkg/driver"
	"github.com/flashpv/flashpv/pkg/nodestatus"
	"github.com/flashpv/flashpv/pkg/orphans"
)

// statusTimeout bounds the probes and checks of one status request: a
// device that stopped answering makes its pool unhealthy, not the answer
// late.
const statusTimeout = 10 * time.Second

// Status builds the node's status document (pkg/nodestatus).
type Status struct {
	Node, Version string
	Driver        *driver.Driver
	// Orphans, when set, is the orphan finder whose last scan is reported.
	Orphans *orphans.Finder
	Now     func() time.Time
}

// Get measures the pools and volumes now and adds the last orphan scan.
func (s *Status) Get(ctx context.Context) nodestatus.Status {
	ctx, cancel := context.WithTimeout(ctx, statusTimeout)
	defer cancel()
	now := time.Now
	if s.Now != nil {
		now = s.Now
	}
	st := nodestatus.Status{Node: s.Node, Version: s.Version, AsOf: now().UTC()}
	st.Pools, st.Volumes = s.Driver.NodeStatus(ctx)
	st.Orphans.State = "orphans are not looked for (no --volume-list-dir)"
	if s.Orphans != nil {
		found, judged, state := s.Orphans.Found()
		st.Orphans.Judged, st.Orphans.State = judged, state
		for _, o := range found {
			st.Orphans.Volumes = append(st.Orphans.Volumes, nodestatus.Orphan{ID: o.ID, Pool: o.Pool, Name: o.Name, Created: o.Created.UTC(), Since: o.Since.UTC()})
		}
	}
	return st
}

// ServeHTTP answers GET with the status as JSON. It is read-only and
// shows what /healthz and /metrics on the same address already show,
// with the used space and health of each volume besides.
func (s *Status) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", http.MethodGet)
		http.Error(w, "GET only", http.StatusMethodNotAllowed)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(s.Get(r.Context()))
}

// WithStatus serves s at nodestatus.Path and everything else with h (the
// health and metrics handler).
func WithStatus(h http.Handler, s *Status) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/", h)
	mux.Handle(nodestatus.Path, s)
	return mux
}
