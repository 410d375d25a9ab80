package driver

import (
	"context"
	"errors"
	"fmt"
	"sort"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/protobuf/types/known/wrapperspb"
	"k8s.io/klog/v2"

	"github.com/flashpv/flashpv/pkg/pool"
)

// Controller is the CSI Controller service. In flashpv it runs on the node
// that holds the storage (distributed provisioning), so it can create volumes
// in the node's pools directly.
type Controller struct {
	csi.UnimplementedControllerServer
	d *Driver
}

func (s *Controller) CreateVolume(ctx context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	vol, err := s.createVolume(ctx, req)
	if err != nil {
		return nil, toStatus(err)
	}
	return &csi.CreateVolumeResponse{Volume: vol}, nil
}

func (s *Controller) createVolume(ctx context.Context, req *csi.CreateVolumeRequest) (*csi.Volume, error) {
	rs, err := createRequest(req, s.d.defaultFsType)
	if err != nil {
		return nil, err
	}
	content, err := s.d.content(req.GetVolumeContentSource())
	if err != nil {
		// A retry after the source was deleted finds what it made.
		if p, v := s.d.madeFrom(rs.name, req.GetVolumeContentSource()); v != nil {
			vol := s.d.csiVolume(p, v)
			vol.ContentSource = req.GetVolumeContentSource()
			return vol, nil
		}
		if s.d.crossNode(err, rs.params) {
			return s.createRemote(ctx, req, rs)
		}
		return nil, err
	}
	p, spec, err := s.d.localSpec(req, rs, content)
	if err != nil {
		return nil, err
	}
	v, err := s.d.createNamed(ctx, p, spec, content)
	if err != nil {
		return nil, err
	}
	if err := notIncoming(v); err != nil {
		return nil, err
	}
	vol := s.d.csiVolume(p, v)
	vol.ContentSource = req.GetVolumeContentSource()
	return vol, nil
}

// createRequest validates what a CreateVolume asks for whatever its pool:
// the name, the capabilities and the parameters.
func createRequest(req *csi.CreateVolumeRequest, defaultFsType string) (remoteSpec, error) {
	name := req.GetName()
	if err := pool.ValidateName(name); err != nil {
		return remoteSpec{}, err
	}
	mode, fsType, err := checkCapabilities(req.GetVolumeCapabilities(), defaultFsType)
	if err != nil {
		return remoteSpec{}, err
	}
	params, err := createParameters(req.GetParameters())
	if err != nil {
		return remoteSpec{}, err
	}
	return remoteSpec{name: name, mode: mode, fsType: fsType, params: params}, nil
}

// localSpec picks the pool of a volume made on this node and checks the
// request against it and against the content to copy (nil for an empty
// volume): topology, filesystem type, size.
func (d *Driver) localSpec(req *csi.CreateVolumeRequest, rs remoteSpec, content *volumeContent) (*poolEntry, pool.Spec, error) {
	p, err := d.poolFor(rs.params)
	if content != nil {
		p, err = content.poolFor(rs.params)
	}
	if err != nil {
		return nil, pool.Spec{}, err
	}
	if err := d.checkAccessible(req.GetAccessibilityRequirements()); err != nil {
		return nil, pool.Spec{}, err
	}
	caps := req.GetVolumeCapabilities()
	fsType, err := poolFsType(p, rs.mode, rs.fsType, caps)
	if err != nil {
		return nil, pool.Spec{}, err
	}
	if content != nil {
		if fsType, err = content.fits(rs.mode, fsType, caps); err != nil {
			return nil, pool.Spec{}, err
		}
	}
	size, lo, hi, err := volumeSize(req.GetCapacityRange(), minSize(p, rs.mode, fsType))
	if err != nil {
		return nil, pool.Spec{}, err
	}
	if content != nil {
		if size, err = content.fitSize(size, hi); err != nil {
			return nil, pool.Spec{}, err
		}
	}
	return p, pool.Spec{
		Name: rs.name, SizeBytes: size, MinBytes: lo, MaxBytes: hi,
		Mode: rs.mode, FsType: fsType, Parameters: rs.params,
	}, nil
}

