package driver

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/flashpv/flashpv/pkg/loopdev"
	"github.com/flashpv/flashpv/pkg/pool"
)

func (s *Node) NodeExpandVolume(ctx context.Context, req *csi.NodeExpandVolumeRequest) (*csi.NodeExpandVolumeResponse, error) {
	size, err := s.expand(req)
	if err != nil {
		return nil, toStatus(err)
	}
	return &csi.NodeExpandVolumeResponse{CapacityBytes: size}, nil
}

// expand grows a volume: the image (with a capacity check), the loop device,
// then the filesystem, online. It never shrinks.
func (s *Node) expand(req *csi.NodeExpandVolumeRequest) (int64, error) {
	if req.GetVolumeId() == "" {
		return 0, invalid("volume ID is missing")
	}
	if req.GetVolumePath() == "" {
		return 0, invalid("volume path is missing")
	}
	nv, err := s.d.openNodeVolume(req.GetVolumeId())
	if err != nil {
		return 0, err
	}
	defer nv.release()
	// Paths are checked once the volume is known, so an unknown volume is
	// NotFound whatever path comes with it.
	if err := s.d.checkPath(req.GetVolumePath(), "volume path"); err != nil {
		return 0, err
	}
	if sp := req.GetStagingTargetPath(); sp != "" {
		if err := s.d.checkPath(sp, "staging target path"); err != nil {
			return 0, err
		}
	}
	req0, lim := req.GetCapacityRange().GetRequiredBytes(), req.GetCapacityRange().GetLimitBytes()
	if req0 < 0 || lim < 0 || (req0 == 0 && lim == 0) || (lim > 0 && req0 > lim) {
		return 0, invalid("capacity range must ask for a positive size within its limit")
	}
	want := roundUp(max(req0, 1), mib)
	if lim > 0 && want > lim {
		return 0, fmt.Errorf("%w: %d bytes rounded to whole MiB exceed the limit %d", pool.ErrOutOfRange, want, lim)
	}
	if c := req.GetVolumeCapability(); c != nil {
		if err := s.d.checkMatches(nv.vol, c); err != nil {
			return 0, err
		}
	}
	v, err := nv.pool.Expand(nv.vol.Key(), want)
	if err != nil {
		return 0, err
	}
	if nv.pool.Kind() == pool.KindQuota {
		// The new limit is the new size, at once.
		klog.InfoS("Volume expanded", "volumeID", v.ID, "bytes", v.SizeBytes)
		return v.SizeBytes, nil
	}
	dev, err := s.d.find(nv)
	if err != nil || dev == "" {
		// Not staged here: the storage has grown; NodeStageVolume grows
		// the filesystem when the volume is next mounted.
		return v.SizeBytes, err
	}
	if nv.pool.Kind() == pool.KindImage {
		if err := loopdev.Refresh(dev); err != nil {
			return 0, err
		}
	}
	if v.Mode == pool.ModeFilesystem {
		mp, err := s.d.mountedAt(dev, req.GetVolumePath(), req.GetStagingTargetPath())
		if err != nil {
			// An LV stays active while unstaged: with its filesystem
			// mounted nowhere, the next stage grows it.
			if mounts, aerr := s.d.mountsOf(nv, dev).all(); aerr == nil && len(mounts) == 0 {
				return v.SizeBytes, nil
			}
			return 0, err
		}
		if err := s.d.growFilesystem(dev, mp, v.FsType); err != nil {
			return 0, err
		}
	}
	klog.InfoS("Volume expanded", "volumeID", v.ID, "bytes", v.SizeBytes)
	return v.SizeBytes, nil
}

// mountedAt returns the first of paths where dev's filesystem is mounted.
func (d *Driver) mountedAt(dev string, paths ...string) (string, error) {
	dm := newDeviceMounts(dev)
	for _, p := range paths {
		if p == "" {
			continue
		}
		m, err := mountAt(p)
		if err != nil {
			return "", err
		}
		if m != nil && dm.owns(m) {
			return p, nil
		}
	}
	return "", fmt.Errorf("%w: the filesystem of %s is not mounted at %v", errPrecondition, dev, paths)
}

