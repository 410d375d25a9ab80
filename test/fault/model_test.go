package fault

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flashpv/flashpv/test/harness"
)

const mib = 1 << 20

// A volume slot goes through the life a StatefulSet claim has: created by
// the provisioner, staged and published by the kubelet for a pod, written,
// expanded, unpublished and unstaged when the pod goes, deleted with its
// claim; then the slot starts over with a new claim.

type volState int

const (
	absent volState = iota
	created
	staged
	published
)

func (s volState) String() string {
	return [...]string{"absent", "created", "staged", "published"}[s]
}

// initialSize is each kind's size at creation: small, and at least what
// the driver accepts for the filesystem.
var initialSize = map[string]int64{"ext4": 64 * mib, "xfs": 320 * mib, "btrfs": 256 * mib, "block": 64 * mib}

// maxGrowth bounds a volume's expansions, so the pool never fills up.
const maxGrowth = 128 * mib

type volume struct {
	slot, gen int
	kind      string // ext4, xfs, btrfs or block
	name, id  string
	context   map[string]string
	initial   int64
	size      int64
	state     volState
	staging   string
	target    string
	pods      int
	fsBehind  bool // an ext4 grew where this driver cannot grow it online
	formatted bool // staged once: its filesystem exists
	files     []fileRecord
	blocks    map[int64]uint64 // 64 KiB slot -> pattern seed
	stuck     string           // why the volume is out of the game
	// reaching is the state a call that failed for good was reaching
	// for: the kubelet treats such a mount as uncertain and tears it down.
	reaching volState
	source   *csi.VolumeContentSource // a restore's snapshot, a copy's snapshot or volume
	n        *node                    // where it lives (nil: node-a)
	params   map[string]string        // CreateVolume's parameters
}

func (v *volume) String() string {
	return fmt.Sprintf("%s (%s, %s, %d MiB)", v.name, v.kind, v.state, v.size/mib)
}

func (v *volume) capability() *csi.VolumeCapability {
	if v.kind == "block" {
		return harness.BlockCap()
	}
	return harness.MountCap(v.kind)
}

// step does one operation on v, chosen as the kubelet or the provisioner
// might; it returns what it did.
func (r *run) step(v *volume) string {
	rng := r.opRng
	roll := rng.IntN(100)
	switch v.state {
	case absent:
		if len(r.snaps) > 0 && roll < 50 {
			r.restore(v, r.snaps[rng.IntN(len(r.snaps))])
			return "restore"
		}
		kinds := r.kinds()
		v.kind = kinds[rng.IntN(len(kinds))]
		r.create(v)
		return "create"
	case created:
		switch {
		case roll < 55:
			r.stage(v)
			return "stage"
		case roll < 75:
			r.deleteVolume(v)
			return "delete"
		case roll < 90:
			r.expand(v, rng.IntN(2))
			return "expand(unstaged)"
		case roll < 95 && r.canSnapshot(v):
			return r.snapshotOrDelete(v)
		default:
			r.create(v) // the provisioner retrying a create that succeeded
			return "create(again)"
		}
	case staged:
		switch {
		case roll < 55:
			r.publish(v)
			return "publish"
		case roll < 75:
			r.unstage(v)
			return "unstage"
		case roll < 90:
			r.expand(v, rng.IntN(2))
			return "expand(staged)"
		case roll < 95 && r.canSnapshot(v):
			return r.snapshotOrDelete(v)
		default:
			r.stage(v) // the kubelet after its own restart
			return "stage(again)"
		}
	default:
		switch {
		case roll < 30:
			r.writeData(v)
			return "write"
		case roll < 55:
			r.expand(v, rng.IntN(2))
			return "expand(published)"
		case roll < 85:
			r.unpublish(v)
			return "unpublish"
		case roll < 92 && r.canSnapshot(v):
			return r.snapshotOrDelete(v)
		default:
			r.publish(v)
			return "publish(again)"
		}
	}
}

// kinds are the volume kinds the backend has.
func (r *run) kinds() []string {
	if r.cfg.backend == "quota" {
		return []string{"xfs"} // directories on the pool's XFS
	}
	if harness.SupportsBlock() {
		return []string{"ext4", "xfs", "btrfs", "block"}
	}
	return []string{"ext4", "xfs", "btrfs"}
}

// outcome handles a call's error: a call that failed for good takes the
// volume out of the game. It reports whether the call succeeded.
func (r *run) outcome(v *volume, what string, err error) bool {
	if err == nil {
		return true
	}
	if isPermanent(err) {
		// The kubelet tears down a mount whose call ended in an error
		// that leaves it uncertain; after a final error it takes the
		// volume as not staged (not published) and never unstages it.
		if uncertain(err) {
			switch what {
			case "NodeStageVolume":
				v.reaching = max(v.reaching, staged)
			case "NodePublishVolume":
				v.reaching = max(v.reaching, published)
			}
		}
		v.stuck = fmt.Sprintf("%s: %v", what, err)
		r.failf(v, "%s", v.stuck)
		return false
	}
	r.fatal(fmt.Errorf("%s %s: %w", what, v.name, err))
	return false
}