// createNamed makes the volume spec in p, empty or with content's data,
// holding its name so that no other call makes one of the same name
// meanwhile, in this pool or another.
func (d *Driver) createNamed(ctx context.Context, p *poolEntry, spec pool.Spec, content *volumeContent) (*pool.Volume, error) {
	release, err := d.locks.acquire("name/" + spec.Name)
	if err != nil {
		return nil, err
	}
	if err := d.nameFree(spec.Name, p); err != nil {
		release()
		return nil, err
	}
	if content == nil {
		defer release()
		v, created, err := p.Create(ctx, spec)
		if created {
			logCreated(v)
		}
		return v, err
	}
	// A copy may outlast the call: it holds the name until it is done.
	var v *pool.Volume
	err = d.locks.detach(ctx, func(ctx context.Context) error {
		defer release()
		made, created, err := d.createFrom(ctx, spec, content)
		if created {
			logCreated(made)
		}
		v = made // read by the call only if it waited for this
		return err
	})
	return v, err
}

// nameFree fails when a volume of that name exists in a pool other than p:
// the ID depends on the pool, so a name is unique across all pools.
func (d *Driver) nameFree(name string, p *poolEntry) error {
	for _, other := range d.poolNames {
		if other == p.Name() {
			continue
		}
		if v, err := d.pools[other].GetByName(name); err == nil {
			return fmt.Errorf("%w: volume %q exists in pool %s as %s", pool.ErrAlreadyExists, name, other, v.ID)
		}
	}
	return nil
}

func logCreated(v *pool.Volume) {
	klog.InfoS("Volume created", "volumeID", v.ID, "name", v.Name, "bytes", v.SizeBytes, "mode", v.Mode, "fsType", v.FsType, "source", v.Source)
}

// poolFsType checks that capabilities fit what the pool's volumes can be
// and returns the fsType the volume gets: a pool whose volumes are
// directories of its own filesystem has Filesystem volumes only, of that
// filesystem.
func poolFsType(p *poolEntry, mode pool.Mode, fsType string, caps []*csi.VolumeCapability) (string, error) {
	l := p.layout
	if mode == pool.ModeBlock && !l.Block {
		return "", invalid("pool %s has Filesystem volumes only, not Block", p.Name())
	}
	if !l.Directory {
		return fsType, nil
	}
	for _, c := range caps {
		if fs := c.GetMount().GetFsType(); fs != "" && fs != l.FsType {
			return "", invalid("the volumes of pool %s are directories of its %s: fsType %q cannot be given", p.Name(), l.FsType, fs)
		}
	}
	return l.FsType, nil
}

// minSize is the smallest volume a pool can make: a filesystem's own
// minimum, except where volumes are directories, which need no mkfs.
func minSize(p *poolEntry, mode pool.Mode, fsType string) int64 {
	if mode == pool.ModeFilesystem && !p.layout.Directory {
		return minFsSize[fsType]
	}
	return MinVolumeSize
}

// poolFor returns the pool a StorageClass's parameters select.
func (d *Driver) poolFor(params map[string]string) (*poolEntry, error) {
	name, ok := params[ParamPool]
	if !ok {
		name = d.defaultPool
	}
	p := d.pools[name]
	if p == nil {
		return nil, invalid("unknown pool %q (this node has %v)", name, d.poolNames)
	}
	return p, nil
}

// checkAccessible fails unless the requisite topology includes this node. The
// provisioner then gives the pod back to the scheduler.
func (d *Driver) checkAccessible(ar *csi.TopologyRequirement) error {
	if len(ar.GetRequisite()) == 0 {
		return nil
	}
	for _, t := range ar.GetRequisite() {
		if d.isThisNode(t) {
			return nil
		}
	}
	return fmt.Errorf("%w: requisite topology does not include %s=%s", errNotThisNode, TopologyKey, d.nodeID)
}

func (d *Driver) isThisNode(t *csi.Topology) bool {
	return t.GetSegments()[TopologyKey] == d.nodeID
}

