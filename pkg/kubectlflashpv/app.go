// Package kubectlflashpv is `kubectl flashpv`, the operator's view of
// flashpv: nodes and pools, volumes, snapshots, orphans, moves and a
// doctor. It reads only the Kubernetes API: the objects Kubernetes holds,
// and the node plugins' status that the flashpv controller collects into
// the ConfigMap flashpv-status (pkg/nodestatus). The only write is `move`,
// which sets one annotation on a claim.
package kubectlflashpv

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/signal"
	"slices"
	"sort"
	"strings"
	"syscall"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/yaml"

	"github.com/flashpv/flashpv/pkg/nodestatus"
	"github.com/flashpv/flashpv/pkg/wellknown"
)

// App is one invocation: its clients, flags and outputs.
type App struct {
	Client  kubernetes.Interface
	Dynamic dynamic.Interface
	Out     io.Writer
	Err     io.Writer
	// System is flashpv's namespace (--flashpv-namespace).
	System string
	// Namespace is the claims' namespace (-n), for move.
	Namespace string
	Output    string // table, json or yaml
	Now       func() time.Time
	// Poll is how often move looks at its claim.
	Poll time.Duration
	// Server names the API server in errors.
	Server string
}

const usage = `kubectl flashpv: flashpv's view of the cluster, read from the Kubernetes API.

Usage: kubectl flashpv COMMAND [flags]

Commands:
  info        nodes and their pools: kind, size, promised, free, volumes, health; flashpv's version
  volumes     flashpv volumes: PV, claim, pod, node, pool, size, used, filesystem, health, snapshots
  snapshots   flashpv snapshots: content, snapshot, source, node, size, ready
  orphans     volumes no PersistentVolume names, as the node plugins report them
  move CLAIM --to NODE|any [--wait] [--timeout D]
              ask the flashpv controller to move a claim's volume, and wait for the move
  doctor      check the installation and say what to do about each problem
  version     this plugin's version

Flags (every command):
  --kubeconfig FILE, --context NAME   which cluster (default: $KUBECONFIG, ~/.kube/config)
  -n, --namespace NS                  the claim's namespace (move; default: the context's)
  --flashpv-namespace NS              flashpv's namespace (default flashpv)
  -o, --output table|json|yaml        output format (default table)
`

// Main runs `kubectl-flashpv ARGS...` and returns the exit code.
func Main(args []string, version string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprint(stdout, usage)
		return 0
	}
	// The command may follow global flags: it is the first argument that
	// names one.
	at := 0
	for i, arg := range args {
		if _, ok := commands[arg]; ok || arg == "version" {
			at = i
			break
		}
	}
	cmd, rest := args[at], append(slices.Clone(args[:at]), args[at+1:]...)
	if cmd == "version" {
		fmt.Fprintln(stdout, "kubectl-flashpv", version)
		return 0
	}
	run, ok := commands[cmd]
	if !ok {
		fmt.Fprintf(stderr, "kubectl flashpv: unknown command %q\n\n%s", cmd, usage)
		return 2
	}
	fs := flag.NewFlagSet("kubectl flashpv "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var kubeconfig, kubecontext string
	a := &App{Out: stdout, Err: stderr, Now: time.Now, Poll: 2 * time.Second}
	fs.StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig file")
	fs.StringVar(&kubecontext, "context", "", "kubeconfig context")
	fs.StringVar(&a.Namespace, "namespace", "", "the claim's namespace")
	fs.StringVar(&a.Namespace, "n", "", "the claim's namespace")
	fs.StringVar(&a.System, "flashpv-namespace", "flashpv", "flashpv's namespace")
	fs.StringVar(&a.Output, "output", "table", "table, json or yaml")
	fs.StringVar(&a.Output, "o", "table", "table, json or yaml")
	var mo moveOptions
	if cmd == "move" {
		mo.addFlags(fs)
	}
	pos, err := parse(fs, rest)
	if err != nil {
		return 2
	}
	if cmd != "move" && len(pos) > 0 {
		fmt.Fprintf(stderr, "kubectl flashpv %s: unexpected arguments %q\n", cmd, pos)
		return 2
	}
	if a.Output != "table" && a.Output != "json" && a.Output != "yaml" {
		fmt.Fprintf(stderr, "kubectl flashpv: -o %q: want table, json or yaml\n", a.Output)
		return 2
	}
	if err := a.connect(kubeconfig, kubecontext); err != nil {
		fmt.Fprintln(stderr, "kubectl flashpv:", err)
		return 1
	}
	ctx, cancel := signalContext()
	defer cancel()
	if err := run(ctx, a, pos, mo); err != nil {
		var f findings
		if !errors.As(err, &f) {
			fmt.Fprintln(stderr, "kubectl flashpv:", a.explain(err))
		}
		return 1
	}
	return 0
}

