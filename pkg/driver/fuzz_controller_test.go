package driver

import (
	"strings"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"github.com/flashpv/flashpv/pkg/wellknown"
)

// The codes of the CSI spec's general error table that flashpv can give
// any RPC: a missing or bad field, an operation in flight on the same
// volume. Each target adds the codes of its RPC's own table.
var anyRPC = []codes.Code{codes.InvalidArgument, codes.Aborted}

func with(extra ...codes.Code) []codes.Code {
	return append(append([]codes.Code{}, anyRPC...), extra...)
}

// Capabilities seeds combine.
func fuzzMount(fsType string, flags ...string) *csi.VolumeCapability {
	c := mountCap(fsType)
	c.GetMount().MountFlags = flags
	return c
}

func withMode(c *csi.VolumeCapability, m csi.VolumeCapability_AccessMode_Mode) *csi.VolumeCapability {
	c = proto.Clone(c).(*csi.VolumeCapability)
	c.AccessMode = accessMode(m)
	return c
}

func caps(c ...*csi.VolumeCapability) []*csi.VolumeCapability { return c }

// hostileIDs are volume and snapshot IDs that seeds try.
var hostileIDs = []string{"", ".", "..", "../" + idBlock, idBlock + "/..", "default.", ".x", "default.x",
	"default." + strings.Repeat("0", 32), "nopool." + poolKey(fixBlock), "default\x00." + poolKey(fixBlock),
	idBlock + "\x00", strings.Repeat("a", 200), "default." + strings.ToUpper(poolKey(fixBlock)), "fake-vol-id-1", "default.blk"}

func FuzzCreateVolume(f *testing.F) {
	big := &csi.CapacityRange{RequiredBytes: 1 << 62}
	seeds := []*csi.CreateVolumeRequest{
		{Name: "new", VolumeCapabilities: caps(blockCap()), CapacityRange: &csi.CapacityRange{RequiredBytes: mib}},
		{Name: "new", VolumeCapabilities: caps(fuzzMount("xfs", "noatime")), Parameters: map[string]string{ParamPool: "fast"}},
		{Name: "new", VolumeCapabilities: caps(fuzzMount("ext4"), fuzzMount("ext4", "ro")), CapacityRange: &csi.CapacityRange{RequiredBytes: -1}},
		{Name: "new", VolumeCapabilities: caps(blockCap(), fuzzMount("")), CapacityRange: &csi.CapacityRange{LimitBytes: -5}},
		{Name: "new", VolumeCapabilities: caps(blockCap()), CapacityRange: big},
		{Name: "new", VolumeCapabilities: caps(blockCap()), CapacityRange: &csi.CapacityRange{RequiredBytes: 1<<63 - 1, LimitBytes: 1<<63 - 1}},
		{Name: "new", VolumeCapabilities: caps(fuzzMount("btrfs")), CapacityRange: &csi.CapacityRange{RequiredBytes: 5, LimitBytes: 10}},
		{Name: fixBlock, VolumeCapabilities: caps(fuzzMount("ext4")), CapacityRange: &csi.CapacityRange{RequiredBytes: testSize}},
		{Name: fixIdle, VolumeCapabilities: caps(blockCap())},
		{Name: "new\x00", VolumeCapabilities: caps(blockCap())},
		{Name: "../../outside", VolumeCapabilities: caps(blockCap())},
		{Name: phRoot + "/outside/file", VolumeCapabilities: caps(blockCap())},
		{Name: strings.Repeat("n", 129), VolumeCapabilities: caps(blockCap())},
		{Name: "new", VolumeCapabilities: caps(fuzzMount("ext4", "bind,remount", "\x00"))},
		{Name: "new", VolumeCapabilities: caps(fuzzMount("../../outside"))},
		{Name: "new", VolumeCapabilities: caps(withMode(blockCap(), csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER))},
		{Name: "new", VolumeCapabilities: caps(&csi.VolumeCapability{})},
		{Name: "new", VolumeCapabilities: caps(blockCap()), Parameters: map[string]string{ParamPool: "../pool-fast"}},
		{Name: "new", VolumeCapabilities: caps(blockCap()), Parameters: map[string]string{wellknown.ParamNodeLossPolicy: "x", "csi.storage.k8s.io/pvc/name": "p"}},
		{Name: "new", VolumeCapabilities: caps(blockCap()), Parameters: map[string]string{wellknown.ParamCrossNode: "true"},
			VolumeContentSource: &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: "fast.x"}}}},
		{Name: "new", VolumeCapabilities: caps(blockCap()), Secrets: map[string]string{"k": phRoot + "/outside/file"}},
		{Name: "new", VolumeCapabilities: caps(blockCap()), AccessibilityRequirements: &csi.TopologyRequirement{
			Requisite: []*csi.Topology{{Segments: map[string]string{TopologyKey: "n2"}}}, Preferred: []*csi.Topology{{}}}},
		{Name: "new", VolumeCapabilities: caps(blockCap()), AccessibilityRequirements: &csi.TopologyRequirement{
			Requisite: []*csi.Topology{nil, {Segments: map[string]string{TopologyKey: "n1"}}}}},
		{Name: "new", VolumeCapabilities: caps(blockCap()), VolumeContentSource: &csi.VolumeContentSource{
			Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: idSnap}}}},
		{Name: "new", VolumeCapabilities: caps(blockCap()), Parameters: map[string]string{ParamPool: "default"}, VolumeContentSource: &csi.VolumeContentSource{
			Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: idSnap}}}},
		{Name: "new", VolumeCapabilities: caps(fuzzMount("xfs")), VolumeContentSource: &csi.VolumeContentSource{
			Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: idFs}}}},
		{Name: "new", VolumeCapabilities: caps(blockCap()), VolumeContentSource: &csi.VolumeContentSource{
			Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: idBlock}}}},
		{Name: "new", VolumeCapabilities: caps(blockCap()), CapacityRange: &csi.CapacityRange{LimitBytes: mib}, VolumeContentSource: &csi.VolumeContentSource{
			Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: idIdle}}}},
		{Name: "new", VolumeCapabilities: caps(blockCap()), VolumeContentSource: &csi.VolumeContentSource{}},
		{Name: "new", VolumeCapabilities: caps(blockCap()), VolumeContentSource: &csi.VolumeContentSource{
			Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: "../" + idIdle}}}},
	}
	fuzzRPC(f, seeds, func(e *fuzzEnv, r *csi.CreateVolumeRequest) (proto.Message, error) {
		return e.ctl.CreateVolume(e.ctx, r)
	}, with(codes.NotFound, codes.AlreadyExists, codes.ResourceExhausted, codes.OutOfRange, codes.FailedPrecondition)...)
}

