package clustercontroller

import (
	"flag"
	"testing"
	"time"
)

func TestTransferOptions(t *testing.T) {
	defaults := func() TransferOptions {
		var o TransferOptions
		o.AddFlags(flag.NewFlagSet("test", flag.ContinueOnError))
		return o
	}
	d := defaults()
	if d.Address != ":9810" || d.NodePort != 9811 || d.Secret != "flashpv-transfer-key" || d.TrustConfigMap != "flashpv-transfer-trust" ||
		d.ServiceName != "flashpv-controller" || d.NodeServiceAccount != "flashpv-node" || d.NodePodLabel != "app.kubernetes.io/name=flashpv" {
		t.Errorf("defaults %+v", d)
	}
	for _, tc := range []struct {
		name   string
		change func(*TransferOptions)
		ok     bool
	}{
		{"defaults", func(*TransferOptions) {}, true},
		{"off", func(o *TransferOptions) { o.Address, o.NodePort, o.NodePodLabel = "", 0, "" }, true},
		{"no port", func(o *TransferOptions) { o.NodePort = 0 }, false},
		{"port too big", func(o *TransferOptions) { o.NodePort = 70000 }, false},
		{"selector of everything", func(o *TransferOptions) { o.NodePodLabel = "" }, false},
		{"bad selector", func(o *TransferOptions) { o.NodePodLabel = "a=(" }, false},
		{"bad secret", func(o *TransferOptions) { o.Secret = "Key" }, false},
		{"service name with a dot", func(o *TransferOptions) { o.ServiceName = "a.b" }, false},
		{"no service account", func(o *TransferOptions) { o.NodeServiceAccount = "" }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := defaults()
			tc.change(&o)
			if err := o.Validate(); (err == nil) != tc.ok {
				t.Errorf("Validate: %v", err)
			}
		})
	}
}

func TestNodeStatusOptions(t *testing.T) {
	defaults := func() Options {
		var o Options
		o.AddFlags(flag.NewFlagSet("test", flag.ContinueOnError))
		o.Namespace = "flashpv"
		return o
	}
	if d := defaults(); d.NodeStatusPort != 9808 || d.NodeStatusInterval != time.Minute {
		t.Errorf("defaults %+v", d)
	}
	for _, tc := range []struct {
		name   string
		change func(*Options)
		ok     bool
	}{
		{"defaults", func(*Options) {}, true},
		{"off", func(o *Options) { o.NodeStatusPort, o.NodeStatusInterval = 0, 0 }, true},
		{"port too big", func(o *Options) { o.NodeStatusPort = 70000 }, false},
		{"negative port", func(o *Options) { o.NodeStatusPort = -1 }, false},
		{"no interval", func(o *Options) { o.NodeStatusInterval = 0 }, false},
		{"no broker, no selector", func(o *Options) { o.Transfer.Address, o.Transfer.NodePodLabel = "", "" }, false},
		{"no broker, no status, no selector", func(o *Options) { o.Transfer.Address, o.Transfer.NodePodLabel, o.NodeStatusPort = "", "", 0 }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := defaults()
			tc.change(&o)
			if err := o.Validate(); (err == nil) != tc.ok {
				t.Errorf("Validate: %v", err)
			}
		})
	}
}
