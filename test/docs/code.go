// Package docs checks the operator-facing reference (docs/reference.md) and
// the monitoring files (deploy/monitoring) against what the code defines:
// the flag sets of both commands, the StorageClass parameter validator, the
// metrics registries, the names flashpv puts on or reads from objects, and
// its Event reasons. Nothing in it is compiled into flashpv.
package docs

import (
	"context"
	"flag"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/flashpv/flashpv/pkg/clustercontroller"
	"github.com/flashpv/flashpv/pkg/config"
	"github.com/flashpv/flashpv/pkg/nodeplugin"
	"github.com/flashpv/flashpv/pkg/orphans"
)

// root is the repository, from this package's directory.
const root = "../.."

// nodeFlags and controllerFlags are the flag sets of `flashpv` and
// `flashpv controller`, without klog's.
func nodeFlags() *flag.FlagSet {
	fs := flag.NewFlagSet("flashpv", flag.ContinueOnError)
	var o config.Options
	o.AddFlags(fs)
	return fs
}

func controllerFlags() *flag.FlagSet {
	fs := flag.NewFlagSet("flashpv controller", flag.ContinueOnError)
	var o clustercontroller.Options
	o.AddFlags(fs)
	return fs
}

// metric is one metric a registry describes.
type metric struct {
	Type   string // counter, gauge, histogram, or "" when unknown
	Labels []string
}

// recorder is a Registerer that remembers what is registered, so that
// metrics without samples yet (a vector no label values were set on) are
// listed too, and passes it on to a real registry (which refuses
// duplicates).
type recorder struct {
	reg        *prometheus.Registry
	collectors []prometheus.Collector
}

func newRecorder() *recorder { return &recorder{reg: prometheus.NewRegistry()} }

func (r *recorder) Register(c prometheus.Collector) error {
	if err := r.reg.Register(c); err != nil {
		return err
	}
	r.collectors = append(r.collectors, c)
	return nil
}

func (r *recorder) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := r.Register(c); err != nil {
			panic(err)
		}
	}
}

func (r *recorder) Unregister(c prometheus.Collector) bool { return r.reg.Unregister(c) }

var descRE = regexp.MustCompile(`^Desc\{fqName: "([^"]+)", .*variableLabels: \{([^}]*)\}\}$`)

// metrics lists every metric registered: its labels from its description,
// its type from a gather or else from the collector's Go type ("" when
// neither tells: a custom collector's metric that has no sample now).
func (r *recorder) metrics() (map[string]metric, error) {
	gathered := map[string]string{}
	mfs, err := r.reg.Gather()
	if err != nil {
		return nil, err
	}
	for _, mf := range mfs {
		gathered[mf.GetName()] = strings.ToLower(mf.GetType().String())
	}
	out := map[string]metric{}
	for _, c := range r.collectors {
		ch := make(chan *prometheus.Desc, 64)
		go func() { c.Describe(ch); close(ch) }()
		for d := range ch {
			m := descRE.FindStringSubmatch(d.String())
			if m == nil {
				return nil, fmt.Errorf("cannot read the description %s", d)
			}
			var labels []string
			if m[2] != "" {
				labels = strings.Split(m[2], ",")
			}
			slices.Sort(labels)
			typ := gathered[m[1]]
			if typ == "" {
				typ = collectorType(c)
			}
			out[m[1]] = metric{Type: typ, Labels: labels}
		}
	}
	return out, nil
}

func collectorType(c prometheus.Collector) string {
	switch c.(type) {
	case *prometheus.CounterVec, prometheus.Counter:
		return strings.ToLower(dto.MetricType_COUNTER.String())
	case *prometheus.GaugeVec, prometheus.Gauge:
		return strings.ToLower(dto.MetricType_GAUGE.String())
	case *prometheus.HistogramVec, prometheus.Histogram:
		return strings.ToLower(dto.MetricType_HISTOGRAM.String())
	}
	return ""
}

