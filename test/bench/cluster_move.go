package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// moveResult is the downtime of a replica whose node is drained, on a
// drainPolicy: Move class (docs/moving.md): from its pod's eviction until
// it is Ready on another node, beside the same pod's plain restart on its
// own node (evicted, made again by its StatefulSet).
type moveResult struct {
	Skipped      string   `json:"skipped,omitempty"`
	VolumeBytes  int64    `json:"volume_bytes,omitempty"`
	DataBytes    int64    `json:"data_bytes,omitempty"`
	ChangedBytes int64    `json:"changed_bytes,omitempty"` // written after the pre-copy's snapshot
	Rounds       int      `json:"rounds,omitempty"`
	Paths        []string `json:"paths,omitempty"` // "node-a → node-b", per round
	// PreCopySec: cordon until the snapshot is on the target
	// (WaitingForPod), while the pod runs.
	PreCopySec spread `json:"precopy_sec"`
	MoveSec    spread `json:"move_ready_sec"`    // eviction → Ready on the new node
	RestartSec spread `json:"restart_ready_sec"` // eviction → Ready on its node
	Ratio      spread `json:"ratio"`             // move ÷ restart, per round
	// DoneSec: eviction until the move is Done (the source's copy and
	// the snapshot deleted), which may be after the pod is Ready.
	DoneSec spread `json:"done_sec"`
}

const (
	moveSet      = "bench-move"
	moveClass    = "flashpv-bench-move"
	moveTimeout  = 5 * time.Minute
	annMoveState = "flashpv.dev/move-state"
	moveDataFile = "/data/base"
)

// runMove makes a one-replica StatefulSet on a drainPolicy: Move class
// copied from the example class, writes the data into its volume, then
// round after round (order alternated) times a plain restart (the pod
// evicted while its node is schedulable) and a move (the node cordoned;
// once the pre-copy is on the target, the change written and the pod
// evicted). The data's checksum is compared before and after each move.
func (k *kube) runMove(ctx context.Context, o *clusterOptions, class string, nodes []string) (*moveResult, error) {
	switch err := k.snapshotAPI(); {
	case errors.Is(err, errNoSnapshotAPI):
		log.Printf("cluster: move skipped: %v", err)
		return &moveResult{Skipped: err.Error()}, nil
	case err != nil:
		return nil, err
	case len(nodes) < 2:
		return &moveResult{Skipped: "a move needs two nodes"}, nil
	}
	res := &moveResult{VolumeBytes: o.moveBytes, DataBytes: o.moveDataBytes, ChangedBytes: o.moveChangedBytes, Rounds: o.moveRounds}
	if err := k.setUpMove(ctx, o, class); err != nil {
		return nil, err
	}
	sum, err := k.execSet(ctx, fmt.Sprintf("dd if=/dev/urandom of=%s bs=1M count=%d conv=fsync 2>/dev/null && md5sum < %s", moveDataFile, o.moveDataBytes>>20, moveDataFile))
	if err != nil {
		return nil, fmt.Errorf("writing the data: %w", err)
	}
	var moves, restarts, ratios, precopies, dones []float64
	for i := range o.moveRounds {
		var restart, move time.Duration
		for j := range 2 {
			if (i+j)%2 == 0 {
				if restart, err = k.restartReplica(ctx); err != nil {
					return res, fmt.Errorf("round %d, restart: %w", i+1, err)
				}
				continue
			}
			r, err := k.moveReplica(ctx, o, sum)
			if err != nil {
				return res, fmt.Errorf("round %d, move: %w", i+1, err)
			}
			sum, move = r.sum, r.ready
			res.Paths = append(res.Paths, r.from+" → "+r.to)
			precopies, dones = append(precopies, r.precopy.Seconds()), append(dones, r.done.Seconds())
		}
		moves, restarts = append(moves, move.Seconds()), append(restarts, restart.Seconds())
		ratios = append(ratios, move.Seconds()/restart.Seconds())
		log.Printf("cluster: move round %d (%s): Ready %.1f s after the eviction on the new node, %.1f s after a plain restart: %.2fx (pre-copy %.1f s; move done %.1f s after the eviction)",
			i+1, res.Paths[i], move.Seconds(), restart.Seconds(), ratios[i], precopies[i], dones[i])
	}
	res.MoveSec, res.RestartSec, res.Ratio = spreadOf(moves), spreadOf(restarts), spreadOf(ratios)
	res.PreCopySec, res.DoneSec = spreadOf(precopies), spreadOf(dones)
	return res, nil
}