func (d *Driver) csiVolume(p *poolEntry, v *pool.Volume) *csi.Volume {
	return &csi.Volume{
		VolumeId:           v.ID,
		CapacityBytes:      v.SizeBytes,
		VolumeContext:      volumeContext(p.Name(), v),
		AccessibleTopology: []*csi.Topology{d.topology()},
	}
}

func (s *Controller) DeleteVolume(ctx context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	if err := s.deleteVolume(ctx, req.GetVolumeId()); err != nil {
		return nil, toStatus(err)
	}
	return &csi.DeleteVolumeResponse{}, nil
}

func (s *Controller) deleteVolume(ctx context.Context, volumeID string) error {
	if volumeID == "" {
		return invalid("volume ID is missing")
	}
	release, err := s.d.locks.acquire(volumeID)
	if err != nil {
		return err
	}
	defer release()
	p, v, err := s.d.lookup(volumeID)
	if errors.Is(err, pool.ErrNotFound) || errors.Is(err, pool.ErrInvalid) {
		// Deleting what does not exist succeeds; an ID that is not ours
		// cannot name anything here either.
		klog.V(4).InfoS("DeleteVolume: nothing to delete", "volumeID", volumeID, "reason", err)
		return nil
	}
	if err != nil {
		return err
	}
	if err := s.d.releaseForDelete(ctx, p, v); err != nil {
		return err
	}
	if err := s.d.mounts.ForgetExtGrowth(volumeID); err != nil {
		return err
	}
	if err := p.Delete(ctx, v.Key()); err != nil {
		return err
	}
	klog.InfoS("Volume deleted", "volumeID", volumeID, "name", v.Name)
	return nil
}

func (s *Controller) GetCapacity(ctx context.Context, req *csi.GetCapacityRequest) (*csi.GetCapacityResponse, error) {
	params, err := createParameters(req.GetParameters())
	if err != nil {
		return nil, toStatus(err)
	}
	p, err := s.d.poolFor(params)
	if err != nil {
		return nil, toStatus(err)
	}
	smallest := int64(MinVolumeSize)
	if caps := req.GetVolumeCapabilities(); len(caps) > 0 {
		mode, fsType, err := checkCapabilities(caps, s.d.defaultFsType)
		if err == nil {
			fsType, err = poolFsType(p, mode, fsType, caps)
		}
		if err != nil {
			// No volume with these capabilities can be made here.
			return &csi.GetCapacityResponse{}, nil
		}
		smallest = minSize(p, mode, fsType)
	}
	if t := req.GetAccessibleTopology(); t != nil && !s.d.isThisNode(t) {
		return &csi.GetCapacityResponse{}, nil
	}
	c, err := p.Capacity(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	return &csi.GetCapacityResponse{
		AvailableCapacity: c.Available,
		MaximumVolumeSize: wrapperspb.Int64(c.Available / mib * mib),
		MinimumVolumeSize: wrapperspb.Int64(smallest),
	}, nil
}

func (s *Controller) ListVolumes(ctx context.Context, req *csi.ListVolumesRequest) (*csi.ListVolumesResponse, error) {
	page, next, err := s.d.listPage(req.GetMaxEntries(), req.GetStartingToken())
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &csi.ListVolumesResponse{NextToken: next}
	for _, e := range page {
		resp.Entries = append(resp.Entries, &csi.ListVolumesResponse_Entry{Volume: s.d.csiVolume(e.pool, e.vol)})
	}
	return resp, nil
}

type poolVolume struct {
	pool *poolEntry
	vol  *pool.Volume
}

// listPage returns up to max volumes of all pools in ID order, starting at
// token, and the token of the next page. A token is the ID the next page
// starts at; it stays valid when that volume is deleted meanwhile.
func (d *Driver) listPage(max int32, token string) ([]poolVolume, string, error) {
	if max < 0 {
		return nil, "", invalid("max_entries is negative")
	}
	if token != "" {
		if _, err := pool.ParseVolumeID(token); err != nil {
			return nil, "", fmt.Errorf("%w: starting token %q is not a flashpv token", errAborted, token)
		}
	}
	var all []poolVolume
	for _, name := range d.poolNames {
		p := d.pools[name]
		vols, err := p.List()
		if err != nil {
			return nil, "", err
		}
		for _, v := range vols {
			if v.ID >= token {
				all = append(all, poolVolume{p, v})
			}
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i].vol.ID < all[j].vol.ID })
	if n := int(max); n > 0 && len(all) > n {
		return all[:n], all[n].vol.ID, nil
	}
	return all, "", nil
}

