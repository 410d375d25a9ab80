package clustercontroller

import (
	"os/exec"
	"strings"
	"testing"
)

// The node plugin never talks to the Kubernetes API: nothing it is built
// from may import client-go, which only this package brings in.
func TestNodePluginHasNoAPIClient(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go command")
	}
	for _, pkg := range []string{"../nodeplugin", "../driver", "../orphans", "../health", "../transfer/broker"} {
		out, err := exec.Command("go", "list", "-deps", pkg).CombinedOutput()
		if err != nil {
			t.Fatalf("go list %s: %v\n%s", pkg, err, out)
		}
		for _, dep := range strings.Fields(string(out)) {
			if strings.HasPrefix(dep, "k8s.io/client-go") {
				t.Errorf("%s depends on %s", pkg, dep)
			}
			// The broker's API is all a node plugin shares with this
			// package: no Kubernetes code in it but the logger.
			if pkg == "../transfer/broker" && strings.HasPrefix(dep, "k8s.io/") && !strings.HasPrefix(dep, "k8s.io/klog/") {
				t.Errorf("%s depends on %s", pkg, dep)
			}
		}
	}
}

// The cluster controller manages no storage, so none of the node plugin's
// storage code may be built into it: a bug or a vulnerability there is no
// concern of the Deployment's, and its image stays what it needs. pkg/health
// is listed because it is how pool (and through it all the rest) used to
// arrive here.
func TestControllerHasNoStorageCode(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go command")
	}
	const mod = "github.com/flashpv/flashpv/pkg/"
	forbidden := map[string]bool{}
	for _, p := range []string{"pool", "lvm", "loopdev", "xfsquota", "health"} {
		forbidden[mod+p] = true
	}
	out, err := exec.Command("go", "list", "-deps", "-f", `{{.ImportPath}}{{range .Imports}} {{.}}{{end}}`, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	// One line per package: its path, then what it imports, so a failure
	// names who brings the package in.
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		for _, imp := range f[1:] {
			if forbidden[imp] {
				t.Errorf("%s imports %s", f[0], imp)
			}
		}
	}
}
