package driver

import (
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/flashpv/flashpv/pkg/mounter"
	"github.com/flashpv/flashpv/pkg/pool"
	"github.com/flashpv/flashpv/pkg/wellknown"
)

const (
	mib = int64(1) << 20
	gib = int64(1) << 30
	// DefaultVolumeSize is used when CreateVolume gives no capacity.
	DefaultVolumeSize = gib
	// MinVolumeSize is the smallest volume of any kind.
	MinVolumeSize = mib
	maxPathLength = 4096
	maxNameLength = 255 // of one element of a path (NAME_MAX)
	// DefaultFsType is used when neither the capability nor the options name one.
	DefaultFsType = "ext4"
)

// minFsSize is the smallest volume of each filesystem: what its mkfs accepts
// (xfs: 300 MiB) and, for btrfs, what can still be grown online (a 160 MiB
// btrfs was seen to refuse online growth with EINVAL, 200 MiB grew).
var minFsSize = map[string]int64{
	"ext4":  MinVolumeSize,
	"xfs":   300 * mib,
	"btrfs": 256 * mib,
}

var singleNodeModes = map[csi.VolumeCapability_AccessMode_Mode]bool{
	csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER:        true,
	csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY:   true,
	csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER: true,
	csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER:  true,
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{pool.ErrInvalid}, args...)...)
}

// checkCapability validates one capability and returns the mode and fsType
// it asks for ("" fsType for Block, the default for an unset Mount fsType).
func checkCapability(c *csi.VolumeCapability, defaultFs string) (pool.Mode, string, error) {
	if c == nil {
		return "", "", invalid("volume capability is missing")
	}
	am := c.GetAccessMode().GetMode()
	if !singleNodeModes[am] {
		return "", "", fmt.Errorf("%w: access mode %s: flashpv volumes live on one node, only SINGLE_NODE_* modes are supported", errUnsupported, am)
	}
	switch {
	case c.GetBlock() != nil:
		return pool.ModeBlock, "", nil
	case c.GetMount() != nil:
		m := c.GetMount()
		fsType := m.GetFsType()
		if fsType == "" {
			fsType = defaultFs
		}
		if _, ok := minFsSize[fsType]; !ok {
			return "", "", fmt.Errorf("%w: fsType %q: supported are ext4, xfs and btrfs", errUnsupported, fsType)
		}
		for _, f := range m.GetMountFlags() {
			if f == "" || strings.ContainsAny(f, "\x00\n") {
				return "", "", invalid("mount flag %q is malformed", f)
			}
		}
		if err := mounter.CheckOptions(m.GetMountFlags()); err != nil {
			return "", "", err
		}
		return pool.ModeFilesystem, fsType, nil
	default:
		return "", "", invalid("volume capability has neither block nor mount access type")
	}
}

// checkCapabilities validates the capabilities of a CreateVolume (or
// ValidateVolumeCapabilities): all must agree on mode and fsType, because one
// volume is either a block device or one filesystem.
func checkCapabilities(caps []*csi.VolumeCapability, defaultFs string) (pool.Mode, string, error) {
	if len(caps) == 0 {
		return "", "", invalid("volume capabilities are missing")
	}
	var mode pool.Mode
	var fsType string
	for i, c := range caps {
		m, f, err := checkCapability(c, defaultFs)
		if err != nil {
			return "", "", err
		}
		if i > 0 && (m != mode || f != fsType) {
			return "", "", fmt.Errorf("%w: capabilities ask for both %s %s and %s %s", errUnsupported, mode, fsType, m, f)
		}
		mode, fsType = m, f
	}
	return mode, fsType, nil
}

// capacityRange checks a capacity range and returns its bounds.
func capacityRange(cr *csi.CapacityRange) (req, lim int64, err error) {
	req, lim = cr.GetRequiredBytes(), cr.GetLimitBytes()
	if req < 0 || lim < 0 {
		return 0, 0, invalid("capacity range has negative bytes")
	}
	if lim > 0 && req > lim {
		return 0, 0, invalid("required bytes %d exceed limit bytes %d", req, lim)
	}
	return req, lim, nil
}

// expansionSize is the size a NodeExpandVolume asks for, in whole MiB.
func expansionSize(cr *csi.CapacityRange) (int64, error) {
	req, lim, err := capacityRange(cr)
	if err != nil {
		return 0, err
	}
	if req == 0 && lim == 0 {
		return 0, invalid("capacity range must ask for a positive size within its limit")
	}
	want := roundUp(max(req, 1), mib)
	if lim > 0 && want > lim {
		return 0, fmt.Errorf("%w: %d bytes rounded to whole MiB exceed the limit %d", pool.ErrOutOfRange, want, lim)
	}
	return want, nil
}