func FuzzDeleteVolume(f *testing.F) {
	var seeds []*csi.DeleteVolumeRequest
	for _, id := range append(hostileIDs, idBlock, idFs, idIdle, idSnap) {
		seeds = append(seeds, &csi.DeleteVolumeRequest{VolumeId: id})
	}
	seeds = append(seeds, &csi.DeleteVolumeRequest{VolumeId: idIdle, Secrets: map[string]string{"": "\x00"}})
	fuzzRPC(f, seeds, func(e *fuzzEnv, r *csi.DeleteVolumeRequest) (proto.Message, error) {
		return e.ctl.DeleteVolume(e.ctx, r)
	}, with(codes.FailedPrecondition)...)
}

// flashpv offers no ControllerExpandVolume (its volumes grow on the node):
// every request is Unimplemented, whatever it holds.
func FuzzControllerExpandVolume(f *testing.F) {
	seeds := []*csi.ControllerExpandVolumeRequest{
		{VolumeId: idIdle, CapacityRange: &csi.CapacityRange{RequiredBytes: 2 * testSize}, VolumeCapability: blockCap()},
		{VolumeId: "..", CapacityRange: &csi.CapacityRange{RequiredBytes: -1}},
	}
	fuzzRPC(f, seeds, func(e *fuzzEnv, r *csi.ControllerExpandVolumeRequest) (proto.Message, error) {
		return e.ctl.ControllerExpandVolume(e.ctx, r)
	}, codes.Unimplemented)
}

func FuzzValidateVolumeCapabilities(f *testing.F) {
	seeds := []*csi.ValidateVolumeCapabilitiesRequest{
		{VolumeId: idFs, VolumeCapabilities: caps(fuzzMount("ext4", "noatime")), VolumeContext: map[string]string{"k": "v"}, Parameters: map[string]string{ParamPool: "x"}},
		{VolumeId: idBlock, VolumeCapabilities: caps(blockCap(), fuzzMount(""))},
		{VolumeId: idIdle, VolumeCapabilities: caps(withMode(blockCap(), csi.VolumeCapability_AccessMode_UNKNOWN))},
		{VolumeId: idSnap, VolumeCapabilities: caps(blockCap())},
		{VolumeId: idFs, VolumeCapabilities: caps(nil, &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Mount{}})},
		{VolumeId: "../x", VolumeCapabilities: caps(blockCap()), Secrets: map[string]string{"a": "b"}, MutableParameters: map[string]string{"c": "d"}},
	}
	fuzzRPC(f, seeds, func(e *fuzzEnv, r *csi.ValidateVolumeCapabilitiesRequest) (proto.Message, error) {
		return e.ctl.ValidateVolumeCapabilities(e.ctx, r)
	}, with(codes.NotFound)...)
}

