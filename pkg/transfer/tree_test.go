package transfer

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/flashpv/flashpv/pkg/transfer/broker"
	"github.com/flashpv/flashpv/pkg/transfer/stream"
	"github.com/flashpv/flashpv/pkg/transfer/tree"
)

// treeOpener serves the directory dir as the test snapshot, as a quota
// pool's node does.
type treeOpener struct{ dir string }

func (o *treeOpener) OpenTransfer(_ context.Context, kind, source string) (*Content, error) {
	if kind != broker.KindSnapshot || source != testSource {
		return nil, &RemoteError{CodeNotFound, "no such snapshot"}
	}
	d, err := os.Open(o.dir)
	if err != nil {
		return nil, err
	}
	h := Header{Kind: kind, Source: source, PoolKind: "quota", Size: 64 << 20, Mode: "filesystem", FsType: "xfs", Version: testVersion}
	return &Content{Header: h, Tree: d, Close: func() { d.Close() }}, nil
}

// TestTransferDeliversTree: a tree crosses the real server and client,
// marked as one in the header, never resumed, and only as a tree.
func TestTransferDeliversTree(t *testing.T) {
	cluster := newTestCluster(t)
	idA, idB := cluster.identity(t, nodeA), cluster.identity(t, nodeB)
	src := t.TempDir()
	data := bytes.Repeat([]byte("tree data "), 100<<10)
	if err := os.MkdirAll(filepath.Join(src, "d/e"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "d/e/f"), data, 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("e/f", filepath.Join(src, "d/link")); err != nil {
		t.Fatal(err)
	}
	addr, _ := startServer(t, &Server{Identity: idA, Open: &treeOpener{dir: src}})
	cluster.route(nodeA, addr)
	ctx := testContext(t)
	c := &Client{Identity: idB}

	// Asked to resume, a tree still starts over.
	s, err := c.Open(ctx, grantRequest(), stream.DefaultSegment, testVersion)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	want := Header{Kind: broker.KindSnapshot, Source: testSource, Layout: LayoutTree, PoolKind: "quota", Size: 64 << 20,
		Mode: "filesystem", FsType: "xfs", Version: testVersion}
	if s.Header != want || !s.IsTree() {
		t.Errorf("header %+v, want %+v", s.Header, want)
	}
	if _, err := s.Receive(ctx, stream.FileTarget(newTarget(t, 1<<20, stream.Extent{})), nil); !errors.Is(err, stream.ErrInvalid) {
		t.Errorf("Receive of a tree as blocks: %v, want ErrInvalid", err)
	}
	dst := t.TempDir()
	dir, err := os.Open(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	st, err := s.ReceiveTree(ctx, dir, nil)
	if err != nil {
		t.Fatalf("ReceiveTree: %v", err)
	}
	if got, err := os.ReadFile(filepath.Join(dst, "d/e/f")); err != nil || !bytes.Equal(got, data) {
		t.Errorf("d/e/f: %d bytes (%v), want %d", len(got), err, len(data))
	}
	if l, err := os.Readlink(filepath.Join(dst, "d/link")); l != "e/f" {
		t.Errorf("d/link points to %q (%v)", l, err)
	}
	if st.DataBytes != int64(len(data)) || st.Entries != 5 {
		t.Errorf("stats %+v", st)
	}
}

// TestBlockSessionIsNoTree: block content is never made into a tree.
func TestBlockSessionIsNoTree(t *testing.T) {
	cluster := newTestCluster(t)
	idA, idB := cluster.identity(t, nodeA), cluster.identity(t, nodeB)
	addr, _ := startServer(t, &Server{Identity: idA, Open: &fakeOpener{content: smallContent(t)}})
	cluster.route(nodeA, addr)
	ctx := testContext(t)
	s, err := (&Client{Identity: idB}).Open(ctx, grantRequest(), 0, "")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.IsTree() || s.Layout != "" {
		t.Errorf("block content with layout %q", s.Layout)
	}
	dir, err := os.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	if _, err := s.ReceiveTree(ctx, dir, func(tree.Stats) error { return nil }); !errors.Is(err, stream.ErrInvalid) {
		t.Errorf("ReceiveTree of block content: %v, want ErrInvalid", err)
	}
}

func TestReadHeaderLayouts(t *testing.T) {
	tests := []struct {
		name string
		h    Header
		ok   bool
	}{
		{"block", Header{Size: 10, Segment: 1 << 20}, true},
		{"block, named", Header{Layout: LayoutBlock, Size: 10, Segment: 1 << 20}, true},
		{"block without a segment", Header{Size: 10}, false},
		{"tree", Header{Layout: LayoutTree, Size: 10}, true},
		{"tree that resumes", Header{Layout: LayoutTree, Size: 10, Start: 4}, false},
		{"tree of negative size", Header{Layout: LayoutTree, Size: -1}, false},
		{"unknown layout", Header{Layout: "zfs", Size: 10, Segment: 1 << 20}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b bytes.Buffer
			if err := writeHeader(&b, tt.h); err != nil {
				t.Fatal(err)
			}
			_, err := readHeader(&b)
			if (err == nil) != tt.ok {
				t.Errorf("readHeader: %v, want ok %v", err, tt.ok)
			}
		})
	}
}
