package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/flashpv/flashpv/pkg/config"
	"github.com/flashpv/flashpv/pkg/pool"
)

// transferResult is a restore onto another node than its snapshot's, timed
// against a plain TCP copy of the same bytes between the same two nodes,
// round after round; once with the DaemonSet's bandwidth cap, and again
// without it when the cap is what binds.
type transferResult struct {
	Skipped     string  `json:"skipped,omitempty"` // why it did not run
	SourceNode  string  `json:"source_node,omitempty"`
	TargetNode  string  `json:"target_node,omitempty"`
	VolumeBytes int64   `json:"volume_bytes,omitempty"`
	DataBytes   int64   `json:"data_bytes,omitempty"` // written into the source
	SnapshotSec float64 `json:"snapshot_ready_sec,omitempty"`
	// SnapshotAllocated is what the snapshot's file allocates in the
	// source's pool.
	SnapshotAllocated int64         `json:"snapshot_allocated_bytes,omitempty"`
	Runs              []transferRun `json:"runs,omitempty"`
}

// transferRun is the rounds at one --transfer-bandwidth.
type transferRun struct {
	Bandwidth string          `json:"bandwidth"` // the DaemonSet's flag ("" = the default)
	Rounds    []transferRound `json:"rounds"`
	ReadySec  spread          `json:"ready_sec"`    // claim created to pod Ready
	Seconds   spread          `json:"transfer_sec"` // the target's log
	MBps      spread          `json:"mb_per_sec"`   // data bytes ÷ transfer seconds
	PlainMBps spread          `json:"plain_mb_per_sec"`
	Ratio     spread          `json:"ratio"` // flashpv ÷ plain MB/s, per round
}

// transferRound is one restore and one plain copy.
type transferRound struct {
	ReadySec float64 `json:"ready_sec"`
	// From the target's metrics (flashpv_transfer_bytes_total, direction
	// in) and its log line "Volume data received from another node".
	DataBytes    int64   `json:"data_bytes"`
	WireBytes    int64   `json:"wire_bytes"`
	LogDataBytes int64   `json:"log_data_bytes"`
	LogWireBytes int64   `json:"log_wire_bytes"`
	Seconds      float64 `json:"transfer_sec"`
	SendSec      float64 `json:"send_sec"` // the source's log line "Transfer sent"
	MBps         float64 `json:"mb_per_sec"`
	// CPU time of the two flashpv processes from the claim's creation to
	// the pod Ready, and how long their threads waited for a CPU.
	SourceCPUSec  float64 `json:"source_cpu_sec"`
	TargetCPUSec  float64 `json:"target_cpu_sec"`
	SourceWaitSec float64 `json:"source_run_queue_sec"`
	TargetWaitSec float64 `json:"target_run_queue_sec"`
	// LoadAverage is the machine's (1 minute) as the round starts.
	LoadAverage float64 `json:"load_average"`
	// The plain copy: bytes and time as its receiver counts them (from
	// the connection to the end of its sync), and its two processes' CPU.
	PlainDataBytes int64   `json:"plain_data_bytes"`
	PlainWireBytes int64   `json:"plain_wire_bytes"`
	PlainSec       float64 `json:"plain_sec"`
	PlainMBps      float64 `json:"plain_mb_per_sec"`
	PlainSendCPU   float64 `json:"plain_send_cpu_sec"`
	PlainRecvCPU   float64 `json:"plain_recv_cpu_sec"`
	PlainSendWait  float64 `json:"plain_send_run_queue_sec"`
	PlainRecvWait  float64 `json:"plain_recv_run_queue_sec"`
	Ratio          float64 `json:"ratio"`
}

// transferTarget is the throughput the issue asks of flashpv, as a share
// of the plain copy's.
const transferTarget = 0.8

// transferSetup is what the rounds share.
type transferSetup struct {
	class     string
	src, dst  *clusterNode
	snapFile  string // the snapshot's image in the source's pool, seen from the host
	dstDir    string // where the plain copy goes: the target's pool filesystem
	exe       string // this program: the plain copy's two sides
	size      int64
	dataBytes int64
	rounds    int
	next      int // the number of the next restored claim
}

