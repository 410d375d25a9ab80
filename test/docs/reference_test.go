package docs

import (
	"flag"
	"maps"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/flashpv/flashpv/pkg/driver"
)

const reference = root + "/docs/reference.md"

// Headings of docs/reference.md whose tables the tests read.
const (
	hNodeFlags          = "Flags of `flashpv`"
	hControllerFlags    = "Flags of `flashpv controller`"
	hParameters         = "StorageClass parameters"
	hNodeMetrics        = "Metrics of `flashpv`"
	hControllerMetrics  = "Metrics of `flashpv controller`"
	hNames              = "Names on objects"
	hEvents             = "Events"
	kubernetesParameter = "csi.storage.k8s.io/"
)

func referenceTables(t *testing.T) map[string][]row {
	t.Helper()
	tabs, err := tables(reference)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range []string{hNodeFlags, hControllerFlags, hParameters, hNodeMetrics, hControllerMetrics, hNames, hEvents} {
		if len(tabs[h]) == 0 {
			t.Fatalf("%s: no table under the heading %q", reference, h)
		}
	}
	return tabs
}

// keyed maps each row by the one backticked name in its first cell (after
// trimming prefix), failing on rows that have none or several, and on
// names given twice.
func keyed(t *testing.T, heading string, rows []row, prefix string) map[string]row {
	t.Helper()
	out := map[string]row{}
	for _, r := range rows {
		names := codes(r[0])
		if len(names) != 1 || !strings.HasPrefix(names[0], prefix) {
			t.Errorf("%s: row %q: want one %s... name in backticks in the first cell", heading, r[0], prefix)
			continue
		}
		name := strings.TrimPrefix(names[0], prefix)
		if _, dup := out[name]; dup {
			t.Errorf("%s: %s%s is listed twice", heading, prefix, name)
		}
		out[name] = r
	}
	return out
}

// sameSets reports what one side has that the other lacks.
func sameSets(t *testing.T, what string, doc, code []string) {
	t.Helper()
	for _, n := range code {
		if !slices.Contains(doc, n) {
			t.Errorf("%s: %q is in the code but not in docs/reference.md", what, n)
		}
	}
	for _, n := range doc {
		if !slices.Contains(code, n) {
			t.Errorf("%s: %q is in docs/reference.md but not in the code", what, n)
		}
	}
}

// sameDefault: the documented default is the flag's, where the flag has
// one (a duration may be written shorter: 1h for 1h0m0s).
func sameDefault(cell, def string) bool {
	if def == "" {
		return true
	}
	for _, c := range codes(cell) {
		if c == def {
			return true
		}
		a, errA := time.ParseDuration(c)
		b, errB := time.ParseDuration(def)
		if errA == nil && errB == nil && a == b {
			return true
		}
	}
	return false
}

func checkFlags(t *testing.T, heading string, rows []row, fs *flag.FlagSet) {
	doc := keyed(t, heading, rows, "--")
	var code []string
	fs.VisitAll(func(f *flag.Flag) {
		code = append(code, f.Name)
		r, ok := doc[f.Name]
		if !ok {
			return
		}
		if len(r) != 3 {
			t.Errorf("%s: --%s: want 3 cells (flag, default, meaning), have %d", heading, f.Name, len(r))
			return
		}
		if !sameDefault(r[1], f.DefValue) {
			t.Errorf("%s: --%s: documented default %q, the flag's is %q", heading, f.Name, r[1], f.DefValue)
		}
		if r[2] == "" {
			t.Errorf("%s: --%s: no meaning", heading, f.Name)
		}
	})
	sameSets(t, heading, slices.Collect(maps.Keys(doc)), code)
}

func TestReferenceFlags(t *testing.T) {
	tabs := referenceTables(t)
	checkFlags(t, hNodeFlags, tabs[hNodeFlags], nodeFlags())
	checkFlags(t, hControllerFlags, tabs[hControllerFlags], controllerFlags())
}

