package deploy

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"sigs.k8s.io/yaml"
)

// docs splits every examples/*.yaml into documents keyed by kind/name.
func docs(t *testing.T) map[string][]byte {
	t.Helper()
	files, _ := filepath.Glob("../../examples/*.yaml")
	if len(files) == 0 {
		t.Fatal("no examples")
	}
	out := map[string][]byte{}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range bytes.Split(data, []byte("\n---\n")) {
			var meta struct {
				Kind     string
				Metadata struct{ Name string }
			}
			if err := yaml.Unmarshal(d, &meta); err != nil || meta.Kind == "" {
				t.Fatalf("%s: not a Kubernetes object: %v", f, err)
			}
			out[meta.Kind+"/"+meta.Metadata.Name] = d
		}
	}
	return out
}

func TestExamples(t *testing.T) {
	all := docs(t)
	classes := map[string]storagev1.StorageClass{}
	for key, d := range all {
		if !strings.HasPrefix(key, "StorageClass/") {
			continue
		}
		var sc storagev1.StorageClass
		if err := yaml.UnmarshalStrict(d, &sc); err != nil {
			t.Fatal(key, err)
		}
		classes[sc.Name] = sc
		if sc.Provisioner != "flashpv.dev" || sc.VolumeBindingMode == nil || *sc.VolumeBindingMode != storagev1.VolumeBindingWaitForFirstConsumer ||
			sc.AllowVolumeExpansion == nil || !*sc.AllowVolumeExpansion {
			t.Errorf("%s: must be flashpv.dev, WaitForFirstConsumer, expandable", key)
		}
		// flashpv refuses parameters it does not know.
		for k := range sc.Parameters {
			if k != "pool" && !strings.HasPrefix(k, "csi.storage.k8s.io/") {
				t.Errorf("%s: parameter %q would be refused by the driver", key, k)
			}
		}
	}
	if classes["flashpv"].Parameters["csi.storage.k8s.io/fstype"] != "ext4" || classes["flashpv-xfs"].Parameters["csi.storage.k8s.io/fstype"] != "xfs" {
		t.Errorf("want an ext4 class flashpv and an xfs class flashpv-xfs: %v", classes)
	}

	var sts appsv1.StatefulSet
	if err := yaml.UnmarshalStrict(all["StatefulSet/journal"], &sts); err != nil {
		t.Fatal(err)
	}
	var svc corev1.Service
	if err := yaml.UnmarshalStrict(all["Service/"+sts.Spec.ServiceName], &svc); err != nil || svc.Spec.ClusterIP != "None" {
		t.Errorf("StatefulSet needs its headless service: %v", err)
	}
	if *sts.Spec.Replicas != 3 || len(sts.Spec.VolumeClaimTemplates) != 1 {
		t.Errorf("StatefulSet: %d replicas, %d claim templates", *sts.Spec.Replicas, len(sts.Spec.VolumeClaimTemplates))
	}
	if sc := sts.Spec.VolumeClaimTemplates[0].Spec.StorageClassName; sc == nil || classes[*sc].Name == "" {
		t.Errorf("claim template class %v is not among the examples", sc)
	}

	var pvc corev1.PersistentVolumeClaim
	if err := yaml.UnmarshalStrict(all["PersistentVolumeClaim/raw"], &pvc); err != nil || pvc.Spec.VolumeMode == nil || *pvc.Spec.VolumeMode != corev1.PersistentVolumeBlock {
		t.Errorf("block example: %v", err)
	}
	var pod corev1.Pod
	if err := yaml.UnmarshalStrict(all["Pod/raw-user"], &pod); err != nil || len(pod.Spec.Containers[0].VolumeDevices) != 1 {
		t.Errorf("block pod: %v", err)
	}
}

// TestSnapshotExamples: the class is flashpv's and takes no parameters (the
// driver refuses any), the snapshot is of the StatefulSet's first claim,
// and the restore and the clone are made from it on its node: their pods
// go where the source claim's pod runs.
func TestSnapshotExamples(t *testing.T) {
	all := docs(t)
	var class struct {
		Driver         string
		DeletionPolicy string
		Parameters     map[string]string
	}
	if err := yaml.Unmarshal(all["VolumeSnapshotClass/flashpv"], &class); err != nil || class.Driver != "flashpv.dev" ||
		class.DeletionPolicy != "Delete" || len(class.Parameters) != 0 {
		t.Errorf("VolumeSnapshotClass flashpv: %+v %v", class, err)
	}
	var snap struct {
		Spec struct {
			VolumeSnapshotClassName string
			Source                  struct{ PersistentVolumeClaimName string }
		}
	}
	if err := yaml.Unmarshal(all["VolumeSnapshot/journal-0-snap"], &snap); err != nil || snap.Spec.VolumeSnapshotClassName != "flashpv" ||
		snap.Spec.Source.PersistentVolumeClaimName != "data-journal-0" {
		t.Errorf("VolumeSnapshot journal-0-snap: %+v %v", snap, err)
	}
	for name, source := range map[string]string{"journal-0-restore": "VolumeSnapshot/journal-0-snap", "journal-0-clone": "PersistentVolumeClaim/data-journal-0"} {
		var pvc corev1.PersistentVolumeClaim
		if err := yaml.UnmarshalStrict(all["PersistentVolumeClaim/"+name], &pvc); err != nil {
			t.Fatal(name, err)
		}
		ds := pvc.Spec.DataSource
		if ds == nil || ds.Kind+"/"+ds.Name != source || pvc.Spec.Resources.Requests.Storage().Cmp(resource.MustParse("1Gi")) < 0 {
			t.Errorf("%s: data source %+v, request %v", name, ds, pvc.Spec.Resources.Requests)
		}
		var pod corev1.Pod
		if err := yaml.UnmarshalStrict(all["Pod/"+name], &pod); err != nil {
			t.Fatal(name, err)
		}
		// The clone reads a volume in use, so it is made on its node; the
		// restore goes anywhere (a transfer when it lands elsewhere).
		a := pod.Spec.Affinity
		if name == "journal-0-restore" {
			if a != nil || pod.Spec.NodeSelector != nil {
				t.Errorf("pod %s is pinned: %+v %v", name, a, pod.Spec.NodeSelector)
			}
		} else if a == nil || a.PodAffinity == nil || len(a.PodAffinity.RequiredDuringSchedulingIgnoredDuringExecution) != 1 ||
			a.PodAffinity.RequiredDuringSchedulingIgnoredDuringExecution[0].LabelSelector.MatchLabels["statefulset.kubernetes.io/pod-name"] != "journal-0" {
			t.Errorf("pod %s is not sent to journal-0's node: %+v", name, a)
		}
		if pod.Spec.Volumes[0].PersistentVolumeClaim.ClaimName != name {
			t.Errorf("pod %s uses %+v", name, pod.Spec.Volumes)
		}
	}
}
