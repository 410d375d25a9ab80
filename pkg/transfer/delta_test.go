package transfer

import (
	"context"
	"os"
	"sync/atomic"
	"testing"

	"github.com/flashpv/flashpv/pkg/transfer/auth"
	"github.com/flashpv/flashpv/pkg/transfer/broker"
	"github.com/flashpv/flashpv/pkg/transfer/stream"
)

const testBase = "default.ffeeddccbbaa99887766554433221100"

// deltaOpener serves testSource, a volume, as it differs from testBase.
type deltaOpener struct {
	fakeOpener
	cur, base *testContent
	deltas    atomic.Int32
}

func (o *deltaOpener) OpenDelta(_ context.Context, volume, base string) (*Content, error) {
	o.deltas.Add(1)
	if volume != testSource || base != testBase {
		return nil, &RemoteError{CodeNotFound, "no such volume or snapshot"}
	}
	cf, err := os.Open(o.cur.path)
	if err != nil {
		return nil, err
	}
	bf, err := os.Open(o.base.path)
	if err != nil {
		cf.Close()
		return nil, err
	}
	h := Header{Kind: auth.KindDelta, Source: testSource, Base: testBase, Name: "pvc-1", Size: o.cur.header.Size, Mode: "block"}
	return &Content{
		Header: h, Data: stream.FileSource(cf, h.Size), Base: stream.FileSource(bf, o.base.header.Size), BaseSize: o.base.header.Size,
		Close: func() { cf.Close(); bf.Close() },
	}, nil
}

func deltaCapability(t *testing.T, c *testCluster, mod func(*auth.Capability)) string {
	return c.capability(t, func(capa *auth.Capability) {
		capa.Kind, capa.Source, capa.Base, capa.Target = auth.KindDelta, testSource, testBase, testSource
		if mod != nil {
			mod(capa)
		}
	})
}

func TestDeltaTurnsTheBaseIntoTheVolume(t *testing.T) {
	cluster := newTestCluster(t)
	idA, idB := cluster.identity(t, nodeA), cluster.identity(t, nodeB)
	base := smallContent(t)
	cur := newTestContent(t, 4<<20, []stream.Extent{{Off: 0, Len: 64 << 10}, {Off: 3 << 20, Len: 128 << 10}})
	opener := &deltaOpener{cur: cur, base: base}
	addr, _ := startServer(t, &Server{Identity: idA, Open: opener})

	// The target holds the base, grown to the volume's size.
	dst := newTarget(t, 4<<20, stream.Extent{})
	bdata, err := os.ReadFile(base.path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dst.WriteAt(bdata, 0); err != nil {
		t.Fatal(err)
	}
	c := &Client{Identity: idB}
	g := Grant{SourceNode: nodeA, Address: addr, Capability: deltaCapability(t, cluster, nil)}
	sess, err := c.OpenGranted(testContext(t), g, ReadRequest{Kind: auth.KindDelta, Source: testSource, Base: testBase, Target: testSource}, Have{})
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	if sess.Name != "pvc-1" || sess.Base != testBase {
		t.Errorf("header %+v", sess.Header)
	}
	st, err := sess.ReceiveDelta(testContext(t), stream.FileTarget(dst), nil)
	if err != nil {
		t.Fatal(err)
	}
	src, err := os.Open(cur.path)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	sameRange(t, src, dst, 0, 4<<20)
	if st.DataBytes > 192<<10 {
		t.Errorf("the delta sent %d data bytes; the volume has 192 KiB of data", st.DataBytes)
	}
}

func TestDeltaRefusals(t *testing.T) {
	cluster := newTestCluster(t)
	idA, idB := cluster.identity(t, nodeA), cluster.identity(t, nodeB)
	tests := []struct {
		name string
		capa func(t *testing.T) string
		req  ReadRequest
	}{
		{"a capability for a delta against another snapshot", func(t *testing.T) string {
			return deltaCapability(t, cluster, func(c *auth.Capability) { c.Base = "default.00000000000000000000000000000000" })
		}, ReadRequest{Kind: auth.KindDelta, Source: testSource, Base: testBase, Target: testSource}},
		{"a delta asked with a snapshot's capability", func(t *testing.T) string {
			return cluster.capability(t, func(c *auth.Capability) { c.Source, c.Target = testSource, testSource })
		}, ReadRequest{Kind: auth.KindDelta, Source: testSource, Base: testBase, Target: testSource}},
		{"a volume asked with a delta's capability", func(t *testing.T) string {
			return deltaCapability(t, cluster, nil)
		}, ReadRequest{Kind: broker.KindVolume, Source: testSource, Target: testSource}},
		{"a snapshot asked with a base", func(t *testing.T) string {
			return cluster.capability(t, nil)
		}, ReadRequest{Kind: broker.KindSnapshot, Source: testSource, Base: testBase, Target: testTarget}},
		{"a delta of another volume", func(t *testing.T) string {
			return deltaCapability(t, cluster, nil)
		}, ReadRequest{Kind: auth.KindDelta, Source: "default.11111111111111111111111111111111", Base: testBase, Target: testSource}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opener := &deltaOpener{cur: smallContent(t), base: smallContent(t)}
			opener.content = opener.cur
			addr, _ := startServer(t, &Server{Identity: idA, Open: opener})
			g := Grant{SourceNode: nodeA, Address: addr, Capability: tt.capa(t)}
			_, err := (&Client{Identity: idB}).OpenGranted(testContext(t), g, tt.req, Have{})
			wantRemoteCode(t, err, CodeDenied)
			if opener.deltas.Load() != 0 || opener.calls.Load() != 0 {
				t.Error("the content was opened")
			}
		})
	}
}
