package deploy

// The Helm chart deploy/helm/flashpv: with its defaults it renders the
// kustomize base's objects (compared object by object, Helm's own labels
// aside), `helm lint` passes, and with every value set the objects follow
// the same rules as the base's. The helm CLI is built from the Go module
// proxy by hack/tools/helm/build.sh (cached in _output/bin).

import (
	"bytes"
	"fmt"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

const chart = "../../deploy/helm/flashpv"

// helm builds the helm CLI when it is missing or its pin changed, and
// returns its path.
func helm(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("../../hack/tools/helm/build.sh").CombinedOutput()
	if err != nil {
		t.Fatalf("hack/tools/helm/build.sh: %v\n%s", err, out)
	}
	bin, err := filepath.Abs("../../_output/bin/helm")
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// helmRun runs helm with args and returns its standard output, or the
// error with its standard error.
func helmRun(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(helm(t), args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("helm %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String(), nil
}

// helmTemplate renders the chart as release flashpv in namespace flashpv.
func helmTemplate(t *testing.T, args ...string) rendered {
	t.Helper()
	out, err := helmRun(t, append([]string{"template", "flashpv", chart, "--namespace", "flashpv"}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	return parseRendered(t, out)
}

var docSeparator = regexp.MustCompile(`(?m)^---\s*$`)

func parseRendered(t *testing.T, out string) rendered {
	t.Helper()
	r := rendered{kinds: map[string][]string{}, objs: map[string][]byte{}}
	for _, doc := range docSeparator.Split(out, -1) {
		var meta struct {
			Kind     string
			Metadata struct{ Name string }
		}
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			t.Fatalf("helm template: %v\n%s", err, doc)
		}
		if meta.Kind == "" {
			continue // comments only
		}
		key := meta.Kind + "/" + meta.Metadata.Name
		if _, dup := r.objs[key]; dup {
			t.Errorf("helm template renders %s twice", key)
		}
		r.kinds[meta.Kind] = append(r.kinds[meta.Kind], meta.Metadata.Name)
		r.objs[key] = []byte(doc)
	}
	return r
}

// helmLabels are what the chart adds to every object's metadata for
// Helm's tooling; the kustomize base does not carry them.
var helmLabels = []string{"helm.sh/chart", "app.kubernetes.io/managed-by", "app.kubernetes.io/instance", "app.kubernetes.io/part-of"}

// normalised: every object of a rendering, keyed by kind/namespace/name,
// without Helm's labels and the pods' checksum annotations (the chart
// restarts a node group's pods when its pools change).
func normalised(t *testing.T, r rendered) map[string]map[string]any {
	t.Helper()
	out := map[string]map[string]any{}
	for key, b := range r.objs {
		var obj map[string]any
		if err := yaml.Unmarshal(b, &obj); err != nil {
			t.Fatalf("%s: %v", key, err)
		}
		meta, _ := obj["metadata"].(map[string]any)
		if labels, ok := meta["labels"].(map[string]any); ok {
			for _, l := range helmLabels {
				delete(labels, l)
			}
			if len(labels) == 0 {
				delete(meta, "labels")
			}
		}
		if tmpl, ok := dig(obj, "spec", "template", "metadata").(map[string]any); ok {
			if ann, ok := tmpl["annotations"].(map[string]any); ok {
				for k := range ann {
					if strings.HasPrefix(k, "checksum/") {
						delete(ann, k)
					}
				}
			}
		}
		ns, _ := meta["namespace"].(string)
		out[fmt.Sprintf("%s/%s/%s", obj["kind"], ns, meta["name"])] = obj
	}
	return out
}

func dig(v any, path ...string) any {
	for _, p := range path {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[p]
	}
	return v
}

// differences lists where a and b differ, as paths.
func differences(path string, a, b any) []string {
	switch a := a.(type) {
	case map[string]any:
		bm, ok := b.(map[string]any)
		if !ok {
			break
		}
		var out []string
		keys := map[string]bool{}
		for k := range a {
			keys[k] = true
		}
		for k := range bm {
			keys[k] = true
		}
		for _, k := range slices.Sorted(func(yield func(string) bool) {
			for k := range keys {
				if !yield(k) {
					return
				}
			}
		}) {
			out = append(out, differences(path+"."+k, a[k], bm[k])...)
		}
		return out
	case []any:
		bl, ok := b.([]any)
		if !ok || len(a) != len(bl) {
			break
		}
		var out []string
		for i := range a {
			out = append(out, differences(fmt.Sprintf("%s[%d]", path, i), a[i], bl[i])...)
		}
		return out
	}
	if reflect.DeepEqual(a, b) {
		return nil
	}
	return []string{fmt.Sprintf("%s: kustomize %v, helm %v", path, a, b)}
}

// sameObjects fails for every object only one side has and every field
// in which the two differ.
func sameObjects(t *testing.T, kustomize, helm map[string]map[string]any) {
	t.Helper()
	var keys []string
	for k := range kustomize {
		keys = append(keys, k)
	}
	for k := range helm {
		if _, ok := kustomize[k]; !ok {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		kz, inK := kustomize[k]
		hz, inH := helm[k]
		switch {
		case !inH:
			t.Errorf("%s: in the kustomize base, not in the chart's rendering", k)
		case !inK:
			t.Errorf("%s: in the chart's rendering, not in the kustomize base", k)
		default:
			for _, d := range differences(k, kz, hz) {
				t.Error(d)
			}
		}
	}
}

func without(objs map[string]map[string]any, kind string) map[string]map[string]any {
	out := map[string]map[string]any{}
	for k, v := range objs {
		if !strings.HasPrefix(k, kind+"/") {
			out[k] = v
		}
	}
	return out
}

// TestHelmMatchesKustomize: the chart's defaults are the kustomize base.
// The Namespace is left to the installer (helm install --create-namespace
// makes one without the Pod Security label), unless namespace.create; the
// snapshot-controller is the base deploy/kubernetes/snapshot-controller.
func TestHelmMatchesKustomize(t *testing.T) {
	base := normalised(t, render(t, "../../deploy/kubernetes"))
	if len(base) < 10 {
		t.Fatalf("the kustomize base has %d objects", len(base))
	}
	t.Run("defaults", func(t *testing.T) {
		sameObjects(t, without(base, "Namespace"), normalised(t, helmTemplate(t)))
	})
	t.Run("namespace.create", func(t *testing.T) {
		sameObjects(t, base, normalised(t, helmTemplate(t, "--set", "namespace.create=true")))
	})
	t.Run("snapshotController.enabled", func(t *testing.T) {
		want := without(base, "Namespace")
		for k, v := range normalised(t, render(t, "../../deploy/kubernetes/snapshot-controller")) {
			want[k] = v
		}
		sameObjects(t, want, normalised(t, helmTemplate(t, "--set", "snapshotController.enabled=true")))
	})
}

// TestHelmSeesADifference: the comparison fails when the chart renders
// something else (here: another log level of the node plugin).
func TestHelmSeesADifference(t *testing.T) {
	base := without(normalised(t, render(t, "../../deploy/kubernetes")), "Namespace")
	got := normalised(t, helmTemplate(t, "--set", "node.logLevel=5"))
	var diffs []string
	for k := range base {
		diffs = append(diffs, differences(k, base[k], got[k])...)
	}
	if len(diffs) != 1 || !strings.Contains(diffs[0], "DaemonSet/flashpv/flashpv-node.spec.template.spec.containers[0].args") {
		t.Errorf("differences %q, want the flashpv container's args", diffs)
	}
}

func TestHelmLint(t *testing.T) {
	for _, args := range [][]string{nil, {"--values", "testdata/helm-full-values.yaml"}} {
		out, err := helmRun(t, append([]string{"lint", "--strict", chart}, args...)...)
		if err != nil {
			t.Errorf("%v\n%s", err, out)
		}
	}
}

// TestHelmRefuses: values the chart cannot turn into a working install
// fail the rendering with a message that says why.
func TestHelmRefuses(t *testing.T) {
	for _, tc := range []struct {
		name string
		set  []string
		want string
	}{
		{"two catch-all groups", []string{"nodeGroups[0].name=a", "nodeGroups[0].hostPath=/x", "nodeGroups[0].pools[0].name=p", "nodeGroups[0].pools[0].path=/var/lib/flashpv/p",
			"nodeGroups[1].name=b", "nodeGroups[1].hostPath=/y", "nodeGroups[1].pools[0].name=p", "nodeGroups[1].pools[0].path=/var/lib/flashpv/p"}, "at most one group may have an empty nodeSelector"},
		{"a group twice", []string{"nodeGroups[0].name=a", "nodeGroups[0].hostPath=/x", "nodeGroups[0].pools[0].name=p", "nodeGroups[0].pools[0].path=/var/lib/flashpv/p",
			"nodeGroups[1].name=a", "nodeGroups[1].nodeSelector.disk=nvme", "nodeGroups[1].hostPath=/y", "nodeGroups[1].pools[0].name=p", "nodeGroups[1].pools[0].path=/var/lib/flashpv/p"}, "node group a is given twice"},
		{"a group without pools", []string{"nodeGroups[0].name=a", "nodeGroups[0].hostPath=/x"}, "node group a has no pools"},
		{"a group name that is no DNS label", []string{"nodeGroups[0].name=Fast_Disks", "nodeGroups[0].hostPath=/x", "nodeGroups[0].pools[0].name=p", "nodeGroups[0].pools[0].path=/var/lib/flashpv/p"}, "a DNS label"},
		{"a pool outside the pool mount", []string{"nodeGroups[0].name=default", "nodeGroups[0].hostPath=/x", "nodeGroups[0].pools[0].name=p", "nodeGroups[0].pools[0].path=/mnt/p"}, "must lie below /var/lib/flashpv/"},
		{"a pool twice", []string{"nodeGroups[0].name=default", "nodeGroups[0].hostPath=/x", "nodeGroups[0].pools[0].name=p", "nodeGroups[0].pools[0].path=/var/lib/flashpv/p",
			"nodeGroups[0].pools[1].name=p", "nodeGroups[0].pools[1].path=/var/lib/flashpv/q"}, "pool p is given twice"},
		{"an lvm option on an image pool", []string{"nodeGroups[0].name=default", "nodeGroups[0].hostPath=/x", "nodeGroups[0].pools[0].name=p", "nodeGroups[0].pools[0].path=/var/lib/flashpv/p", "nodeGroups[0].pools[0].thinPool=t"}, "are for lvm pools"},
		{"an lvm pool without a volume group", []string{"nodeGroups[0].name=default", "nodeGroups[0].hostPath=/x", "nodeGroups[0].pools[0].name=p", "nodeGroups[0].pools[0].type=lvm"}, "needs a volumeGroup"},
		{"an unknown pool type", []string{"nodeGroups[0].name=default", "nodeGroups[0].hostPath=/x", "nodeGroups[0].pools[0].name=p", "nodeGroups[0].pools[0].type=zfs"}, `type "zfs"`},
		{"a bad pool name", []string{"nodeGroups[0].name=default", "nodeGroups[0].hostPath=/x", "nodeGroups[0].pools[0].name=Fast", "nodeGroups[0].pools[0].path=/var/lib/flashpv/p"}, `pool name "Fast"`},
		{"orphans deleted without the controller", []string{"controller.enabled=false", "nodeGroups[0].name=default", "nodeGroups[0].hostPath=/x", "nodeGroups[0].pools[0].name=p",
			"nodeGroups[0].pools[0].path=/var/lib/flashpv/p", "nodeGroups[0].pools[0].deleteOrphans=true"}, "deleteOrphans needs the controller"},
		{"an unknown node loss policy", []string{"storageClasses[0].name=c", "storageClasses[0].nodeLossPolicy=Delete"}, `nodeLossPolicy "Delete"`},
		{"crossNode neither true nor false", []string{"storageClasses[0].name=c", "storageClasses[0].crossNode=yes"}, "crossNode yes"},
		{"an unknown filesystem", []string{"storageClasses[0].name=c", "storageClasses[0].fsType=ntfs"}, `fsType "ntfs"`},
		{"a class without a name", []string{"storageClasses[0].pool=default"}, "every class needs a name"},
		{"an image without tag or digest", []string{"image.tag="}, "needs a tag or a digest"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := helmRun(t, "template", "flashpv", chart, "--namespace", "flashpv", "--set", strings.Join(tc.set, ","))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("rendered (error %v), want an error saying %q:\n%.2000s", err, tc.want, out)
			}
		})
	}
}
