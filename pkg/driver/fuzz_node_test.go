package driver

import (
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
)

// hostilePaths are staging, target and volume paths that seeds try: ways
// out of the kubelet directory (dot-dot, symlinks in it that lead out, a
// symlink as the last element, absolute paths elsewhere), malformed ones,
// and ordinary ones.
var hostilePaths = []string{
	"", "relative/path", phKubelet, phKubelet + "/", phKubelet + "/pods/p1/new", phKubelet + "/pods/p1/new/",
	phKubelet + "/pods/../../outside/file", phKubelet + "/pods/p1/../../../outside/dir",
	phKubelet + "/escape/new", phKubelet + "/escape/dir", phKubelet + "/pods/abs-escape/file",
	phKubelet + "/pods/abs-escape/new/deeper", phKubelet + "/pods/p1/file-link",
	phRoot + "/outside/file", phRoot + "/outside/new", phRoot + "/kubelet-sibling/x", "/", "/proc/self/root",
	phKubelet + "/pods/p1/new\x00/x", phKubelet + "/pods/p1/" + strings.Repeat("a", 300),
	phKubelet + "/pods/p1/" + strings.Repeat("a/", 2100), phKubelet + "//pods/p1/x", phKubelet + "/./pods/p1/x",
	fixStaging + fixFs, fixStaging + fixBlock, fixPods + fixFs, fixPods + fixBlock,
}

func FuzzNodeStageVolume(f *testing.F) {
	var seeds []*csi.NodeStageVolumeRequest
	for _, p := range hostilePaths {
		seeds = append(seeds, &csi.NodeStageVolumeRequest{VolumeId: idIdle, StagingTargetPath: p, VolumeCapability: blockCap()})
	}
	seeds = append(seeds,
		&csi.NodeStageVolumeRequest{VolumeId: idFs, StagingTargetPath: fixStaging + "other", VolumeCapability: fuzzMount("", "noatime")},
		&csi.NodeStageVolumeRequest{VolumeId: idFs, StagingTargetPath: fixStaging + fixFs, VolumeCapability: fuzzMount("ext4", "bind")},
		&csi.NodeStageVolumeRequest{VolumeId: idFs, StagingTargetPath: fixStaging + fixBlock, VolumeCapability: fuzzMount("xfs")},
		&csi.NodeStageVolumeRequest{VolumeId: idBlock, StagingTargetPath: fixStaging + fixFs, VolumeCapability: fuzzMount("ext4")},
		&csi.NodeStageVolumeRequest{VolumeId: idSnap, StagingTargetPath: fixStaging + "s", VolumeCapability: blockCap(),
			PublishContext: map[string]string{"a": "b"}, Secrets: map[string]string{"c": "d"}, VolumeContext: map[string]string{ParamPool: "../x"}},
		&csi.NodeStageVolumeRequest{VolumeId: "../" + idIdle, StagingTargetPath: fixStaging + "x"},
	)
	fuzzRPC(f, seeds, func(e *fuzzEnv, r *csi.NodeStageVolumeRequest) (proto.Message, error) {
		return e.node.NodeStageVolume(e.ctx, r)
	}, with(codes.NotFound, codes.AlreadyExists, codes.FailedPrecondition)...)
}

func FuzzNodeUnstageVolume(f *testing.F) {
	var seeds []*csi.NodeUnstageVolumeRequest
	for _, p := range hostilePaths {
		seeds = append(seeds, &csi.NodeUnstageVolumeRequest{VolumeId: idFs, StagingTargetPath: p})
	}
	for _, id := range hostileIDs {
		seeds = append(seeds, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: fixStaging + fixBlock})
	}
	seeds = append(seeds, &csi.NodeUnstageVolumeRequest{VolumeId: idIdle, StagingTargetPath: fixStaging + fixFs})
	fuzzRPC(f, seeds, func(e *fuzzEnv, r *csi.NodeUnstageVolumeRequest) (proto.Message, error) {
		return e.node.NodeUnstageVolume(e.ctx, r)
	}, with(codes.NotFound, codes.FailedPrecondition)...)
}

func FuzzNodePublishVolume(f *testing.F) {
	var seeds []*csi.NodePublishVolumeRequest
	for _, p := range hostilePaths {
		seeds = append(seeds,
			&csi.NodePublishVolumeRequest{VolumeId: idFs, StagingTargetPath: fixStaging + fixFs, TargetPath: p, VolumeCapability: fuzzMount("")},
			&csi.NodePublishVolumeRequest{VolumeId: idBlock, StagingTargetPath: p, TargetPath: fixPods + "b2", VolumeCapability: blockCap()})
	}
	seeds = append(seeds,
		&csi.NodePublishVolumeRequest{VolumeId: idFs, StagingTargetPath: fixStaging + fixFs, TargetPath: fixPods + fixFs, VolumeCapability: fuzzMount("ext4"), Readonly: true},
		&csi.NodePublishVolumeRequest{VolumeId: idFs, StagingTargetPath: fixStaging + fixBlock, TargetPath: fixPods + "x", VolumeCapability: fuzzMount("ext4", "remount")},
		&csi.NodePublishVolumeRequest{VolumeId: idBlock, StagingTargetPath: fixStaging + fixBlock, TargetPath: fixPods + "x",
			VolumeCapability: withMode(blockCap(), csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER)},
		&csi.NodePublishVolumeRequest{VolumeId: idIdle, StagingTargetPath: fixStaging + "idle", TargetPath: fixPods + "x", VolumeCapability: blockCap(),
			PublishContext: map[string]string{"a": "b"}, Secrets: map[string]string{"c": "d"}, VolumeContext: map[string]string{"csi.storage.k8s.io/ephemeral": "true"}},
	)
	fuzzRPC(f, seeds, func(e *fuzzEnv, r *csi.NodePublishVolumeRequest) (proto.Message, error) {
		return e.node.NodePublishVolume(e.ctx, r)
	}, with(codes.NotFound, codes.AlreadyExists, codes.FailedPrecondition)...)
}

