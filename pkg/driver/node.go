package driver

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"k8s.io/klog/v2"

	"github.com/flashpv/flashpv/pkg/pool"
)

// Node is the CSI Node service: it attaches a volume's source, formats and
// mounts it at the staging path, and publishes it to pods.
type Node struct {
	csi.UnimplementedNodeServer
	d *Driver
}

func (s *Node) NodeStageVolume(ctx context.Context, req *csi.NodeStageVolumeRequest) (*csi.NodeStageVolumeResponse, error) {
	if err := s.stage(ctx, req); err != nil {
		return nil, toStatus(err)
	}
	return &csi.NodeStageVolumeResponse{}, nil
}

func (s *Node) stage(ctx context.Context, req *csi.NodeStageVolumeRequest) error {
	staging := req.GetStagingTargetPath()
	want, err := s.d.parseCapability(req.GetVolumeCapability())
	if err != nil {
		return err
	}
	nv, err := s.d.openNodeVolume(ctx, req.GetVolumeId(), pathArg{staging, "staging target path"})
	if err != nil {
		return err
	}
	defer nv.release()
	if err := want.matches(nv.vol); err != nil {
		return err
	}
	if err := notIncoming(nv.vol); err != nil {
		return err
	}
	if err := fenced(nv.vol); err != nil {
		return err
	}
	src, err := nv.pool.src.Attach(ctx, nv.vol)
	if err != nil {
		return err
	}
	flags := req.GetVolumeCapability().GetMount().GetMountFlags()
	switch {
	case nv.vol.Mode == pool.ModeBlock:
		return nil
	case nv.pool.layout.Directory:
		return s.d.stageDirectory(nv, src, staging, flags)
	}
	return s.d.stageFilesystem(ctx, nv, src, staging, flags)
}

func (s *Node) NodeUnstageVolume(ctx context.Context, req *csi.NodeUnstageVolumeRequest) (*csi.NodeUnstageVolumeResponse, error) {
	if err := s.unstage(ctx, req); err != nil {
		return nil, toStatus(err)
	}
	return &csi.NodeUnstageVolumeResponse{}, nil
}

func (s *Node) unstage(ctx context.Context, req *csi.NodeUnstageVolumeRequest) error {
	staging := req.GetStagingTargetPath()
	nv, err := s.d.openNodeVolume(ctx, req.GetVolumeId(), pathArg{staging, "staging target path"})
	if err != nil {
		return err
	}
	defer nv.release()
	src, err := nv.pool.src.Find(nv.vol)
	if err != nil {
		return err
	}
	o := s.d.origin(nv, src)
	m, err := s.d.mounts.At(staging)
	if err != nil {
		return err
	}
	if m != nil {
		if !o.Owns(m) {
			return fmt.Errorf("%w: staging path %s holds a mount that is not volume %s", errPrecondition, staging, nv.vol.ID)
		}
		if err := s.d.mounts.Unmount(staging); err != nil {
			return err
		}
	}
	if src == "" {
		return nil
	}
	if left, err := s.d.mounts.MountsOf(o); err != nil {
		return err
	} else if len(left) > 0 {
		return fmt.Errorf("%w: volume %s is still published at %v", errPrecondition, nv.vol.ID, left)
	}
	if err := nv.pool.src.Detach(ctx, nv.vol); err != nil {
		return err
	}
	klog.V(2).InfoS("Volume unstaged", "volumeID", nv.vol.ID, "source", src)
	return nil
}

func (s *Node) NodePublishVolume(ctx context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	if err := s.publish(ctx, req); err != nil {
		return nil, toStatus(err)
	}
	return &csi.NodePublishVolumeResponse{}, nil
}

