package config

import (
	"flag"
	"testing"
	"time"
)

func TestOrphanFlags(t *testing.T) {
	parse := func(args ...string) (*Options, error) {
		var o Options
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		o.AddFlags(fs)
		if err := fs.Parse(append([]string{"--node-id=n1", "--pool=a=/p/a", "--pool=b=/p/b"}, args...)); err != nil {
			return nil, err
		}
		return &o, o.Validate()
	}
	o, err := parse("--volume-list-dir=/etc/flashpv-volumes", "--delete-orphans=a,b", "--orphan-grace=2h")
	if err != nil || len(o.DeleteOrphans) != 2 || o.OrphanGrace != 2*time.Hour {
		t.Fatalf("%+v %v", o, err)
	}
	if o, err := parse(); err != nil || len(o.DeleteOrphans) != 0 || o.OrphanGrace != time.Hour {
		t.Fatalf("defaults: %+v %v", o, err)
	}
	for name, args := range map[string][]string{
		"unknown pool": {"--volume-list-dir=/x", "--delete-orphans=c"},
		"no list":      {"--delete-orphans=a"},
		"short grace":  {"--orphan-grace=10s"},
	} {
		if _, err := parse(args...); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
