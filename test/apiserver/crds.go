package apiserver

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"sigs.k8s.io/yaml"
)

// The VolumeSnapshot CRDs, from the same module and files as
// hack/cluster/deploy.sh installs on the local cluster.
const (
	snapshotToolsDir = "hack/tools/snapshotter"
	snapshotClient   = "github.com/kubernetes-csi/external-snapshotter/client/v8"
)

var (
	snapshotCRDs = []string{"volumesnapshotclasses", "volumesnapshotcontents", "volumesnapshots"}
	crdsGVR      = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
)

func installCRDs(ctx context.Context, dyn dynamic.Interface, root string) error {
	mod, err := moduleDir(ctx, filepath.Join(root, snapshotToolsDir), snapshotClient)
	if err != nil {
		return err
	}
	for _, c := range snapshotCRDs {
		path := filepath.Join(mod, "config", "crd", "snapshot.storage.k8s.io_"+c+".yaml")
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		var obj map[string]any
		if err := yaml.Unmarshal(b, &obj); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		crd := &unstructured.Unstructured{Object: obj}
		if _, err := dyn.Resource(crdsGVR).Create(ctx, crd, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("creating CRD %s: %w", crd.GetName(), err)
		}
	}
	for _, c := range snapshotCRDs {
		if err := waitEstablished(ctx, dyn, c+".snapshot.storage.k8s.io"); err != nil {
			return err
		}
	}
	return nil
}

func waitEstablished(ctx context.Context, dyn dynamic.Interface, name string) error {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		crd, err := dyn.Resource(crdsGVR).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		conds, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions")
		for _, c := range conds {
			m, _ := c.(map[string]any)
			if m["type"] == "Established" && m["status"] == "True" {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("CRD %s not established: %w", name, ctx.Err())
		case <-tick.C:
		}
	}
}