func (s *Node) publish(ctx context.Context, req *csi.NodePublishVolumeRequest) error {
	target, staging := req.GetTargetPath(), req.GetStagingTargetPath()
	want, err := s.d.parseCapability(req.GetVolumeCapability())
	if err != nil {
		return err
	}
	nv, err := s.d.openNodeVolume(ctx, req.GetVolumeId(), pathArg{target, "target path"}, pathArg{staging, "staging target path"})
	if err != nil {
		return err
	}
	defer nv.release()
	if err := want.matches(nv.vol); err != nil {
		return err
	}
	if err := fenced(nv.vol); err != nil {
		return err
	}
	src, err := nv.pool.src.Find(nv.vol)
	if err != nil {
		return err
	}
	if src == "" {
		return fmt.Errorf("%w: volume %s is not staged", errPrecondition, nv.vol.ID)
	}
	o := s.d.origin(nv, src)
	existing, err := s.d.mounts.At(target)
	if err != nil {
		return err
	}
	if existing != nil {
		if !o.Owns(existing) || existing.ReadOnly != req.GetReadonly() {
			return fmt.Errorf("%w: target %s already holds a different mount", pool.ErrAlreadyExists, target)
		}
		return nil
	}
	if req.GetVolumeCapability().GetAccessMode().GetMode() == csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER {
		if err := s.d.singleWriter(nv, src, staging); err != nil {
			return err
		}
	}
	var opts []string
	if req.GetReadonly() {
		opts = append(opts, "ro")
	}
	source := src
	if nv.vol.Mode == pool.ModeFilesystem {
		sm, err := s.d.mounts.At(staging)
		if err != nil {
			return err
		}
		if sm == nil || !o.Owns(sm) {
			return fmt.Errorf("%w: volume %s is not staged at %s", errPrecondition, nv.vol.ID, staging)
		}
		flags := req.GetVolumeCapability().GetMount().GetMountFlags()
		if nv.vol.FsType == "ext4" && !nv.pool.layout.Directory {
			if err := s.d.growExtBeforePublish(ctx, nv, src, staging, flags); err != nil {
				return err
			}
		}
		source = staging
		opts = append(opts, flags...)
		if err := os.MkdirAll(target, 0o750); err != nil {
			return err
		}
	} else if err := makeFile(target); err != nil {
		return err
	}
	if err := s.d.mounts.Bind(source, target, opts); err != nil {
		return err
	}
	klog.V(2).InfoS("Volume published", "volumeID", nv.vol.ID, "target", target, "readonly", req.GetReadonly())
	return nil
}

func (s *Node) NodeUnpublishVolume(ctx context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	if err := s.unpublish(ctx, req); err != nil {
		return nil, toStatus(err)
	}
	return &csi.NodeUnpublishVolumeResponse{}, nil
}

func (s *Node) unpublish(ctx context.Context, req *csi.NodeUnpublishVolumeRequest) error {
	target := req.GetTargetPath()
	nv, err := s.d.openNodeVolume(ctx, req.GetVolumeId(), pathArg{target, "target path"})
	if err != nil {
		return err
	}
	defer nv.release()
	m, err := s.d.mounts.At(target)
	if err != nil {
		return err
	}
	if m != nil {
		src, err := nv.pool.src.Find(nv.vol)
		if err != nil {
			return err
		}
		if !s.d.origin(nv, src).Owns(m) {
			return fmt.Errorf("%w: target %s holds a mount that is not volume %s", errPrecondition, target, nv.vol.ID)
		}
		if err := s.d.mounts.Unmount(target); err != nil {
			return err
		}
	}
	// The target was created by NodePublishVolume: an empty directory or the
	// file a block device was bound to.
	if err := os.Remove(target); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing target %s: %w", target, err)
	}
	klog.V(2).InfoS("Volume unpublished", "volumeID", nv.vol.ID, "target", target)
	return nil
}

func (s *Node) NodeExpandVolume(ctx context.Context, req *csi.NodeExpandVolumeRequest) (*csi.NodeExpandVolumeResponse, error) {
	size, err := s.expand(ctx, req)
	if err != nil {
		return nil, toStatus(err)
	}
	return &csi.NodeExpandVolumeResponse{CapacityBytes: size}, nil
}

func (s *Node) NodeGetVolumeStats(ctx context.Context, req *csi.NodeGetVolumeStatsRequest) (*csi.NodeGetVolumeStatsResponse, error) {
	resp, err := s.stats(ctx, req)
	if err != nil {
		return nil, toStatus(err)
	}
	return resp, nil
}