// setUpMove makes the Move class (the example class's parameters and
// drainPolicy: Move), the snapshot class the pre-copy uses, and the
// StatefulSet with one replica, and waits for it to be Ready.
func (k *kube) setUpMove(ctx context.Context, o *clusterOptions, class string) error {
	sc, err := k.cs.StorageV1().StorageClasses().Get(ctx, class, metav1.GetOptions{})
	if err != nil {
		return err
	}
	mc := &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: moveClass}, Provisioner: sc.Provisioner,
		Parameters: map[string]string{"drainPolicy": "Move"}, VolumeBindingMode: sc.VolumeBindingMode,
		ReclaimPolicy: sc.ReclaimPolicy, AllowVolumeExpansion: sc.AllowVolumeExpansion}
	for key, v := range sc.Parameters {
		mc.Parameters[key] = v
	}
	if _, err := k.cs.StorageV1().StorageClasses().Create(ctx, mc, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	k.createdClasses = append(k.createdClasses, moveClass)
	if err := k.createSnapshotClass(ctx); err != nil {
		return err
	}
	var model appsv1.StatefulSet
	if err := readExample("statefulset.yaml", "StatefulSet", &model); err != nil {
		return err
	}
	set := benchSet(&model, moveSet, false, *resource.NewQuantity(o.moveBytes, resource.BinarySI), moveClass)
	*set.Spec.Replicas = 1
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: moveSet}, Spec: corev1.ServiceSpec{
		ClusterIP: corev1.ClusterIPNone, Selector: set.Spec.Selector.MatchLabels,
		Ports: []corev1.ServicePort{{Name: "none", Port: 80}}}}
	if _, err := k.cs.CoreV1().Services(k.ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		return err
	}
	if _, err := k.cs.AppsV1().StatefulSets(k.ns).Create(ctx, set, metav1.CreateOptions{}); err != nil {
		return err
	}
	_, err = k.replicaReady(ctx, "", "")
	return err
}

// replicaReady waits until the replica is Ready, under another UID than
// old and on another node than notOn when they are set.
func (k *kube) replicaReady(ctx context.Context, old types.UID, notOn string) (*corev1.Pod, error) {
	ctx, cancel := context.WithTimeout(ctx, moveTimeout)
	defer cancel()
	var pod *corev1.Pod
	err := poll(ctx, 100*time.Millisecond, func() (bool, string, error) {
		p, err := k.cs.CoreV1().Pods(k.ns).Get(ctx, moveSet+"-0", metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return false, "no pod", nil
		}
		if err != nil {
			return false, "", err
		}
		pod = p
		ok := podReady(p) && p.UID != old && (notOn == "" || p.Spec.NodeName != notOn)
		return ok, "pod " + p.Name + " on " + p.Spec.NodeName + ": " + podState(p), nil
	})
	return pod, err
}

// evict evicts the replica's pod as a drain does, and returns its UID and
// node and when the eviction was asked for.
func (k *kube) evict(ctx context.Context) (types.UID, string, time.Time, error) {
	p, err := k.cs.CoreV1().Pods(k.ns).Get(ctx, moveSet+"-0", metav1.GetOptions{})
	if err != nil {
		return "", "", time.Time{}, err
	}
	start := time.Now()
	err = k.cs.PolicyV1().Evictions(k.ns).Evict(ctx, &policyv1.Eviction{ObjectMeta: metav1.ObjectMeta{Name: p.Name, Namespace: k.ns}})
	return p.UID, p.Spec.NodeName, start, err
}

// restartReplica times a plain restart: evicted, made again on its node.
func (k *kube) restartReplica(ctx context.Context) (time.Duration, error) {
	uid, node, start, err := k.evict(ctx)
	if err != nil {
		return 0, err
	}
	p, err := k.replicaReady(ctx, uid, "")
	if err != nil {
		return 0, err
	}
	if p.Spec.NodeName != node {
		return 0, fmt.Errorf("the restarted replica runs on %s, not on its volume's node %s", p.Spec.NodeName, node)
	}
	return time.Since(start), nil
}

type moveRound struct {
	from, to             string
	precopy, ready, done time.Duration
	sum                  string
}

