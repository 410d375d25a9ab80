package docs

import (
	"os"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// deploy/README.md's file table names every file of the kustomize base.
func TestDeployReadmeFiles(t *testing.T) {
	data, err := os.ReadFile(root + "/deploy/kubernetes/kustomization.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var k struct {
		Resources []string `json:"resources"`
	}
	if err := yaml.Unmarshal(data, &k); err != nil {
		t.Fatal(err)
	}
	if len(k.Resources) == 0 {
		t.Fatal("no resources in deploy/kubernetes/kustomization.yaml")
	}
	tabs, err := tables(root + "/deploy/README.md")
	if err != nil {
		t.Fatal(err)
	}
	var listed []string
	for _, r := range tabs[""] { // the table before the first ## heading
		listed = append(listed, codes(r[0])...)
	}
	for _, f := range k.Resources {
		if !slices.Contains(listed, strings.TrimSuffix(f, "/")) && !slices.Contains(listed, f) {
			t.Errorf("deploy/README.md's file table does not name %s", f)
		}
	}
}