func (s *Node) stats(ctx context.Context, req *csi.NodeGetVolumeStatsRequest) (*csi.NodeGetVolumeStatsResponse, error) {
	path := req.GetVolumePath()
	if req.GetVolumeId() == "" {
		return nil, invalid("volume ID is missing")
	}
	if path == "" {
		return nil, invalid("volume path is missing")
	}
	if !filepath.IsAbs(path) {
		return nil, fmt.Errorf("%w: volume path %q is not absolute, so the volume is not there", pool.ErrNotFound, path)
	}
	if err := s.d.checkPath(path, "volume path"); err != nil {
		return nil, err
	}
	nv, err := s.d.openNodeVolume(ctx, req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	defer nv.release()
	src, err := nv.pool.src.Find(nv.vol)
	if err != nil {
		return nil, err
	}
	m, err := s.d.mounts.At(path)
	if err != nil {
		return nil, err
	}
	if src == "" || m == nil || !s.d.origin(nv, src).Owns(m) {
		return nil, fmt.Errorf("%w: volume %s is not published at %s", pool.ErrNotFound, nv.vol.ID, path)
	}
	if nv.vol.Mode == pool.ModeBlock {
		size, err := s.d.mounts.DeviceSize(path)
		if err != nil {
			return nil, err
		}
		return &csi.NodeGetVolumeStatsResponse{Usage: []*csi.VolumeUsage{{Unit: csi.VolumeUsage_BYTES, Total: size}}}, nil
	}
	st, err := s.d.mounts.Statfs(path)
	if err != nil {
		return nil, err
	}
	bytes := &csi.VolumeUsage{Unit: csi.VolumeUsage_BYTES, Total: st.Total, Available: st.Available, Used: st.Used}
	if nv.pool.usage != nil {
		// The filesystem is shared: the volume is its limit and what it uses.
		used, err := nv.pool.usage.Usage(ctx, nv.vol)
		if err != nil {
			return nil, err
		}
		bytes.Total, bytes.Used = nv.vol.SizeBytes, used
		bytes.Available = min(max(nv.vol.SizeBytes-used, 0), bytes.Available)
	}
	return &csi.NodeGetVolumeStatsResponse{Usage: []*csi.VolumeUsage{
		bytes,
		{Unit: csi.VolumeUsage_INODES, Total: st.Inodes, Available: st.InodesFree, Used: st.Inodes - st.InodesFree},
	}}, nil
}

func (s *Node) NodeGetInfo(context.Context, *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	return &csi.NodeGetInfoResponse{
		NodeId:             s.d.nodeID,
		MaxVolumesPerNode:  s.d.maxVolumes,
		AccessibleTopology: s.d.topology(),
	}, nil
}

func (s *Node) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	var caps []*csi.NodeServiceCapability
	for _, t := range []csi.NodeServiceCapability_RPC_Type{
		csi.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME,
		csi.NodeServiceCapability_RPC_EXPAND_VOLUME,
		csi.NodeServiceCapability_RPC_GET_VOLUME_STATS,
		csi.NodeServiceCapability_RPC_GET_VOLUME_HEALTH,
		csi.NodeServiceCapability_RPC_GET_STORAGE_HEALTH,
		csi.NodeServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
	} {
		caps = append(caps, &csi.NodeServiceCapability{Type: &csi.NodeServiceCapability_Rpc{Rpc: &csi.NodeServiceCapability_RPC{Type: t}}})
	}
	return &csi.NodeGetCapabilitiesResponse{Capabilities: caps}, nil
}

func (s *Node) NodeGetVolumeHealth(ctx context.Context, req *csi.NodeGetVolumeHealthRequest) (*csi.NodeGetVolumeHealthResponse, error) {
	for _, p := range []string{req.GetStagingTargetPath(), req.GetVolumePublishPath()} {
		if p != "" {
			if err := s.d.checkPath(p, "path"); err != nil {
				return nil, toStatus(err)
			}
		}
	}
	nv, err := s.d.openNodeVolume(ctx, req.GetVolumeId())
	if err != nil {
		return nil, toStatus(err)
	}
	defer nv.release()
	h := s.d.volumeHealth(ctx, nv.pool, nv.vol)
	h.HealthStatuses = append(h.HealthStatuses, s.d.attachmentHealth(nv, req.GetStagingTargetPath(), req.GetVolumePublishPath())...)
	return &csi.NodeGetVolumeHealthResponse{VolumeHealth: h}, nil
}

// NodeGetStorageHealth reports pools that cannot be read or written, or
// whose storage does not answer, each probed at once and for a bounded time.
func (s *Node) NodeGetStorageHealth(ctx context.Context, _ *csi.NodeGetStorageHealthRequest) (*csi.NodeGetStorageHealthResponse, error) {
	resp := &csi.NodeGetStorageHealthResponse{}
	failed := s.d.probePools(ctx)
	for _, name := range s.d.poolNames {
		if err, ok := failed[name]; ok {
			st, reason := poolCondition(err)
			resp.BackendHealth = append(resp.BackendHealth, &csi.NodeGetStorageHealthResponse_StorageBackendHealth{
				Status: st, Reason: reason, Message: fmt.Sprintf("pool %s: %v", name, err),
			})
		}
	}
	return resp, nil
}
