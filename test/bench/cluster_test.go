package main

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

func TestBenchSet(t *testing.T) {
	var model appsv1.StatefulSet
	if err := readExample("statefulset.yaml", "StatefulSet", &model); err != nil {
		t.Fatal(err)
	}
	size := resource.MustParse("16Mi")
	for _, tc := range []struct {
		name     string
		emptyDir bool
	}{{"bench-flashpv", false}, {"bench-emptydir", true}} {
		t.Run(tc.name, func(t *testing.T) {
			s := benchSet(&model, tc.name, tc.emptyDir, size, "flashpv")
			if s.Name != tc.name || *s.Spec.Replicas != 0 || s.Spec.Selector.MatchLabels["app"] != tc.name || s.Spec.Template.Labels["app"] != tc.name {
				t.Fatalf("name, replicas or labels: %+v", s.ObjectMeta)
			}
			terms := s.Spec.Template.Spec.Affinity.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution
			if len(terms) == 0 || terms[0].PodAffinityTerm.LabelSelector.MatchLabels["app"] != tc.name {
				t.Errorf("anti-affinity does not select the set's own pods: %+v", terms)
			}
			var emptyDirs int
			for _, v := range s.Spec.Template.Spec.Volumes {
				if v.EmptyDir != nil && v.Name == "data" {
					emptyDirs++
				}
			}
			if tc.emptyDir {
				if len(s.Spec.VolumeClaimTemplates) != 0 || emptyDirs != 1 {
					t.Errorf("emptyDir set: %d claim templates, %d emptyDir volumes", len(s.Spec.VolumeClaimTemplates), emptyDirs)
				}
				return
			}
			c := s.Spec.VolumeClaimTemplates
			if len(c) != 1 || emptyDirs != 0 || c[0].Spec.Resources.Requests.Storage().Cmp(size) != 0 || *c[0].Spec.StorageClassName != "flashpv" {
				t.Errorf("claims: %+v", c)
			}
		})
	}
	// The model itself is left as it was.
	if *model.Spec.Replicas != 3 || len(model.Spec.VolumeClaimTemplates) != 1 || model.Spec.VolumeClaimTemplates[0].Spec.Resources.Requests.Storage().String() != "1Gi" {
		t.Errorf("model changed: %+v", model.Spec)
	}
}

func TestPinnedNode(t *testing.T) {
	pv := &corev1.PersistentVolume{Spec: corev1.PersistentVolumeSpec{NodeAffinity: &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{
		NodeSelectorTerms: []corev1.NodeSelectorTerm{{MatchExpressions: []corev1.NodeSelectorRequirement{
			{Key: "other", Operator: corev1.NodeSelectorOpIn, Values: []string{"x"}},
			{Key: "flashpv.dev/node", Operator: corev1.NodeSelectorOpIn, Values: []string{"node-2"}}}}}}}}}
	if got := pinnedNode(pv); got != "node-2" {
		t.Errorf("pinnedNode = %q", got)
	}
	if got := pinnedNode(&corev1.PersistentVolume{}); got != "" {
		t.Errorf("pinnedNode of no affinity = %q", got)
	}
}

func TestClusterReport(t *testing.T) {
	s := &scaleUpResult{Replicas: 30, VolumeBytes: 16 << 20, Checked: 60, Rounds: []scaleRound{
		{FlashpvSec: 30, EmptyDirSec: 25, BoundSec: 10, TeardownSec: 20, PerNode: map[string]int{"node-1": 10},
			FlashpvStages:  stageTimes{"claim bound": {"a": time.Second, "b": 3 * time.Second}, "pod ready": {"a": 5 * time.Second}}.summary(),
			EmptyDirStages: stageTimes{"pod ready": {"a": 4 * time.Second}}.summary()},
		{FlashpvSec: 33, EmptyDirSec: 30, BoundSec: 12, TeardownSec: 22,
			FlashpvStages:  stageTimes{"claim bound": {"a": 4 * time.Second}, "pod ready": {"a": 7 * time.Second}}.summary(),
			EmptyDirStages: stageTimes{"pod ready": {"a": 6 * time.Second}}.summary()},
	}}
	s.summarize()
	if s.Ratio.Median != 1.15 || s.Ratio.Min != 1.1 || s.Ratio.Max != 1.2 || s.FlashpvSec.Median != 31.5 {
		t.Errorf("summary %+v", s)
	}
	dir := t.TempDir()
	// A cluster run adds its section to the report the other phases wrote.
	first := &report{Machine: machine{Host: "h"}, Scale: &scaleResult{Volumes: 7}}
	if err := first.write(dir, false); err != nil {
		t.Fatal(err)
	}
	rep, err := readReport(dir)
	if err != nil {
		t.Fatal(err)
	}
	rep.Cluster = &clusterResult{Nodes: []string{"node-1", "node-2", "node-3"}, Scale: s,
		Restore: &restoreResult{Skipped: errNoSnapshotAPI.Error()}}
	if err := rep.write(dir, false); err != nil {
		t.Fatal(err)
	}
	md, _ := os.ReadFile(filepath.Join(dir, "report.md"))
	for _, want := range []string{"Scale: 7 volumes", "## Cluster: 3 node(s)", "**1.15 [1.10–1.20]**",
		"all 60 flashpv volumes pinned",
		"| claim bound | 3.0 / 3.5 | – |", "| pod ready | 6.0 / 6.0 | 5.0 / 5.0 |", "Skipped: the VolumeSnapshot API"} {
		if !strings.Contains(string(md), want) {
			t.Errorf("report.md lacks %q:\n%s", want, md)
		}
	}
}

// TestClusterOptionsFinish: the defaults and -quick's sizes are valid
// together (a check of one part's flags once refused -quick altogether).
func TestClusterOptionsFinish(t *testing.T) {
	for _, quick := range []bool{false, true} {
		var o clusterOptions
		fs := flag.NewFlagSet("bench", flag.ContinueOnError)
		o.addFlags(fs)
		if err := fs.Parse(nil); err != nil {
			t.Fatal(err)
		}
		if err := o.finish(quick); err != nil {
			t.Errorf("quick=%v: %v", quick, err)
		}
	}
}