func TestReferenceParameters(t *testing.T) {
	tabs := referenceTables(t)
	var ours []row
	for _, r := range tabs[hParameters] {
		if names := codes(r[0]); len(names) == 1 && strings.HasPrefix(names[0], kubernetesParameter) {
			continue // Kubernetes' own keys, which flashpv reads but does not validate
		}
		ours = append(ours, r)
	}
	doc := keyed(t, hParameters, ours, "")
	sameSets(t, hParameters, slices.Collect(maps.Keys(doc)), driver.StorageClassParameters())
}

func checkMetrics(t *testing.T, heading string, rows []row, code map[string]metric) {
	doc := keyed(t, heading, rows, "")
	for name, r := range doc {
		m, ok := code[name]
		if !ok {
			continue
		}
		if len(r) != 4 {
			t.Errorf("%s: %s: want 4 cells (metric, type, labels, meaning), have %d", heading, name, len(r))
			continue
		}
		if !slices.Contains([]string{"counter", "gauge", "histogram"}, r[1]) || (m.Type != "" && r[1] != m.Type) {
			t.Errorf("%s: %s is documented as a %s, it is a %s", heading, name, r[1], m.Type)
		}
		labels := codes(r[2])
		slices.Sort(labels)
		if !slices.Equal(labels, m.Labels) {
			t.Errorf("%s: %s: documented labels %v, the code's %v", heading, name, labels, m.Labels)
		}
	}
	sameSets(t, heading, slices.Collect(maps.Keys(doc)), slices.Collect(maps.Keys(code)))
}

func TestReferenceMetrics(t *testing.T) {
	tabs := referenceTables(t)
	node, err := nodeMetrics(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctrl, err := controllerMetrics()
	if err != nil {
		t.Fatal(err)
	}
	// The registries themselves must hold what the reference must list,
	// or the comparison proves nothing.
	for _, want := range []string{"flashpv_pool_capacity_bytes", "flashpv_csi_requests_total", "flashpv_transfers_total", "flashpv_orphan_volumes", "flashpv_volume_list_age_seconds"} {
		if _, ok := node[want]; !ok {
			t.Errorf("the node plugin's registry has no %s: the test builds it wrong", want)
		}
	}
	for _, want := range []string{"flashpv_nodeloss_stuck_claims", "flashpv_controller_volume_list_bytes", "flashpv_transfer_grants_total"} {
		if _, ok := ctrl[want]; !ok {
			t.Errorf("the controller's registry has no %s: the test builds it wrong", want)
		}
	}
	checkMetrics(t, hNodeMetrics, tabs[hNodeMetrics], node)
	checkMetrics(t, hControllerMetrics, tabs[hControllerMetrics], ctrl)
}

func TestReferenceNames(t *testing.T) {
	tabs := referenceTables(t)
	code, err := codeKeys()
	if err != nil {
		t.Fatal(err)
	}
	if len(code) == 0 {
		t.Fatal("no keys found in the code: the scan is broken")
	}
	doc := keyed(t, hNames, tabs[hNames], "")
	var names []string
	for n := range code {
		names = append(names, n)
	}
	sameSets(t, hNames, slices.Collect(maps.Keys(doc)), names)
	if t.Failed() {
		for n, files := range code {
			t.Logf("%s in %s", n, strings.Join(files, ", "))
		}
	}
}

func TestReferenceEvents(t *testing.T) {
	tabs := referenceTables(t)
	code, err := eventReasons()
	if err != nil {
		t.Fatal(err)
	}
	if len(code) == 0 {
		t.Fatal("no Event reasons found in the code: the scan is broken")
	}
	doc := keyed(t, hEvents, tabs[hEvents], "")
	sameSets(t, hEvents, slices.Collect(maps.Keys(doc)), slices.Collect(maps.Keys(code)))
}

// The README points operators to the reference and to the monitoring
// files, and stays short.
func TestReadme(t *testing.T) {
	data, err := os.ReadFile(root + "/README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"(docs/reference.md)", "(deploy/monitoring)"} {
		if !strings.Contains(string(data), want) {
			t.Errorf("README.md has no link %s", want)
		}
	}
	if len(data) >= 10000 {
		t.Errorf("README.md has %d bytes; keep it under 10 kB (details go to docs/)", len(data))
	}
}