func (r *run) create(v *volume) {
	n := r.on(v)
	if v.name == "" {
		v.gen++
		v.name = fmt.Sprintf("pvc-%x-%d-%d", r.cfg.seed&0xffffff, v.slot, v.gen)
		v.initial, v.size = initialSize[v.kind], initialSize[v.kind]
	}
	req := &csi.CreateVolumeRequest{
		Name:                v.name,
		CapacityRange:       &csi.CapacityRange{RequiredBytes: v.size},
		Parameters:          v.params,
		VolumeCapabilities:  []*csi.VolumeCapability{v.capability()},
		VolumeContentSource: v.source,
		AccessibilityRequirements: &csi.TopologyRequirement{
			Requisite: []*csi.Topology{{Segments: map[string]string{"flashpv.dev/node": n.name}}},
			Preferred: []*csi.Topology{{Segments: map[string]string{"flashpv.dev/node": n.name}}},
		},
	}
	var resp *csi.CreateVolumeResponse
	err := r.call(r.createRPC(v), v, func(ctx context.Context) (err error) {
		resp, err = n.drv.ctl.CreateVolume(ctx, req)
		return err
	}, nil)
	if !r.outcome(v, "CreateVolume", err) {
		return
	}
	vol := resp.GetVolume()
	if v.id != "" && vol.GetVolumeId() != v.id {
		r.failf(v, "CreateVolume again answered volume %s, first it was %s", vol.GetVolumeId(), v.id)
	}
	if vol.GetCapacityBytes() < v.size {
		r.failf(v, "CreateVolume answered %d bytes, %d were asked for", vol.GetCapacityBytes(), v.size)
	}
	v.id, v.context = vol.GetVolumeId(), vol.GetVolumeContext()
	if v.state == absent {
		v.state = created
		v.staging = filepath.Join(n.kubeletDir, "plugins/kubernetes.io/csi/flashpv.dev", v.name, "globalmount")
		if v.kind == "block" {
			v.staging = filepath.Join(n.kubeletDir, "plugins/kubernetes.io/csi/volumeDevices/staging", v.name)
		}
	}
}

func (r *run) stage(v *volume) {
	req := &csi.NodeStageVolumeRequest{VolumeId: v.id, StagingTargetPath: v.staging, VolumeCapability: v.capability(), VolumeContext: v.context}
	n := r.on(v)
	err := r.call("NodeStageVolume", v, func(ctx context.Context) error {
		_, err := n.drv.node.NodeStageVolume(ctx, req)
		return err
	}, nil)
	if !r.outcome(v, "NodeStageVolume", err) {
		return
	}
	if v.state == created {
		v.state = staged
	}
	v.formatted = true
	if v.kind != "block" && !isMountPoint(v.staging) {
		r.failf(v, "NodeStageVolume succeeded but nothing is mounted at %s", v.staging)
	}
}

func (r *run) publish(v *volume) {
	n := r.on(v)
	fresh := v.state == staged
	if fresh {
		// A new pod of the StatefulSet: a new UID, a new target path.
		v.pods++
		pod := fmt.Sprintf("pod-%d-%d-%d", v.slot, v.gen, v.pods)
		v.target = filepath.Join(n.kubeletDir, "pods", pod, "volumes/kubernetes.io~csi", v.name, "mount")
		if v.kind == "block" {
			v.target = filepath.Join(n.kubeletDir, "plugins/kubernetes.io/csi/volumeDevices/publish", v.name, pod)
		}
	}
	req := &csi.NodePublishVolumeRequest{VolumeId: v.id, StagingTargetPath: v.staging, TargetPath: v.target,
		VolumeCapability: v.capability(), VolumeContext: v.context}
	err := r.call("NodePublishVolume", v, func(ctx context.Context) error {
		_, err := n.drv.node.NodePublishVolume(ctx, req)
		return err
	}, nil)
	if !r.outcome(v, "NodePublishVolume", err) {
		return
	}
	v.state = published
	if !isMountPoint(v.target) {
		r.failf(v, "NodePublishVolume succeeded but nothing is mounted at %s", v.target)
		return
	}
	r.verifyData(v)
	if fresh {
		// Whatever grew while the volume was not published has grown now.
		v.fsBehind = false
		r.checkSize(v, "after NodePublishVolume")
		if r.opRng.IntN(100) < 60 {
			r.writeData(v)
		}
	}
}

