package config

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flashpv/flashpv/pkg/pool"
)

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		ok   bool
	}{
		{"0", 0, true}, {"4096", 4096, true}, {"10Gi", 10 << 30, true}, {"512Mi", 512 << 20, true},
		{"1G", 1e9, true}, {"2T", 2e12, true}, {"3Ki", 3072, true},
		{"", 0, false}, {"-1", 0, false}, {"1.5Gi", 0, false}, {"Gi", 0, false}, {"10GB", 0, false}, {"99999999999Ti", 0, false},
	} {
		got, err := ParseSize(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseSize(%q) = %d, %v", tc.in, got, err)
		}
	}
}

func TestParsePoolSpec(t *testing.T) {
	p, err := ParsePoolSpec("fast=/mnt/nvme0/flashpv,reserve=10Gi")
	if err != nil || p != (PoolSpec{Name: "fast", Kind: pool.KindImage, Path: "/mnt/nvme0/flashpv", Reserve: 10 << 30}) {
		t.Fatalf("%+v %v", p, err)
	}
	for in, want := range map[string]PoolSpec{
		"db=lvm:vg0,reserve=1Gi":              {Name: "db", Kind: pool.KindLVM, VG: "vg0", Reserve: 1 << 30},
		"t=lvm:vg0,thin=tp,overprovision=2.5": {Name: "t", Kind: pool.KindLVM, VG: "vg0", ThinPool: "tp", Overprovision: 2.5},
		"s=lvm:vg0,stripes=2,stripesize=64Ki": {Name: "s", Kind: pool.KindLVM, VG: "vg0", Stripes: 2, StripeSize: 64 << 10},
		"q=quota:/mnt/xfs/flashpv":            {Name: "q", Kind: pool.KindQuota, Path: "/mnt/xfs/flashpv"},
		"i=image:/mnt/x":                      {Name: "i", Kind: pool.KindImage, Path: "/mnt/x"},
	} {
		if got, err := ParsePoolSpec(in); err != nil || got != want {
			t.Errorf("ParsePoolSpec(%q) = %+v, %v", in, got, err)
		}
	}
	for _, bad := range []string{"fast", "Fast=/x", "fast=rel", "fast=/x/../y", "fast=/x,reserve=lots", "fast=/x,color=red", "=/x",
		"a=zfs:/x", "a=lvm:", "a=quota:rel", "a=/x,thin=tp", "a=lvm:vg,overprovision=3", "a=lvm:vg,thin=tp,overprovision=0.5",
		"a=lvm:vg,thin=tp,stripes=2", "a=lvm:vg,stripes=0", "a=lvm:vg,stripesize=64Ki", "a=quota:/x,stripes=2"} {
		if _, err := ParsePoolSpec(bad); err == nil {
			t.Errorf("ParsePoolSpec(%q) succeeded", bad)
		}
	}
}

func TestValidate(t *testing.T) {
	parse := func(args ...string) (*Options, error) {
		var o Options
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		o.AddFlags(fs)
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		return &o, o.Validate()
	}
	o, err := parse("--node-id", "n1", "--state-dir", "/var/lib/fpv")
	if err != nil || len(o.Pools) != 1 || o.Pools[0].Path != "/var/lib/fpv/pools/default" || o.SocketPath() == "" {
		t.Fatalf("defaults: %+v %v", o, err)
	}
	for what, args := range map[string][]string{
		"no node":     {},
		"tcp":         {"--node-id", "n", "--endpoint", "tcp://1.2.3.4:5"},
		"dup pool":    {"--node-id", "n", "--pool", "a=/p/a", "--pool", "a=/p/b"},
		"nested":      {"--node-id", "n", "--pool", "a=/p", "--pool", "b=/p/b"},
		"max volumes": {"--node-id", "n", "--max-volumes", "0"},
		"kubelet dir": {"--node-id", "n", "--kubelet-dir", "var/lib/kubelet"},
	} {
		if _, err := parse(args...); err == nil {
			t.Errorf("%s: accepted", what)
		}
	}
	if _, err := parse("--node-id", "n", "--pool", "a=/p/a", "--pool", "b=/p/ab"); err != nil && strings.Contains(err.Error(), "overlap") {
		t.Errorf("/p/a and /p/ab do not overlap: %v", err)
	}
}

func TestPoolsFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "pools")
	os.WriteFile(path, []byte("# pools of this node\nfast=/mnt/nvme0/flashpv,reserve=1Gi\n\nslow=/mnt/sata/flashpv # spinning\n"), 0o600)
	pools, err := ReadPoolsFile(path)
	if err != nil || len(pools) != 2 || pools[0].Reserve != 1<<30 || pools[1].Path != "/mnt/sata/flashpv" {
		t.Fatalf("%+v %v", pools, err)
	}
	os.WriteFile(path, []byte("ok=/a\nbad line\n"), 0o600)
	if _, err := ReadPoolsFile(path); err == nil || !strings.Contains(err.Error(), ":2:") {
		t.Fatalf("error does not name the line: %v", err)
	}
}