// moveReplica cordons the replica's node, waits for the pre-copy, writes
// the change, evicts the pod and times it until Ready elsewhere, checks
// the data, waits for the move to be Done and uncordons the node.
func (k *kube) moveReplica(ctx context.Context, o *clusterOptions, before string) (moveRound, error) {
	var r moveRound
	p, err := k.cs.CoreV1().Pods(k.ns).Get(ctx, moveSet+"-0", metav1.GetOptions{})
	if err != nil {
		return r, err
	}
	r.from = p.Spec.NodeName
	claim := "data-" + moveSet + "-0"
	cordoned := time.Now()
	if err := k.cordon(ctx, r.from, true); err != nil {
		return r, err
	}
	defer func() {
		if err := k.cordon(context.Background(), r.from, false); err != nil {
			log.Printf("cluster: uncordon %s: %v", r.from, err)
		}
	}()
	if err := k.waitMoveState(ctx, claim, "WaitingForPod"); err != nil {
		return r, fmt.Errorf("pre-copy: %w", err)
	}
	r.precopy = time.Since(cordoned)
	// The change, in the middle of the data.
	seek := (o.moveDataBytes - o.moveChangedBytes) / 2 >> 20
	change := fmt.Sprintf("dd if=/dev/urandom of=%s bs=1M count=%d seek=%d conv=notrunc,fsync 2>/dev/null && md5sum < %s",
		moveDataFile, o.moveChangedBytes>>20, seek, moveDataFile)
	changed, err := k.execSet(ctx, change)
	if err != nil {
		return r, fmt.Errorf("the change: %w", err)
	}
	if changed == before {
		return r, errors.New("the change left the data's checksum as it was")
	}
	uid, _, start, err := k.evict(ctx)
	if err != nil {
		return r, err
	}
	np, err := k.replicaReady(ctx, uid, r.from)
	if err != nil {
		return r, err
	}
	r.ready, r.to = time.Since(start), np.Spec.NodeName
	if r.sum, err = k.execSet(ctx, "md5sum < "+moveDataFile); err != nil {
		return r, err
	}
	if r.sum != changed {
		return r, fmt.Errorf("the data moved to %s reads %s, it was %s", r.to, r.sum, changed)
	}
	if err := k.waitMoveState(ctx, claim, "Done"); err != nil {
		return r, err
	}
	r.done = time.Since(start)
	return r, nil
}

// waitMoveState waits for the claim's flashpv.dev/move-state.
func (k *kube) waitMoveState(ctx context.Context, claim, want string) error {
	ctx, cancel := context.WithTimeout(ctx, moveTimeout)
	defer cancel()
	return poll(ctx, 100*time.Millisecond, func() (bool, string, error) {
		c, err := k.cs.CoreV1().PersistentVolumeClaims(k.ns).Get(ctx, claim, metav1.GetOptions{})
		if err != nil {
			return false, "", err
		}
		s := c.Annotations[annMoveState]
		if s == "RolledBack" {
			return false, "", fmt.Errorf("the move of %s was rolled back (its Events say why)", claim)
		}
		return s == want, fmt.Sprintf("claim %s: move state %q, waiting for %s", claim, s, want), nil
	})
}

func (k *kube) cordon(ctx context.Context, node string, on bool) error {
	patch := fmt.Sprintf(`{"spec":{"unschedulable":%v}}`, on)
	_, err := k.cs.CoreV1().Nodes().Patch(ctx, node, types.MergePatchType, []byte(patch), metav1.PatchOptions{})
	return err
}

// execSet runs a shell script in the replica's container with kubectl
// (client-go's exec would add a WebSocket stack to the module for this
// one use) and returns its output.
func (k *kube) execSet(ctx context.Context, script string) (string, error) {
	kubectl, err := kubectlPath()
	if err != nil {
		return "", err
	}
	cmd := exec.CommandContext(ctx, kubectl, "--kubeconfig", k.kubeconfig, "exec", "-n", k.ns, moveSet+"-0", "--", "sh", "-c", script)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("kubectl exec %q: %w: %s", script, err, out)
	}
	return strings.TrimSpace(string(out)), nil
}

// kubectlPath is the kubectl hack/cluster built, or the one on PATH.
func kubectlPath() (string, error) {
	root, err := repoRoot()
	if err == nil {
		p := filepath.Join(root, "_output", "bin", "kubectl")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return exec.LookPath("kubectl")
}