var commands = map[string]func(context.Context, *App, []string, moveOptions) error{
	"info":      func(ctx context.Context, a *App, _ []string, _ moveOptions) error { return a.Info(ctx) },
	"volumes":   func(ctx context.Context, a *App, _ []string, _ moveOptions) error { return a.Volumes(ctx) },
	"snapshots": func(ctx context.Context, a *App, _ []string, _ moveOptions) error { return a.Snapshots(ctx) },
	"orphans":   func(ctx context.Context, a *App, _ []string, _ moveOptions) error { return a.Orphans(ctx) },
	"doctor":    func(ctx context.Context, a *App, _ []string, _ moveOptions) error { return a.Doctor(ctx) },
	"move": func(ctx context.Context, a *App, pos []string, mo moveOptions) error {
		if len(pos) != 1 {
			return errors.New("move takes one claim: kubectl flashpv move CLAIM --to NODE|any")
		}
		return a.Move(ctx, pos[0], mo)
	},
}

// parse parses flags anywhere among the arguments, as kubectl does.
func parse(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

// connect builds the clients from the kubeconfig, as kubectl finds it.
func (a *App) connect(kubeconfig, kubecontext string) error {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = kubeconfig
	cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: kubecontext})
	cfg, err := cc.ClientConfig()
	if clientcmd.IsEmptyConfig(err) {
		return errors.New("no cluster: no kubeconfig found (set KUBECONFIG or pass --kubeconfig)")
	}
	if err != nil {
		return fmt.Errorf("no cluster: kubeconfig: %w", err)
	}
	if a.Namespace == "" {
		if ns, _, err := cc.Namespace(); err == nil {
			a.Namespace = ns
		}
	}
	cfg.UserAgent = "kubectl-flashpv"
	a.Server = cfg.Host
	if a.Client, err = kubernetes.NewForConfig(cfg); err != nil {
		return err
	}
	a.Dynamic, err = dynamic.NewForConfig(cfg)
	return err
}

// forbidden is an API call refused by RBAC, with the permission it needs.
type forbidden struct {
	verb, resource, namespace string
	err                       error
}

func (f *forbidden) Error() string {
	where := "cluster-wide"
	if f.namespace != "" {
		where = "in namespace " + f.namespace
	}
	return fmt.Sprintf("forbidden: this needs permission to %s %s %s (docs/kubectl-plugin.md lists the role): %v", f.verb, f.resource, where, f.err)
}

func (f *forbidden) Unwrap() error { return f.err }

// api names the permission a failed call needed, when RBAC refused it.
func api(err error, verb, resource, namespace string) error {
	if apierrors.IsForbidden(err) {
		return &forbidden{verb: verb, resource: resource, namespace: namespace, err: err}
	}
	return err
}

// explain turns an error that is not the API's answer into "cannot reach".
func (a *App) explain(err error) error {
	var f *forbidden
	var ue *url.Error
	if errors.As(err, &f) {
		return err
	}
	if errors.As(err, &ue) {
		return fmt.Errorf("cannot reach the Kubernetes API server at %s: %v", a.Server, ue.Err)
	}
	return err
}

// statusEntries reads the node plugins' status from flashpv-status; a
// missing ConfigMap is no entries (no controller, or too old a one).
func (a *App) statusEntries(ctx context.Context) (map[string]nodestatus.Entry, bool, error) {
	cm, err := a.Client.CoreV1().ConfigMaps(a.System).Get(ctx, wellknown.NodeStatusConfigMap, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return map[string]nodestatus.Entry{}, false, nil
	}
	if err != nil {
		return nil, false, api(err, "get", "configmaps/"+wellknown.NodeStatusConfigMap, a.System)
	}
	out := map[string]nodestatus.Entry{}
	for node, v := range cm.Data {
		e, err := nodestatus.DecodeEntry(v)
		if err != nil {
			e = nodestatus.Entry{Error: err.Error()}
		}
		out[node] = e
	}
	return out, true, nil
}

// print writes v as JSON or YAML, or calls table.
func (a *App) print(v any, table func(w io.Writer)) error {
	switch a.Output {
	case "json":
		enc := json.NewEncoder(a.Out)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	case "yaml":
		b, err := yaml.Marshal(v)
		if err != nil {
			return err
		}
		_, err = a.Out.Write(b)
		return err
	}
	table(a.Out)
	return nil
}

// size is a byte count for people: binary units, one decimal; "-" when unknown.
func size(n int64) string {
	if n < 0 {
		return "-"
	}
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	units := []string{"Ki", "Mi", "Gi", "Ti", "Pi", "Ei"}
	f, i := float64(n)/unit, 0
	for f >= unit && i < len(units)-1 {
		f /= unit
		i++
	}
	s := fmt.Sprintf("%.1f", f)
	return strings.TrimSuffix(s, ".0") + units[i]
}

// age is a duration for people, like kubectl's AGE column.
func age(d time.Duration) string {
	switch {
	case d < 0:
		return "0s"
	case d < 2*time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < 2*time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// signalContext ends on SIGINT or SIGTERM (a move's wait is interrupted,
// the move goes on).
func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}