func (s *Controller) ControllerGetVolume(ctx context.Context, req *csi.ControllerGetVolumeRequest) (*csi.ControllerGetVolumeResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, toStatus(invalid("volume ID is missing"))
	}
	p, v, err := s.d.lookup(req.GetVolumeId())
	if err != nil {
		return nil, toStatus(err)
	}
	return &csi.ControllerGetVolumeResponse{Volume: s.d.csiVolume(p, v)}, nil
}

func (s *Controller) ValidateVolumeCapabilities(ctx context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, toStatus(invalid("volume ID is missing"))
	}
	if len(req.GetVolumeCapabilities()) == 0 {
		return nil, toStatus(invalid("volume capabilities are missing"))
	}
	_, v, err := s.d.lookup(req.GetVolumeId())
	if err != nil {
		return nil, toStatus(err)
	}
	mode, fsType, err := checkCapabilities(req.GetVolumeCapabilities(), s.d.defaultFsType)
	if err == nil && (mode != v.Mode || fsType != v.FsType) {
		err = fmt.Errorf("volume is a %s volume %s", v.Mode, v.FsType)
	}
	if err != nil {
		return &csi.ValidateVolumeCapabilitiesResponse{Message: err.Error()}, nil
	}
	return &csi.ValidateVolumeCapabilitiesResponse{Confirmed: &csi.ValidateVolumeCapabilitiesResponse_Confirmed{
		VolumeContext:      req.GetVolumeContext(),
		VolumeCapabilities: req.GetVolumeCapabilities(),
		Parameters:         req.GetParameters(),
	}}, nil
}

func (s *Controller) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	var caps []*csi.ControllerServiceCapability
	for _, t := range []csi.ControllerServiceCapability_RPC_Type{
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,
		csi.ControllerServiceCapability_RPC_GET_CAPACITY,
		csi.ControllerServiceCapability_RPC_LIST_VOLUMES,
		csi.ControllerServiceCapability_RPC_GET_VOLUME,
		csi.ControllerServiceCapability_RPC_GET_VOLUME_HEALTH,
		csi.ControllerServiceCapability_RPC_LIST_VOLUME_HEALTH,
		csi.ControllerServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT,
		csi.ControllerServiceCapability_RPC_LIST_SNAPSHOTS,
		csi.ControllerServiceCapability_RPC_CLONE_VOLUME,
	} {
		caps = append(caps, &csi.ControllerServiceCapability{Type: &csi.ControllerServiceCapability_Rpc{Rpc: &csi.ControllerServiceCapability_RPC{Type: t}}})
	}
	return &csi.ControllerGetCapabilitiesResponse{Capabilities: caps}, nil
}

func (s *Controller) ControllerGetVolumeHealth(ctx context.Context, req *csi.ControllerGetVolumeHealthRequest) (*csi.ControllerGetVolumeHealthResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, toStatus(invalid("volume ID is missing"))
	}
	p, v, err := s.d.lookup(req.GetVolumeId())
	if err != nil {
		return nil, toStatus(err)
	}
	return &csi.ControllerGetVolumeHealthResponse{VolumeHealth: s.d.volumeHealth(ctx, p, v)}, nil
}

func (s *Controller) ControllerListVolumeHealth(ctx context.Context, req *csi.ControllerListVolumeHealthRequest) (*csi.ControllerListVolumeHealthResponse, error) {
	page, next, err := s.d.listPage(req.GetMaxEntries(), req.GetStartingToken())
	if err != nil {
		return nil, toStatus(err)
	}
	return &csi.ControllerListVolumeHealthResponse{NextToken: next, Entries: s.d.volumesHealth(ctx, page)}, nil
}