// volumeSize turns a capacity range into the size to allocate, and the range
// an existing volume of the same name must fall in.
func volumeSize(cr *csi.CapacityRange, minSize int64) (size, lo, hi int64, err error) {
	req, lim, err := capacityRange(cr)
	if err != nil {
		return 0, 0, 0, err
	}
	size = req
	if size == 0 {
		size = DefaultVolumeSize
		if lim > 0 && lim < size {
			size = lim / mib * mib
		}
	}
	size = max(roundUp(size, mib), minSize)
	if lim > 0 && size > lim {
		return 0, 0, 0, fmt.Errorf("%w: limit %d bytes is below the smallest possible volume of %d bytes", pool.ErrOutOfRange, lim, size)
	}
	return size, req, lim, nil
}

func roundUp(n, unit int64) int64 { return (n + unit - 1) / unit * unit }

// checkPath validates a staging or target path from the CO: absolute, clean,
// below the kubelet directory, and not escaping it through a symlink in an
// existing parent.
func (d *Driver) checkPath(p, what string) error {
	switch {
	case p == "":
		return invalid("%s is missing", what)
	case len(p) > maxPathLength || strings.ContainsRune(p, 0):
		return invalid("%s is malformed", what)
	case !filepath.IsAbs(p) || filepath.Clean(p) != p:
		return invalid("%s %q must be an absolute, clean path", what, p)
	}
	root := filepath.Clean(d.kubeletDir)
	if !within(p, root) {
		return invalid("%s %q is outside the kubelet directory %s", what, p, root)
	}
	// The kubelet directory itself is no volume's path: a mount there would
	// cover all of it, and an unpublish would remove it.
	if p == root {
		return invalid("%s %q is the kubelet directory itself", what, p)
	}
	// A name the kernel refuses (ENAMETOOLONG) is the caller's mistake,
	// not an internal error of the mkdir or remove that would meet it.
	for _, name := range strings.Split(p, "/") {
		if len(name) > maxNameLength {
			return invalid("%s has a name longer than %d bytes", what, maxNameLength)
		}
	}
	// Resolve the deepest existing ancestor: a symlink there must not lead
	// out of the kubelet directory.
	realRoot, err := filepath.EvalSymlinks(root)
	if err != nil {
		return fmt.Errorf("kubelet directory %s: %w", root, err)
	}
	for dir := filepath.Dir(p); within(dir, root); dir = filepath.Dir(dir) {
		real, err := filepath.EvalSymlinks(dir)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("%s %q: %w", what, p, err)
		}
		if !within(real, realRoot) {
			return invalid("%s %q leads outside the kubelet directory", what, p)
		}
		break
	}
	if fi, err := os.Lstat(p); err == nil && fi.Mode()&fs.ModeSymlink != 0 {
		return invalid("%s %q is a symlink", what, p)
	}
	return nil
}

func within(p, root string) bool {
	return p == root || strings.HasPrefix(p, root+"/")
}

// parameterChecks are the StorageClass parameters flashpv owns, each with
// the check of its value (nil: any value). createParameters accepts these
// and no others; StorageClassParameters lists them for the reference page.
func parameterChecks() map[string]func(string) error {
	oneOf := func(want ...string) func(string) error {
		return func(v string) error {
			if !slices.Contains(want, v) {
				return fmt.Errorf("want %s", strings.Join(want, " or "))
			}
			return nil
		}
	}
	return map[string]func(string) error{
		ParamPool:                     nil,
		wellknown.ParamNodeLossPolicy: oneOf(wellknown.NodeLossRecreate, wellknown.NodeLossReport),
		wellknown.ParamCrossNode:      oneOf("true", "false"),
		wellknown.ParamDrainPolicy:    oneOf(wellknown.DrainMove, wellknown.DrainStay),
	}
}

// StorageClassParameters returns the StorageClass parameters flashpv
// owns, sorted; Kubernetes' own csi.storage.k8s.io/* keys are not among
// them.
func StorageClassParameters() []string {
	return slices.Sorted(maps.Keys(parameterChecks()))
}

// createParameters keeps the StorageClass parameters flashpv owns and rejects
// unknown ones, so a typo in a StorageClass fails loudly instead of silently
// giving a volume the user did not ask for.
func createParameters(params map[string]string) (map[string]string, error) {
	checks := parameterChecks()
	out := map[string]string{}
	for k, v := range params {
		if strings.HasPrefix(k, "csi.storage.k8s.io/") {
			continue // Kubernetes' own keys (PVC name, namespace, ...): not ours
		}
		check, ok := checks[k]
		if !ok {
			return nil, invalid("unknown parameter %q (flashpv knows %s)", k, strings.Join(StorageClassParameters(), ", "))
		}
		if check != nil {
			if err := check(v); err != nil {
				return nil, invalid("parameter %s=%q: %v", k, v, err)
			}
		}
		out[k] = v
	}
	return out, nil
}

// volumeContext is what the PV records of a volume: its pool, and the node
// loss policy it was created with, which the cluster controller reads.
func volumeContext(poolName string, v *pool.Volume) map[string]string {
	ctx := map[string]string{ParamPool: poolName}
	if p, ok := v.Parameters[wellknown.ParamNodeLossPolicy]; ok {
		ctx[wellknown.ParamNodeLossPolicy] = p
	}
	return ctx
}
