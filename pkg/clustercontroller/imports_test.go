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
