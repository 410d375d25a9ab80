package docs

import (
	"encoding/json"
	"os"
	"os/exec"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

const monitoring = root + "/deploy/monitoring"

// The alerts issue 23 asks for.
var wantAlerts = []string{
	"FlashpvPoolMostlyPromised",   // a pool above 90 % promised
	"FlashpvThinPoolFull",         // a thin pool above 95 %
	"FlashpvPoolUnusable",         // a pool unusable
	"FlashpvVolumeAbnormal",       // a volume abnormal
	"FlashpvOrphanedVolumes",      // orphans for over an hour
	"FlashpvClaimStuckByNodeLoss", // a claim stuck by node loss
	"FlashpvNodePluginDown",       // flashpv down on a node
	"FlashpvMoveFailing",          // a move failing
}

// targetLabels are what the scrape adds (podmonitors.yaml): any metric
// may be selected by them.
var targetLabels = []string{"job", "instance", "namespace", "pod", "container", "endpoint", "node"}

type ruleFile struct {
	Groups []struct {
		Name  string `json:"name"`
		Rules []struct {
			Alert       string            `json:"alert"`
			Expr        string            `json:"expr"`
			For         string            `json:"for,omitempty"`
			Labels      map[string]string `json:"labels,omitempty"`
			Annotations map[string]string `json:"annotations,omitempty"`
		} `json:"rules"`
	} `json:"groups"`
}

func readYAML(t *testing.T, path string, into any) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict(data, into); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

func rules(t *testing.T) ruleFile {
	t.Helper()
	var rf ruleFile
	readYAML(t, monitoring+"/flashpv-rules.yaml", &rf)
	return rf
}

// promtool checks the rules and fires every alert on the synthetic series
// of flashpv-rules.test.yaml.
func TestPromtoolRules(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatal("no promtool: hack/install-deps.sh installs Debian's prometheus package, which has it")
	}
	for _, args := range [][]string{{"check", "rules", "flashpv-rules.yaml"}, {"test", "rules", "flashpv-rules.test.yaml"}} {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = monitoring
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// Every alert of the rules is expected to fire somewhere in the promtool
// tests, and the alerts asked for exist.
func TestAlertsTested(t *testing.T) {
	var tests struct {
		RuleFiles          []string `json:"rule_files"`
		EvaluationInterval string   `json:"evaluation_interval"`
		Tests              []struct {
			Interval      string `json:"interval"`
			InputSeries   []any  `json:"input_series"`
			AlertRuleTest []struct {
				EvalTime  string `json:"eval_time"`
				Alertname string `json:"alertname"`
				ExpAlerts []any  `json:"exp_alerts"`
			} `json:"alert_rule_test"`
		} `json:"tests"`
	}
	readYAML(t, monitoring+"/flashpv-rules.test.yaml", &tests)
	fired, quiet := map[string]bool{}, map[string]bool{}
	for _, tc := range tests.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fired[a.Alertname] = true
			} else {
				quiet[a.Alertname] = true
			}
		}
	}
	var alerts []string
	for _, g := range rules(t).Groups {
		for _, r := range g.Rules {
			alerts = append(alerts, r.Alert)
			if !fired[r.Alert] {
				t.Errorf("alert %s never fires in flashpv-rules.test.yaml", r.Alert)
			}
			if !quiet[r.Alert] {
				t.Errorf("alert %s is never checked quiet (before its for: or on healthy series) in flashpv-rules.test.yaml", r.Alert)
			}
			if r.Labels["severity"] == "" || r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				t.Errorf("alert %s: want a severity label, a summary and a description", r.Alert)
			}
		}
	}
	for _, a := range wantAlerts {
		if !slices.Contains(alerts, a) {
			t.Errorf("no alert %s in flashpv-rules.yaml", a)
		}
	}
}

// The PrometheusRule holds the same groups as the plain rules file.
func TestPrometheusRuleMatches(t *testing.T) {
	var pr struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Metadata   any    `json:"metadata"`
		Spec       ruleFile
	}
	readYAML(t, monitoring+"/prometheusrule.yaml", &pr)
	if pr.APIVersion != "monitoring.coreos.com/v1" || pr.Kind != "PrometheusRule" {
		t.Errorf("prometheusrule.yaml is a %s %s", pr.APIVersion, pr.Kind)
	}
	if want := rules(t); !reflect.DeepEqual(pr.Spec, want) {
		t.Errorf("prometheusrule.yaml's groups differ from flashpv-rules.yaml's: copy them over")
	}
}

// dashboard is the part of Grafana's JSON model the checks read.
type dashboard struct {
	Panels     []panel `json:"panels"`
	Templating struct {
		List []struct {
			Name       string          `json:"name"`
			Type       string          `json:"type"`
			Query      json.RawMessage `json:"query"`
			Datasource *datasource     `json:"datasource"`
		} `json:"list"`
	} `json:"templating"`
}

type datasource struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type panel struct {
	Title      string      `json:"title"`
	Type       string      `json:"type"`
	Datasource *datasource `json:"datasource"`
	Targets    []struct {
		Expr       string      `json:"expr"`
		Datasource *datasource `json:"datasource"`
	} `json:"targets"`
	Panels []panel `json:"panels"`
}

func readDashboard(t *testing.T) dashboard {
	t.Helper()
	data, err := os.ReadFile(monitoring + "/flashpv-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatalf("flashpv-dashboard.json: %v", err)
	}
	return d
}

