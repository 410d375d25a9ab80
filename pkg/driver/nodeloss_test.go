package driver

import (
	"context"
	"errors"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/flashpv/flashpv/pkg/pool"
	"github.com/flashpv/flashpv/pkg/wellknown"
)

func TestCreateParametersNodeLossPolicy(t *testing.T) {
	for _, tc := range []struct {
		value string
		ok    bool
	}{
		{wellknown.NodeLossRecreate, true},
		{wellknown.NodeLossReport, true},
		{"recreate", false},
		{"", false},
		{"Delete", false},
	} {
		got, err := createParameters(map[string]string{wellknown.ParamNodeLossPolicy: tc.value})
		if tc.ok && (err != nil || got[wellknown.ParamNodeLossPolicy] != tc.value) {
			t.Errorf("%q: %v %v", tc.value, got, err)
		}
		if !tc.ok && !errors.Is(err, pool.ErrInvalid) {
			t.Errorf("%q: want InvalidArgument, got %v", tc.value, err)
		}
	}
}

// The policy a volume was created with reaches the PV through the volume
// context, where the cluster controller reads it; without it, there is none.
func TestNodeLossPolicyInVolumeContext(t *testing.T) {
	c, _ := newTestController(t)
	ctx := context.Background()
	for name, params := range map[string]map[string]string{
		"opted": {wellknown.ParamNodeLossPolicy: wellknown.NodeLossRecreate},
		"plain": nil,
	} {
		resp, err := c.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: name, Parameters: params,
			CapacityRange: &csi.CapacityRange{RequiredBytes: 1 << 20}, VolumeCapabilities: blockCaps()})
		if err != nil {
			t.Fatal(err)
		}
		got, ok := resp.GetVolume().GetVolumeContext()[wellknown.ParamNodeLossPolicy]
		if want, wantOK := params[wellknown.ParamNodeLossPolicy]; got != want || ok != wantOK {
			t.Errorf("%s: volume context %v", name, resp.GetVolume().GetVolumeContext())
		}
		if resp.GetVolume().GetVolumeContext()[ParamPool] == "" {
			t.Errorf("%s: no pool in the volume context", name)
		}
	}
}