func FuzzCreateSnapshot(f *testing.F) {
	seeds := []*csi.CreateSnapshotRequest{
		{Name: "s", SourceVolumeId: idIdle},
		{Name: "s", SourceVolumeId: idBlock},
		{Name: "s", SourceVolumeId: idFs, Parameters: map[string]string{"csi.storage.k8s.io/x": "y"}},
		{Name: fixSnap, SourceVolumeId: idBlock},
		{Name: fixSnap, SourceVolumeId: idIdle, Secrets: map[string]string{"k": "v"}},
		{Name: "s", SourceVolumeId: idSnap},
		{Name: "s\x00", SourceVolumeId: idIdle},
		{Name: "s", SourceVolumeId: "../" + idIdle, Parameters: map[string]string{"x": "y"}},
		{Name: "", SourceVolumeId: ""},
	}
	fuzzRPC(f, seeds, func(e *fuzzEnv, r *csi.CreateSnapshotRequest) (proto.Message, error) {
		return e.ctl.CreateSnapshot(e.ctx, r)
	}, with(codes.NotFound, codes.AlreadyExists, codes.ResourceExhausted, codes.FailedPrecondition)...)
}

func FuzzDeleteSnapshot(f *testing.F) {
	var seeds []*csi.DeleteSnapshotRequest
	for _, id := range append(hostileIDs, idSnap, idIdle, fixID("default", fixSnap)) {
		seeds = append(seeds, &csi.DeleteSnapshotRequest{SnapshotId: id})
	}
	fuzzRPC(f, seeds, func(e *fuzzEnv, r *csi.DeleteSnapshotRequest) (proto.Message, error) {
		return e.ctl.DeleteSnapshot(e.ctx, r)
	}, with(codes.FailedPrecondition)...)
}

// FuzzListVolumes covers both volume listings; they share their paging.
func FuzzListVolumes(f *testing.F) {
	seeds := []*csi.ListVolumesRequest{{}, {MaxEntries: 1}, {MaxEntries: 2, StartingToken: idFs}, {MaxEntries: -1},
		{StartingToken: "garbage"}, {StartingToken: "default." + strings.Repeat("f", 32), MaxEntries: 1 << 30}, {StartingToken: "../x"}}
	fuzzRPC(f, seeds, func(e *fuzzEnv, r *csi.ListVolumesRequest) (proto.Message, error) {
		resp, err := e.ctl.ListVolumes(e.ctx, r)
		if err != nil {
			return resp, err
		}
		return e.ctl.ControllerListVolumeHealth(e.ctx, &csi.ControllerListVolumeHealthRequest{MaxEntries: r.GetMaxEntries(), StartingToken: r.GetStartingToken()})
	}, anyRPC...)
}

func FuzzListSnapshots(f *testing.F) {
	seeds := []*csi.ListSnapshotsRequest{{}, {MaxEntries: 1}, {SnapshotId: idSnap}, {SourceVolumeId: idIdle, StartingToken: idSnap},
		{MaxEntries: -3}, {StartingToken: "garbage"}, {SnapshotId: "../x", SourceVolumeId: "\x00", Secrets: map[string]string{"a": "b"}}}
	fuzzRPC(f, seeds, func(e *fuzzEnv, r *csi.ListSnapshotsRequest) (proto.Message, error) {
		return e.ctl.ListSnapshots(e.ctx, r)
	}, anyRPC...)
}

func FuzzGetCapacity(f *testing.F) {
	seeds := []*csi.GetCapacityRequest{{}, {VolumeCapabilities: caps(fuzzMount("xfs"))}, {Parameters: map[string]string{ParamPool: "fast"}},
		{Parameters: map[string]string{ParamPool: "none", "bad": "x"}}, {AccessibleTopology: &csi.Topology{Segments: map[string]string{TopologyKey: "n2"}}},
		{VolumeCapabilities: caps(withMode(blockCap(), 99), nil), AccessibleTopology: &csi.Topology{}}}
	fuzzRPC(f, seeds, func(e *fuzzEnv, r *csi.GetCapacityRequest) (proto.Message, error) {
		return e.ctl.GetCapacity(e.ctx, r)
	}, anyRPC...)
}

// FuzzControllerGetVolume covers ControllerGetVolume and
// ControllerGetVolumeHealth, which take the same ID.
func FuzzControllerGetVolume(f *testing.F) {
	var seeds []*csi.ControllerGetVolumeRequest
	for _, id := range append(hostileIDs, idBlock, idIdle, idSnap) {
		seeds = append(seeds, &csi.ControllerGetVolumeRequest{VolumeId: id})
	}
	fuzzRPC(f, seeds, func(e *fuzzEnv, r *csi.ControllerGetVolumeRequest) (proto.Message, error) {
		resp, err := e.ctl.ControllerGetVolume(e.ctx, r)
		hresp, herr := e.ctl.ControllerGetVolumeHealth(e.ctx, &csi.ControllerGetVolumeHealthRequest{VolumeId: r.GetVolumeId()})
		if (err == nil) != (herr == nil) {
			e.t.Fatalf("ControllerGetVolume: %v, ControllerGetVolumeHealth: %v", err, herr)
		}
		if err == nil {
			return hresp, nil
		}
		return resp, err
	}, with(codes.NotFound)...)
}