func allPanels(ps []panel) []panel {
	var out []panel
	for _, p := range ps {
		out = append(out, p)
		out = append(out, allPanels(p.Panels)...)
	}
	return out
}

var labelValuesRE = regexp.MustCompile(`^label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*,\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)$`)

// queries returns every PromQL expression of the rules and the dashboard,
// by where it is, and checks the dashboard's data source is a variable.
func queries(t *testing.T) (map[string]string, map[string][2]string) {
	t.Helper()
	out := map[string]string{}
	for _, g := range rules(t).Groups {
		for _, r := range g.Rules {
			out["alert "+r.Alert] = r.Expr
		}
	}
	d := readDashboard(t)
	labelValues := map[string][2]string{}
	hasVar := false
	for _, v := range d.Templating.List {
		switch v.Type {
		case "datasource":
			hasVar = hasVar || v.Name == "datasource"
		case "query":
			var q struct {
				Query string `json:"query"`
			}
			if err := json.Unmarshal(v.Query, &q); err != nil {
				t.Fatalf("variable %s: %v", v.Name, err)
			}
			m := labelValuesRE.FindStringSubmatch(q.Query)
			if m == nil {
				t.Errorf("variable %s: query %q is not label_values(metric, label)", v.Name, q.Query)
				continue
			}
			labelValues["variable "+v.Name] = [2]string{m[1], m[2]}
		}
	}
	if !hasVar {
		t.Error("the dashboard has no datasource variable")
	}
	for _, p := range allPanels(d.Panels) {
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q: data source %v, want the variable ${datasource}", p.Title, p.Datasource)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for i, tg := range p.Targets {
			if tg.Datasource != nil && tg.Datasource.UID != "${datasource}" {
				t.Errorf("panel %q: query %d's data source %v, want the variable", p.Title, i, tg.Datasource)
			}
			out["panel "+p.Title+" query "+string(rune('A'+i))] = tg.Expr
		}
	}
	return out, labelValues
}

// Every metric the rules and the dashboard name is one flashpv exports
// (or Prometheus' own up), selected only by labels it has or the scrape
// adds.
func TestMonitoringMetricsExported(t *testing.T) {
	exported, err := nodeMetrics(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctrl, err := controllerMetrics()
	if err != nil {
		t.Fatal(err)
	}
	for n, m := range ctrl {
		exported[n] = m
	}
	lookup := func(name string) (metric, bool) {
		if m, ok := exported[name]; ok {
			return m, true
		}
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			if m, ok := exported[strings.TrimSuffix(name, suffix)]; ok && m.Type == "histogram" && strings.HasSuffix(name, suffix) {
				if suffix == "_bucket" {
					m.Labels = append(slices.Clone(m.Labels), "le")
				}
				return m, true
			}
		}
		if name == "up" {
			return metric{Type: "gauge"}, true
		}
		return metric{}, false
	}
	exprs, labelValues := queries(t)
	used := map[string]bool{}
	for where, expr := range exprs {
		sels := selectors(expr)
		if len(sels) == 0 {
			t.Errorf("%s: %q names no metric", where, expr)
		}
		for _, s := range sels {
			m, ok := lookup(s.Metric)
			if !ok {
				t.Errorf("%s: %s is not a metric flashpv exports", where, s.Metric)
				continue
			}
			used[strings.TrimSuffix(s.Metric, "_bucket")] = true
			for _, l := range s.Labels {
				if !slices.Contains(m.Labels, l) && !slices.Contains(targetLabels, l) {
					t.Errorf("%s: %s has no label %s (it has %v, the scrape adds %v)", where, s.Metric, l, m.Labels, targetLabels)
				}
			}
		}
	}
	for where, mv := range labelValues {
		m, ok := lookup(mv[0])
		if !ok {
			t.Errorf("%s: %s is not a metric flashpv exports", where, mv[0])
		} else if !slices.Contains(m.Labels, mv[1]) && !slices.Contains(targetLabels, mv[1]) {
			t.Errorf("%s: %s has no label %s", where, mv[0], mv[1])
		}
	}
	// The dashboard shows every area the issue names.
	for _, want := range []string{"flashpv_pool_allocated_bytes", "flashpv_pool_capacity_bytes", "flashpv_pool_volumes",
		"flashpv_csi_requests_total", "flashpv_csi_request_duration_seconds", "flashpv_transfers_total",
		"flashpv_orphan_volumes", "flashpv_nodeloss_stuck_claims", "flashpv_nodeloss_lost_nodes"} {
		if !used[want] {
			t.Errorf("neither the dashboard nor the rules show %s", want)
		}
	}
}

// The PromQL scan finds what it must: a check of the checker.
func TestSelectors(t *testing.T) {
	for _, tc := range []struct {
		expr string
		want []selector
	}{
		{`sum by (node, pool) (rate(a_total{node=~"$node", code!="OK"}[$__rate_interval])) > 0`,
			[]selector{{"a_total", []string{"node", "code"}}}},
		{`histogram_quantile(0.99, sum by (le) (rate(b_bucket[5m]))) / c or absent(up{job="x"} == 1)`,
			[]selector{{"b_bucket", nil}, {"c", nil}, {"up", []string{"job"}}}},
		{`d > 900 or d < 0 and on (node) e unless f offset 5m`,
			[]selector{{"d", nil}, {"d", nil}, {"e", nil}, {"f", nil}}},
	} {
		if got := selectors(tc.expr); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("selectors(%q) = %v, want %v", tc.expr, got, tc.want)
		}
	}
}
