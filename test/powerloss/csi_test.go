//go:build powerloss

package powerloss

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flashpv/flashpv/pkg/pool"
)

const (
	mib = 1 << 20
	// expandStep is how much NodeExpandVolume grows a volume by.
	expandStep = 64 * mib
	// callTimeout bounds a call; emulation is slow, a hang still fails.
	callTimeout = 3 * time.Minute
)

// initialSize is a new volume's size by kind: mkfs.xfs wants 300 MiB,
// mkfs.btrfs more than 109.
func initialSize(kind string) int64 {
	switch kind {
	case "xfs":
		return 320 * mib
	case "btrfs":
		return 160 * mib
	}
	return 64 * mib
}

func capability(kind string) *csi.VolumeCapability {
	mode := &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}
	if kind == "block" {
		return &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}}, AccessMode: mode}
	}
	return &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: kind}}, AccessMode: mode}
}

// createRequest is the request of a create event, as the provisioner
// would send it again.
func createRequest(ev event) *csi.CreateVolumeRequest {
	top := []*csi.Topology{{Segments: map[string]string{"flashpv.dev/node": nodeID}}}
	req := &csi.CreateVolumeRequest{
		Name:                      ev.Name,
		CapacityRange:             &csi.CapacityRange{RequiredBytes: ev.Size},
		Parameters:                map[string]string{"pool": ev.Pool},
		VolumeCapabilities:        []*csi.VolumeCapability{capability(ev.Kind)},
		AccessibilityRequirements: &csi.TopologyRequirement{Requisite: top, Preferred: top},
	}
	if ev.Snap != "" {
		req.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
			Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: ev.Snap}}}
	}
	return req
}

func idFor(poolName, name string) string { return pool.IDFor(poolName, name).String() }

// The kubelet's paths of a volume, from its name (one pod per volume).
func stagingPath(name, kind string) string {
	if kind == "block" {
		return filepath.Join(kubeletDir, "plugins/kubernetes.io/csi/volumeDevices/staging", name)
	}
	return filepath.Join(kubeletDir, "plugins/kubernetes.io/csi/flashpv.dev", name, "globalmount")
}

func targetPath(name, kind string) string {
	if kind == "block" {
		return filepath.Join(kubeletDir, "plugins/kubernetes.io/csi/volumeDevices/publish", name, "pod-"+name)
	}
	return filepath.Join(kubeletDir, "pods", "pod-"+name, "volumes/kubernetes.io~csi", name, "mount")
}

// retry runs a call until it succeeds or fails with something other than
// Aborted (an operation on the same volume in flight) or Unavailable.
func retry(f func(ctx context.Context) error) error {
	var err error
	for range 20 {
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		err = f(ctx)
		cancel()
		if c := status.Code(err); c != codes.Aborted && c != codes.Unavailable {
			return err
		}
		time.Sleep(200 * time.Millisecond)
	}
	return err
}

func (d *flashpv) stage(id, name, kind string) error {
	return retry(func(ctx context.Context) error {
		_, err := d.node.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: stagingPath(name, kind),
			VolumeCapability: capability(kind)})
		return err
	})
}

func (d *flashpv) publish(id, name, kind string) error {
	return retry(func(ctx context.Context) error {
		_, err := d.node.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: stagingPath(name, kind),
			TargetPath: targetPath(name, kind), VolumeCapability: capability(kind)})
		return err
	})
}

// release unpublishes and unstages a volume, as the kubelet does when its
// pod goes (also after a reboot, for what it finds in its directory).
func (d *flashpv) release(id, name, kind string) error {
	var err error
	// A mount another process holds for a moment is busy (the kubelet
	// retries an unpublish that failed): again, for a few seconds.
	for range 20 {
		err = retry(func(ctx context.Context) error {
			_, err := d.node.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: targetPath(name, kind)})
			return err
		})
		if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "busy") {
			break
		}
		d.busy.Add(1)
		time.Sleep(250 * time.Millisecond)
	}
	if err != nil && status.Code(err) != codes.NotFound {
		return err
	}
	err = retry(func(ctx context.Context) error {
		_, err := d.node.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: stagingPath(name, kind)})
		return err
	})
	if status.Code(err) == codes.NotFound {
		return nil
	}
	return err
}

func (d *flashpv) deleteVolume(id string) error {
	return retry(func(ctx context.Context) error {
		_, err := d.ctl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id})
		return err
	})
}

func (d *flashpv) deleteSnapshot(id string) error {
	return retry(func(ctx context.Context) error {
		_, err := d.ctl.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: id})
		return err
	})
}

// listVolumes returns every volume's capacity by ID.
func (d *flashpv) listVolumes() (map[string]int64, error) {
	vols := map[string]int64{}
	token := ""
	for {
		var resp *csi.ListVolumesResponse
		err := retry(func(ctx context.Context) (err error) {
			resp, err = d.ctl.ListVolumes(ctx, &csi.ListVolumesRequest{StartingToken: token})
			return err
		})
		if err != nil {
			return nil, err
		}
		for _, e := range resp.GetEntries() {
			vols[e.GetVolume().GetVolumeId()] = e.GetVolume().GetCapacityBytes()
		}
		if token = resp.GetNextToken(); token == "" {
			return vols, nil
		}
	}
}

// listSnapshots returns every snapshot by ID.
func (d *flashpv) listSnapshots() (map[string]*csi.Snapshot, error) {
	snaps := map[string]*csi.Snapshot{}
	token := ""
	for {
		var resp *csi.ListSnapshotsResponse
		err := retry(func(ctx context.Context) (err error) {
			resp, err = d.ctl.ListSnapshots(ctx, &csi.ListSnapshotsRequest{StartingToken: token})
			return err
		})
		if err != nil {
			return nil, err
		}
		for _, e := range resp.GetEntries() {
			snaps[e.GetSnapshot().GetSnapshotId()] = e.GetSnapshot()
		}
		if token = resp.GetNextToken(); token == "" {
			return snaps, nil
		}
	}
}

var errNoSource = errors.New("the source is gone")