// runTransfer writes data into a claim on one node, snapshots it, and then
// times claims restored from the snapshot with their pods pinned to
// another node, each beside a plain TCP copy of the snapshot's data
// between the two nodes.
func (k *kube) runTransfer(ctx context.Context, o *clusterOptions, class string, nodes []string) (*transferResult, error) {
	if err := k.snapshotAPI(); err != nil {
		if errors.Is(err, errNoSnapshotAPI) {
			return &transferResult{Skipped: err.Error()}, nil
		}
		return nil, err
	}
	if len(nodes) < 2 && (o.transferSource == "" || o.transferTarget == "") {
		return &transferResult{Skipped: "it needs two schedulable nodes"}, nil
	}
	res := &transferResult{VolumeBytes: o.transferBytes, DataBytes: o.transferDataBytes}
	s, err := k.prepareTransfer(ctx, o, class, nodes, res)
	if err != nil || s == nil {
		return res, err
	}
	bw, err := k.transferBandwidth(ctx)
	if err != nil {
		return res, err
	}
	run, err := k.transferRounds(ctx, s, bw)
	if err != nil {
		return res, err
	}
	res.Runs = append(res.Runs, *run)
	if !uncap(o.transferUncapped, bw, run) {
		return res, nil
	}
	// Once more without the cap, and the cap back as it was, also when a
	// round fails.
	log.Printf("cluster: transfer: flashpv %.0f MB/s, the plain copy %.0f MB/s, --transfer-bandwidth=%s: once more with 0 (no limit)", run.MBps.Median, run.PlainMBps.Median, bandwidthOrDefault(bw))
	log.Printf("cluster: should this run be killed meanwhile: kubectl -n %s patch the DaemonSet %s back to %s%s", flashpvNamespace, flashpvDaemonSet, bandwidthFlag, bandwidthOrDefault(bw))
	if err := k.setTransferBandwidth(ctx, "0"); err != nil {
		return res, errors.Join(err, k.setTransferBandwidth(context.WithoutCancel(ctx), bw))
	}
	run, err = k.transferRounds(ctx, s, "0")
	if run != nil && err == nil {
		res.Runs = append(res.Runs, *run)
	}
	log.Printf("cluster: transfer: --transfer-bandwidth=%s again", bandwidthOrDefault(bw))
	return res, errors.Join(err, k.setTransferBandwidth(context.WithoutCancel(ctx), bw))
}