func FuzzNodeUnpublishVolume(f *testing.F) {
	var seeds []*csi.NodeUnpublishVolumeRequest
	for _, p := range hostilePaths {
		seeds = append(seeds, &csi.NodeUnpublishVolumeRequest{VolumeId: idBlock, TargetPath: p})
	}
	for _, id := range hostileIDs {
		seeds = append(seeds, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: fixPods + fixFs})
	}
	seeds = append(seeds, &csi.NodeUnpublishVolumeRequest{VolumeId: idIdle, TargetPath: fixPods + fixFs},
		&csi.NodeUnpublishVolumeRequest{VolumeId: idFs, TargetPath: fixStaging + fixFs})
	fuzzRPC(f, seeds, func(e *fuzzEnv, r *csi.NodeUnpublishVolumeRequest) (proto.Message, error) {
		return e.node.NodeUnpublishVolume(e.ctx, r)
	}, with(codes.NotFound, codes.FailedPrecondition)...)
}

// FuzzNodeGetVolumeStats covers NodeGetVolumeStats and
// NodeGetVolumeHealth: the path of the one is the publish path of the
// other.
func FuzzNodeGetVolumeStats(f *testing.F) {
	var seeds []*csi.NodeGetVolumeStatsRequest
	for _, p := range hostilePaths {
		seeds = append(seeds, &csi.NodeGetVolumeStatsRequest{VolumeId: idFs, VolumePath: p, StagingTargetPath: fixStaging + fixFs})
	}
	for _, id := range append(hostileIDs, idBlock, idIdle) {
		seeds = append(seeds, &csi.NodeGetVolumeStatsRequest{VolumeId: id, VolumePath: fixPods + fixBlock})
	}
	fuzzRPC(f, seeds, func(e *fuzzEnv, r *csi.NodeGetVolumeStatsRequest) (proto.Message, error) {
		resp, err := e.node.NodeGetVolumeStats(e.ctx, r)
		// Health has the codes of stats: NotFound or a bad argument.
		_, herr := e.node.NodeGetVolumeHealth(e.ctx, &csi.NodeGetVolumeHealthRequest{VolumeId: r.GetVolumeId(),
			VolumePublishPath: r.GetVolumePath(), StagingTargetPath: r.GetStagingTargetPath()})
		if herr != nil {
			e.check(r, nil, herr, with(codes.NotFound))
		}
		return resp, err
	}, with(codes.NotFound)...)
}

func FuzzNodeExpandVolume(f *testing.F) {
	grow := &csi.CapacityRange{RequiredBytes: 2 * mib}
	var seeds []*csi.NodeExpandVolumeRequest
	for _, p := range hostilePaths {
		seeds = append(seeds, &csi.NodeExpandVolumeRequest{VolumeId: idFs, VolumePath: p, StagingTargetPath: fixStaging + fixFs, CapacityRange: grow})
	}
	for _, cr := range []*csi.CapacityRange{nil, {}, {RequiredBytes: -1}, {LimitBytes: -1}, {RequiredBytes: 1 << 62}, {RequiredBytes: 1<<63 - 1},
		{RequiredBytes: 1<<62 - mib + 1 + 1<<62}, {RequiredBytes: mib + 1, LimitBytes: mib + 2}, {RequiredBytes: 1}, {LimitBytes: 3 * mib}} {
		seeds = append(seeds, &csi.NodeExpandVolumeRequest{VolumeId: idBlock, VolumePath: fixPods + fixBlock, CapacityRange: cr})
	}
	seeds = append(seeds,
		&csi.NodeExpandVolumeRequest{VolumeId: idIdle, VolumePath: fixPods + "x", CapacityRange: grow, VolumeCapability: fuzzMount("xfs")},
		&csi.NodeExpandVolumeRequest{VolumeId: idFs, VolumePath: fixPods + fixFs, CapacityRange: grow, VolumeCapability: fuzzMount("ext4", "x\x00"),
			Secrets: map[string]string{"k": "v"}},
		&csi.NodeExpandVolumeRequest{VolumeId: "../" + idFs, VolumePath: fixPods + fixFs, CapacityRange: grow},
	)
	fuzzRPC(f, seeds, func(e *fuzzEnv, r *csi.NodeExpandVolumeRequest) (proto.Message, error) {
		return e.node.NodeExpandVolume(e.ctx, r)
	}, with(codes.NotFound, codes.FailedPrecondition, codes.OutOfRange, codes.ResourceExhausted)...)
}
