package fault

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/flashpv/flashpv/pkg/pool"
	"github.com/flashpv/flashpv/test/harness"
)

// node is one flashpv process and what is its own: a socket, a kubelet and
// a state directory, a pool on a filesystem of its own, a log. Every
// incarnation of its driver runs in a process group of its own.
type node struct {
	r                      *run
	name                   string // its --node-id, and its name at the broker
	root, kubeletDir, sock string
	stateDir               string
	poolArg, poolDir       string // --pool value; directory for image and quota pools
	baseline               []string
	transfer               []string // its --transfer-* flags
	drv                    *driverProc
	starts                 int
	driverLog              *os.File
}

// newNode makes a node's pool and directories; its driver is not started.
func (r *run) newNode(name, poolSize, logPath string) *node {
	t := r.t
	n := &node{r: r, name: name}
	var err error
	if n.driverLog, err = openLog(logPath); err != nil {
		t.Fatal(err)
	}
	// Registered before the run's cleanup, so it runs after it: the log
	// stays open while the drivers are killed.
	t.Cleanup(func() { n.driverLog.Close() })
	n.poolArg = harness.NewPool(t, poolSize)
	switch {
	case r.cfg.backend == "image":
		n.poolDir = n.poolArg
	case strings.HasPrefix(n.poolArg, "quota:"):
		n.poolDir = strings.TrimPrefix(n.poolArg, "quota:")
	}
	if n.poolDir != "" {
		if real, err := filepath.EvalSymlinks(n.poolDir); err == nil {
			n.poolDir = real
		}
	}
	n.root = t.TempDir()
	n.kubeletDir = filepath.Join(n.root, "kubelet")
	n.stateDir = filepath.Join(n.root, "state")
	n.sock = filepath.Join(n.root, "csi.sock")
	if err := os.MkdirAll(n.kubeletDir, 0o750); err != nil {
		t.Fatal(err)
	}
	return n
}

// nodes are the run's nodes, node-a first.
func (r *run) nodes() []*node {
	if r.peer == nil {
		return []*node{r.node}
	}
	return []*node{r.node, r.peer}
}

// on is the node v lives on.
func (r *run) on(v *volume) *node {
	if v.n != nil {
		return v.n
	}
	return r.node
}

// crashedNodes are the nodes whose driver exited without being killed.
func (r *run) crashedNodes() []*node {
	return slices.DeleteFunc(r.nodes(), func(n *node) bool { return !n.crashed() })
}

// replayFile is where a node that serves transfers remembers the
// capabilities it has honoured, across restarts, until they expire: it
// stays by design.
const replayFile = "transfer-replay.json"

// stateLeftovers lists the files of the node's state directory, but for
// its replay cache.
func (n *node) stateLeftovers() []string {
	return slices.DeleteFunc(filesUnder(n.stateDir), func(p string) bool {
		return len(n.transfer) > 0 && p == filepath.Join(n.stateDir, replayFile)
	})
}

// incomingLeftovers lists the volumes of the node's pool whose data is still
// arriving from another node (image and quota pools).
func (n *node) incomingLeftovers() []string {
	if n.poolDir == "" {
		return nil
	}
	metas, _ := filepath.Glob(filepath.Join(n.poolDir, "*.json"))
	var out []string
	for _, m := range metas {
		if next, ok := incomingNext(m); ok {
			out = append(out, filepath.Base(m)+" (at byte "+strconv.FormatInt(next, 10)+")")
		}
	}
	return out
}

// incomingNext reads a volume's metadata: whether its data is still
// arriving, and how much of it is verified and synced.
func incomingNext(meta string) (int64, bool) {
	data, err := os.ReadFile(meta)
	if err != nil {
		return 0, false
	}
	var v pool.Volume
	if json.Unmarshal(data, &v) != nil || v.Incoming == nil {
		return 0, false
	}
	return v.Incoming.Next, true
}