// nodeMetrics builds the node plugin as cmd/flashpv does (one image pool
// in dir, transfers and the orphan finder on) and lists the metrics it
// registers, besides the Go runtime's and the process's.
func nodeMetrics(dir string) (map[string]metric, error) {
	var opts config.Options
	fs := flag.NewFlagSet("flashpv", flag.ContinueOnError)
	opts.AddFlags(fs)
	err := fs.Parse([]string{"--node-id=n1", "--state-dir=" + dir, "--pool=default=" + filepath.Join(dir, "pool"),
		"--volume-list-dir=" + filepath.Join(dir, "lists"), "--transfer-broker=https://broker.invalid:9810",
		"--transfer-address=127.0.0.1:0", "--transfer-trust-dir=" + filepath.Join(dir, "trust")})
	if err != nil {
		return nil, err
	}
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	rec := newRecorder()
	plugin, err := nodeplugin.Open(context.Background(), opts, nodeplugin.Settings{Version: "test", Metrics: rec})
	if err != nil {
		return nil, err
	}
	defer plugin.Close()
	if _, err := orphans.New(orphans.Config{Node: opts.NodeID, ListDir: opts.VolumeListDir, Pools: plugin.Pools,
		Deleter: plugin.Driver, Grace: opts.OrphanGrace, Metrics: rec}); err != nil {
		return nil, err
	}
	return rec.metrics()
}

// controllerMetrics lists the metrics `flashpv controller` registers,
// besides the Go runtime's and the process's.
func controllerMetrics() (map[string]metric, error) {
	rec := newRecorder()
	if err := clustercontroller.RegisterMetrics(rec); err != nil {
		return nil, err
	}
	return rec.metrics()
}

// keyRE is a Kubernetes-style qualified key with a DNS prefix: an
// annotation, label, finalizer, token audience or extra, or an LVM tag.
var keyRE = regexp.MustCompile(`^([a-z0-9]([-a-z0-9]*[a-z0-9])?\.)+[a-z]{2,}/[A-Za-z0-9][-A-Za-z0-9_.]*=?$`)

// codeKeys returns every string constant of flashpv's code (cmd and pkg,
// no tests) that is such a key, with the files it is in.
func codeKeys() (map[string][]string, error) {
	out := map[string][]string{}
	for _, dir := range []string{"cmd", "pkg"} {
		err := filepath.WalkDir(filepath.Join(root, dir), func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
				return err
			}
			f, err := parser.ParseFile(token.NewFileSet(), p, nil, parser.SkipObjectResolution)
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(root, p)
			ast.Inspect(f, func(n ast.Node) bool {
				switch n := n.(type) {
				case *ast.ImportSpec:
					return false
				case *ast.BasicLit:
					if s, err := strconv.Unquote(n.Value); err == nil && n.Kind == token.STRING && keyRE.MatchString(s) && !slices.Contains(out[s], rel) {
						out[s] = append(out[s], rel)
					}
				}
				return true
			})
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

// eventReasons returns the Event reasons flashpv's code records: the
// string constants named Reason* (the one helper that records Events,
// nodeloss.Reconciler.event, takes them), and a literal reason passed to
// any Event, Eventf or AnnotatedEventf call.
func eventReasons() (map[string]string, error) {
	out := map[string]string{}
	err := filepath.WalkDir(filepath.Join(root, "pkg"), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
			return err
		}
		f, err := parser.ParseFile(token.NewFileSet(), p, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		ast.Inspect(f, func(n ast.Node) bool {
			switch n := n.(type) {
			case *ast.ValueSpec:
				for i, name := range n.Names {
					if strings.HasPrefix(name.Name, "Reason") && i < len(n.Values) {
						if lit, ok := n.Values[i].(*ast.BasicLit); ok && lit.Kind == token.STRING {
							s, _ := strconv.Unquote(lit.Value)
							out[s] = rel
						}
					}
				}
			case *ast.CallExpr:
				sel, ok := n.Fun.(*ast.SelectorExpr)
				if !ok {
					return true
				}
				arg := map[string]int{"Event": 2, "Eventf": 2, "AnnotatedEventf": 3}[sel.Sel.Name]
				if arg > 0 && len(n.Args) > arg {
					if lit, ok := n.Args[arg].(*ast.BasicLit); ok && lit.Kind == token.STRING {
						s, _ := strconv.Unquote(lit.Value)
						out[s] = rel
					}
				}
			}
			return true
		})
		return nil
	})
	return out, err
}