// prepareTransfer makes the source claim with its data, its snapshot (and
// then deletes the claim: a snapshot outlives its source), picks the
// target node and finds the files of the plain copy. It returns no setup
// when the part cannot run (res says why).
func (k *kube) prepareTransfer(ctx context.Context, o *clusterOptions, class string, nodes []string, res *transferResult) (*transferSetup, error) {
	s := &transferSetup{class: class, size: o.transferBytes, dataBytes: o.transferDataBytes, rounds: o.transferRounds}
	var err error
	if s.exe, err = os.Executable(); err != nil {
		return nil, err
	}
	if o.transferSource != "" {
		if err := k.waitSchedulable(ctx, o.transferSource); err != nil {
			return nil, err
		}
	}
	write := fmt.Sprintf("dd if=/dev/urandom of=/data/f bs=1M count=%d && sync", o.transferDataBytes>>20)
	if _, err := k.claimAndPod(ctx, "xfer-source", class, o.transferBytes, "", o.transferSource, write); err != nil {
		return nil, fmt.Errorf("source: %w", err)
	}
	pod, err := k.cs.CoreV1().Pods(k.ns).Get(ctx, "xfer-source", metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	res.SourceNode = pod.Spec.NodeName
	if err := k.createSnapshotClass(ctx); err != nil {
		return nil, err
	}
	start := time.Now()
	if err := k.snapshot(ctx, "xfer-snap", "xfer-source"); err != nil {
		return nil, err
	}
	res.SnapshotSec = time.Since(start).Seconds()
	handle, err := k.snapshotHandle(ctx, "xfer-snap")
	if err != nil {
		return nil, err
	}
	if err := k.deleteClaimAndPod(ctx, "xfer-source"); err != nil {
		return nil, err
	}
	if res.TargetNode = o.transferTarget; res.TargetNode == "" {
		others := slices.DeleteFunc(slices.Clone(nodes), func(n string) bool { return n == res.SourceNode })
		if len(others) == 0 {
			res.Skipped = "no schedulable node besides the source's (" + res.SourceNode + ")"
			return nil, nil
		}
		if res.TargetNode, err = k.roomiest(ctx, class, others); err != nil {
			return nil, err
		}
	}
	if res.TargetNode == res.SourceNode {
		return nil, fmt.Errorf("source and target are both %s", res.SourceNode)
	}
	if s.src, err = k.node(ctx, o.state, res.SourceNode); err != nil {
		return nil, err
	}
	if s.dst, err = k.node(ctx, o.state, res.TargetNode); err != nil {
		return nil, err
	}
	if err := k.snapshotFiles(ctx, s, handle); err != nil {
		return nil, err
	}
	res.SnapshotAllocated = allocatedBytes(s.snapFile)
	log.Printf("cluster: transfer: %d MiB written in a %d MiB volume on %s, snapshot ready in %.1f s (%s, %d MiB allocated); restoring on %s",
		res.DataBytes>>20, res.VolumeBytes>>20, res.SourceNode, res.SnapshotSec, handle, res.SnapshotAllocated>>20, res.TargetNode)
	return s, nil
}

// uncap says whether to run again without the bandwidth cap: always
// ("yes"), never ("no"), or when the cap may be what binds: the plain copy
// is faster than it. flashpv's own speed is no test: its limiter allows a
// burst of one frame, so the time a transfer stalls on its per-segment
// syncs is never made up, and the cap binds well below its nominal rate
// (175 MB/s under 256Mi, 290 MB/s without a cap, in one run).
func uncap(mode, bw string, run *transferRun) bool {
	switch mode {
	case "yes":
		return bw != "0"
	case "no":
		return false
	}
	limit, err := config.ParseSize(bandwidthOrDefault(bw))
	return err == nil && limit > 0 && run.PlainMBps.Median*1e6 > float64(limit)
}

// bandwidthOrDefault is the DaemonSet's flag value, or flashpv's default
// when it has none.
func bandwidthOrDefault(bw string) string {
	if bw == "" {
		return "256Mi"
	}
	return bw
}

// transferRounds runs the rounds, restore and plain copy alternated.
func (k *kube) transferRounds(ctx context.Context, s *transferSetup, bw string) (*transferRun, error) {
	run := &transferRun{Bandwidth: bw}
	var ready, secs, mbps, plain, ratio []float64
	for i := range s.rounds {
		r := transferRound{LoadAverage: loadAverage()}
		for j := range 2 {
			var err error
			if (i+j)%2 == 0 {
				err = k.restoreAcross(ctx, s, &r)
			} else {
				err = s.plainCopy(ctx, &r)
			}
			if err != nil {
				return run, fmt.Errorf("round %d: %w", i+1, err)
			}
		}
		r.Ratio = r.MBps / r.PlainMBps
		log.Printf("cluster: transfer round %d (--transfer-bandwidth=%s, load %.1f): Ready in %.1f s; %d data, %d wire bytes in %.2f s, %.0f MB/s (CPU s: source %.2f, target %.2f; run-queue wait s: %.2f, %.2f); plain copy %.0f MB/s (CPU s: %.2f, %.2f; wait s: %.2f, %.2f): %.2fx",
			i+1, bandwidthOrDefault(bw), r.LoadAverage, r.ReadySec, r.DataBytes, r.WireBytes, r.Seconds, r.MBps, r.SourceCPUSec, r.TargetCPUSec, r.SourceWaitSec, r.TargetWaitSec,
			r.PlainMBps, r.PlainSendCPU, r.PlainRecvCPU, r.PlainSendWait, r.PlainRecvWait, r.Ratio)
		run.Rounds = append(run.Rounds, r)
		ready, secs, mbps = append(ready, r.ReadySec), append(secs, r.Seconds), append(mbps, r.MBps)
		plain, ratio = append(plain, r.PlainMBps), append(ratio, r.Ratio)
	}
	run.ReadySec, run.Seconds, run.MBps, run.PlainMBps, run.Ratio = spreadOf(ready), spreadOf(secs), spreadOf(mbps), spreadOf(plain), spreadOf(ratio)
	return run, nil
}

// restoreAcross restores the snapshot into a new claim whose pod is pinned
// to the target node, and reads what the transfer did from the two nodes'
// flashpv.
func (k *kube) restoreAcross(ctx context.Context, s *transferSetup, r *transferRound) error {
	if err := k.waitSchedulable(ctx, s.src.name, s.dst.name); err != nil {
		return err
	}
	srcPod, err := k.flashpvPod(ctx, s.src.name)
	if err != nil {
		return err
	}
	dstPod, err := k.flashpvPod(ctx, s.dst.name)
	if err != nil {
		return err
	}
	data0, wire0, err := k.transferBytesIn(ctx, dstPod.Name)
	if err != nil {
		return err
	}
	srcPID, err := flashpvPID(s.src.name)
	if err != nil {
		return err
	}
	dstPID, err := flashpvPID(s.dst.name)
	if err != nil {
		return err
	}
	srcCPU, _ := cpuSeconds(srcPID)
	dstCPU, _ := cpuSeconds(dstPID)
	srcWait, dstWait := runQueueSeconds(strconv.Itoa(srcPID)), runQueueSeconds(strconv.Itoa(dstPID))
	if err := s.src.coldFile(s.snapFile); err != nil {
		return err
	}
	name := fmt.Sprintf("xfer-%d", s.next)
	s.next++
	start := time.Now()
	check := fmt.Sprintf("test \"$(stat -c %%s /data/f)\" = %d", s.dataBytes)
	d, err := k.claimAndPod(ctx, name, s.class, s.size, "xfer-snap", s.dst.name, check)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	r.ReadySec = d.Seconds()
	if c, err := cpuSeconds(srcPID); err == nil {
		r.SourceCPUSec = c - srcCPU
	}
	if c, err := cpuSeconds(dstPID); err == nil {
		r.TargetCPUSec = c - dstCPU
	}
	r.SourceWaitSec = max(0, runQueueSeconds(strconv.Itoa(srcPID))-srcWait)
	r.TargetWaitSec = max(0, runQueueSeconds(strconv.Itoa(dstPID))-dstWait)
	data1, wire1, err := k.transferBytesIn(ctx, dstPod.Name)
	if err != nil {
		return err
	}
	r.DataBytes, r.WireBytes = data1-data0, wire1-wire0
	pv, err := k.claimVolume(ctx, name)
	if err != nil {
		return err
	}
	if n := pinnedNode(pv); n != s.dst.name {
		return fmt.Errorf("%s: volume %s is on %q, not %s", name, pv.Name, n, s.dst.name)
	}
	got, err := k.findLog(ctx, dstPod.Name, start, "Volume data received from another node", "volumeID", pv.Spec.CSI.VolumeHandle)
	if err != nil {
		return fmt.Errorf("%s: did the restore cross nodes? %w", name, err)
	}
	r.LogDataBytes, _ = strconv.ParseInt(got["dataBytes"], 10, 64)
	r.LogWireBytes, _ = strconv.ParseInt(got["wireBytes"], 10, 64)
	dur, err := time.ParseDuration(got["duration"])
	if err != nil {
		return fmt.Errorf("duration of the transfer into %s: %w", pv.Name, err)
	}
	r.Seconds = dur.Seconds()
	r.MBps = float64(r.LogDataBytes) / 1e6 / r.Seconds
	if sent, err := k.findLog(ctx, srcPod.Name, start, "Transfer sent", "target", pv.Name); err == nil {
		if d, err := time.ParseDuration(sent["duration"]); err == nil {
			r.SendSec = d.Seconds()
		}
	}
	return k.deleteClaimAndPod(ctx, name)
}

// claimVolume is the PV bound to a claim.
func (k *kube) claimVolume(ctx context.Context, claim string) (*corev1.PersistentVolume, error) {
	pvc, err := k.cs.CoreV1().PersistentVolumeClaims(k.ns).Get(ctx, claim, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	pv, err := k.cs.CoreV1().PersistentVolumes().Get(ctx, pvc.Spec.VolumeName, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	if pv.Spec.CSI == nil {
		return nil, fmt.Errorf("volume %s of %s is not a CSI volume", pv.Name, claim)
	}
	return pv, nil
}

// snapshotHandle is flashpv's ID of a VolumeSnapshot (<pool>.<key>).
func (k *kube) snapshotHandle(ctx context.Context, name string) (string, error) {
	s, err := k.dyn.Resource(snapshots).Namespace(k.ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return "", err
	}
	content, _, _ := unstructured.NestedString(s.Object, "status", "boundVolumeSnapshotContentName")
	c, err := k.dyn.Resource(snapshotGV.WithResource("volumesnapshotcontents")).Get(ctx, content, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("content of snapshot %s: %w", name, err)
	}
	h, _, _ := unstructured.NestedString(c.Object, "status", "snapshotHandle")
	if h == "" {
		return "", fmt.Errorf("snapshot %s has no handle", name)
	}
	return h, nil
}

// snapshotFiles finds the snapshot's image file (<key>.snap in its image
// pool's directory, docs/how-it-works.md) on the source node, and a
// directory on the same pool's filesystem on the target node for the plain
// copy (the pool directory's parent: nothing of flashpv's), both seen from
// the host. The pool's directory comes from flashpv's pools ConfigMap.
func (k *kube) snapshotFiles(ctx context.Context, s *transferSetup, handle string) error {
	name, key, ok := strings.Cut(handle, ".")
	if !ok {
		return fmt.Errorf("snapshot ID %q", handle)
	}
	cm, err := k.cs.CoreV1().ConfigMaps(flashpvNamespace).Get(ctx, "flashpv-pools", metav1.GetOptions{})
	if err != nil {
		return err
	}
	dir, err := poolDirOf(cm.Data["pools"], name)
	if err != nil {
		return err
	}
	s.snapFile = filepath.Join(s.src.root, dir, key+".snap")
	if _, err := os.Stat(s.snapFile); err != nil {
		return fmt.Errorf("snapshot %s on %s: %w", handle, s.src.name, err)
	}
	s.dstDir = filepath.Join(s.dst.root, filepath.Dir(dir))
	var inPool, parent unix.Stat_t
	if err := unix.Stat(filepath.Join(s.dst.root, dir), &inPool); err != nil {
		return err
	}
	if err := unix.Stat(s.dstDir, &parent); err != nil {
		return err
	}
	if inPool.Dev != parent.Dev {
		return fmt.Errorf("%s and its pool %s on %s are not on one filesystem", s.dstDir, dir, s.dst.name)
	}
	return nil
}

// poolDirOf is the directory of an image pool in a pools file (one
// --pool value per line, as flashpv reads it).
func poolDirOf(pools, name string) (string, error) {
	for _, line := range strings.Split(pools, "\n") {
		line, _, _ = strings.Cut(line, "#")
		if line = strings.TrimSpace(line); line == "" {
			continue
		}
		spec, err := config.ParsePoolSpec(line)
		if err != nil {
			return "", err
		}
		if spec.Name == name {
			if spec.Kind != pool.KindImage {
				return "", fmt.Errorf("pool %s is a %s pool; the bench copies image pools' snapshots", name, spec.Kind)
			}
			return spec.Path, nil
		}
	}
	return "", fmt.Errorf("pool %s is not in the flashpv-pools ConfigMap", name)
}