func (s *Node) NodeGetVolumeStats(ctx context.Context, req *csi.NodeGetVolumeStatsRequest) (*csi.NodeGetVolumeStatsResponse, error) {
	resp, err := s.stats(req)
	if err != nil {
		return nil, toStatus(err)
	}
	return resp, nil
}

func (s *Node) stats(req *csi.NodeGetVolumeStatsRequest) (*csi.NodeGetVolumeStatsResponse, error) {
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
	nv, err := s.d.openNodeVolume(req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	defer nv.release()
	dev, err := s.d.find(nv)
	if err != nil {
		return nil, err
	}
	m, err := mountAt(path)
	if err != nil {
		return nil, err
	}
	if dev == "" || m == nil || !s.d.mountsOf(nv, dev).owns(m) {
		return nil, fmt.Errorf("%w: volume %s is not published at %s", pool.ErrNotFound, nv.vol.ID, path)
	}
	if nv.vol.Mode == pool.ModeBlock {
		size, err := loopdev.Size(path)
		if err != nil {
			return nil, err
		}
		return &csi.NodeGetVolumeStatsResponse{Usage: []*csi.VolumeUsage{{Unit: csi.VolumeUsage_BYTES, Total: size}}}, nil
	}
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return nil, fmt.Errorf("statfs %s: %w", path, err)
	}
	bs := int64(st.Bsize)
	bytes := &csi.VolumeUsage{Unit: csi.VolumeUsage_BYTES, Total: int64(st.Blocks) * bs, Available: int64(st.Bavail) * bs, Used: int64(st.Blocks-st.Bfree) * bs}
	if qp, ok := nv.pool.(*pool.QuotaPool); ok {
		// The volume is its project: its limit and what it uses.
		q, err := qp.Usage(nv.vol)
		if err != nil {
			return nil, err
		}
		bytes.Total, bytes.Used = nv.vol.SizeBytes, q.BlockUsed
		bytes.Available = min(max(nv.vol.SizeBytes-q.BlockUsed, 0), bytes.Available)
	}
	return &csi.NodeGetVolumeStatsResponse{Usage: []*csi.VolumeUsage{
		bytes,
		{Unit: csi.VolumeUsage_INODES, Total: int64(st.Files), Available: int64(st.Ffree), Used: int64(st.Files - st.Ffree)},
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
	nv, err := s.d.openNodeVolume(req.GetVolumeId())
	if err != nil {
		return nil, toStatus(err)
	}
	defer nv.release()
	h := s.d.volumeHealth(nv.pool, nv.vol)
	h.HealthStatuses = append(h.HealthStatuses, s.d.attachmentHealth(nv, req.GetStagingTargetPath(), req.GetVolumePublishPath())...)
	return &csi.NodeGetVolumeHealthResponse{VolumeHealth: h}, nil
}

// NodeGetStorageHealth reports pools that cannot be read or written.
func (s *Node) NodeGetStorageHealth(context.Context, *csi.NodeGetStorageHealthRequest) (*csi.NodeGetStorageHealthResponse, error) {
	resp := &csi.NodeGetStorageHealthResponse{}
	for _, name := range s.d.poolNames {
		if err := s.d.pools[name].Probe(); err != nil {
			st := csi.StorageHealthErrorType_STORAGE_UNREACHABLE
			reason := "PoolUnreachable"
			if errors.Is(err, unix.EROFS) || errors.Is(err, fs.ErrPermission) {
				st, reason = csi.StorageHealthErrorType_STORAGE_DEGRADED, "PoolReadOnly"
			}
			resp.BackendHealth = append(resp.BackendHealth, &csi.NodeGetStorageHealthResponse_StorageBackendHealth{
				Status: st, Reason: reason, Message: fmt.Sprintf("pool %s: %v", name, err),
			})
		}
	}
	return resp, nil
}