// expand grows v by 32 or 64 MiB (step 0 or 1) as the kubelet does for an
// expanded claim: through the published path, the staging path, or, while
// unstaged, the staging path it will have.
func (r *run) expand(v *volume, step int) {
	grow := int64(32+32*step) * mib
	if v.size+grow-v.initial > maxGrowth {
		r.event("op %d: %s has grown enough", r.opNum, v)
		return
	}
	want := v.size + grow
	req := &csi.NodeExpandVolumeRequest{VolumeId: v.id, VolumePath: v.staging, CapacityRange: &csi.CapacityRange{RequiredBytes: want},
		VolumeCapability: v.capability()}
	if v.state == published {
		req.VolumePath = v.target
	}
	if v.state != created {
		req.StagingTargetPath = v.staging
	}
	// Without CAP_SYS_RESOURCE a mounted ext4 cannot grow: the volume has
	// grown and says so; its filesystem grows when it is next published.
	noCap := func(err error) bool {
		return v.kind == "ext4" && !r.canGrowExt4 && status.Code(err) == codes.FailedPrecondition &&
			strings.Contains(status.Convert(err).Message(), "CAP_SYS_RESOURCE")
	}
	var resp *csi.NodeExpandVolumeResponse
	err := r.call("NodeExpandVolume", v, func(ctx context.Context) (err error) {
		resp, err = r.on(v).drv.node.NodeExpandVolume(ctx, req)
		return err
	}, noCap)
	if err != nil && noCap(err) {
		v.size, v.fsBehind = want, true
		return
	}
	if !r.outcome(v, "NodeExpandVolume", err) {
		return
	}
	if resp.GetCapacityBytes() < want {
		r.failf(v, "NodeExpandVolume to %d bytes answered %d", want, resp.GetCapacityBytes())
	}
	v.size = want
	if v.state == published {
		r.checkSize(v, "after NodeExpandVolume")
		r.verifyData(v)
	}
}

func (r *run) unpublish(v *volume) {
	req := &csi.NodeUnpublishVolumeRequest{VolumeId: v.id, TargetPath: v.target}
	n := r.on(v)
	err := r.call("NodeUnpublishVolume", v, func(ctx context.Context) error {
		_, err := n.drv.node.NodeUnpublishVolume(ctx, req)
		return err
	}, nil)
	if !r.outcome(v, "NodeUnpublishVolume", err) {
		return
	}
	v.state = staged
	if isMountPoint(v.target) {
		r.failf(v, "NodeUnpublishVolume succeeded but %s is still a mount point", v.target)
	}
	// The kubelet removes the pod's volume directory.
	removeEmpty(filepath.Dir(v.target), n.kubeletDir)
}

func (r *run) unstage(v *volume) {
	req := &csi.NodeUnstageVolumeRequest{VolumeId: v.id, StagingTargetPath: v.staging}
	n := r.on(v)
	err := r.call("NodeUnstageVolume", v, func(ctx context.Context) error {
		_, err := n.drv.node.NodeUnstageVolume(ctx, req)
		return err
	}, nil)
	if !r.outcome(v, "NodeUnstageVolume", err) {
		return
	}
	v.state = created
	if isMountPoint(v.staging) {
		r.failf(v, "NodeUnstageVolume succeeded but %s is still a mount point", v.staging)
	}
	if devs := r.loopDevicesOf(v); len(devs) > 0 {
		r.failf(v, "NodeUnstageVolume succeeded but the volume's image is still attached as %v", devs)
	}
	os.Remove(v.staging) // the kubelet's, and empty now
	removeEmpty(filepath.Dir(v.staging), n.kubeletDir)
}

func (r *run) deleteVolume(v *volume) {
	req := &csi.DeleteVolumeRequest{VolumeId: v.id}
	n := r.on(v)
	err := r.call("DeleteVolume", v, func(ctx context.Context) error {
		_, err := n.drv.ctl.DeleteVolume(ctx, req)
		return err
	}, nil)
	if !r.outcome(v, "DeleteVolume", err) {
		return
	}
	*v = volume{slot: v.slot, gen: v.gen, n: v.n}
}

// uncertain tells the errors after which the kubelet does not know whether
// a stage or publish took effect (its isFinalError, negated): these codes,
// and anything that is no gRPC status.
func uncertain(err error) bool {
	var p *permanent
	if errors.As(err, &p) {
		err = p.err
	}
	st, ok := status.FromError(err)
	if !ok {
		return true
	}
	switch st.Code() {
	case codes.Canceled, codes.DeadlineExceeded, codes.Unavailable, codes.ResourceExhausted, codes.Aborted:
		return true
	}
	return false
}

// removeEmpty removes dir and its empty parents up to (not including) stop,
// as the kubelet cleans up; a directory with anything in it stays.
func removeEmpty(dir, stop string) {
	for dir != stop && strings.HasPrefix(dir, stop+"/") {
		if err := os.Remove(dir); err != nil {
			if !errors.Is(err, os.ErrNotExist) {
				return
			}
		}
		dir = filepath.Dir(dir)
	}
}
