package transfer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
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
// marked as one in the header, in the format with checkpoints, and only
// as a tree; block content's resume point means nothing to it.
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

	// A block content's resume point: the tree starts from the beginning.
	s, err := c.Open(ctx, grantRequest(), Have{From: stream.DefaultSegment, Version: testVersion})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	want := Header{Kind: broker.KindSnapshot, Source: testSource, Layout: LayoutTree, PoolKind: "quota", Size: 64 << 20,
		Mode: "filesystem", FsType: "xfs", Version: testVersion, TreeFormat: TreeFormatCheckpoints}
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
	s, err := (&Client{Identity: idB}).Open(ctx, grantRequest(), Have{})
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
	if _, err := s.ReceiveTree(ctx, dir, func(tree.Stats, *tree.Checkpoint) error { return nil }); !errors.Is(err, stream.ErrInvalid) {
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
		{"tree after a checkpoint", Header{Layout: LayoutTree, Size: 10, TreeFormat: 2, Version: "v", Resume: tree.Checkpoint{Entries: 1, Kind: tree.KindDir}.String()}, true},
		{"tree of a volume after a checkpoint", Header{Layout: LayoutTree, Size: 10, TreeFormat: 2, Resume: tree.Checkpoint{Entries: 1, Kind: tree.KindDir}.String()}, false},
		{"tree without checkpoints after one", Header{Layout: LayoutTree, Size: 10, Version: "v", Resume: tree.Checkpoint{Entries: 1, Kind: tree.KindDir}.String()}, false},
		{"tree after a malformed checkpoint", Header{Layout: LayoutTree, Size: 10, TreeFormat: 2, Version: "v", Resume: "x"}, false},
		{"tree of an unknown format", Header{Layout: LayoutTree, Size: 10, TreeFormat: 3}, false},
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

// TestTransferResumesTree: a tree cut at a checkpoint is resumed by the
// real server after it, when the target holds the same version; another
// version starts over.
func TestTransferResumesTree(t *testing.T) {
	cluster := newTestCluster(t)
	idA, idB := cluster.identity(t, nodeA), cluster.identity(t, nodeB)
	src := t.TempDir()
	// More entries than a checkpoint's spacing.
	for i := range 5000 {
		if err := os.WriteFile(filepath.Join(src, fmt.Sprintf("f%04d", i)), []byte{byte(i)}, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	addr, _ := startServer(t, &Server{Identity: idA, Open: &treeOpener{dir: src}})
	cluster.route(nodeA, addr)
	ctx := testContext(t)
	c := &Client{Identity: idB}
	dst := t.TempDir()
	dir, err := os.Open(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()

	s, err := c.Open(ctx, grantRequest(), Have{})
	if err != nil {
		t.Fatal(err)
	}
	var cp *tree.Checkpoint
	_, err = s.ReceiveTree(ctx, dir, func(_ tree.Stats, c *tree.Checkpoint) error {
		cp = c
		return errors.New("cut")
	})
	s.Close()
	if cp == nil || err == nil {
		t.Fatalf("no checkpoint before the cut (%v)", err)
	}

	other, err := c.Open(ctx, grantRequest(), Have{Version: "other", Checkpoint: cp.String()})
	if err != nil {
		t.Fatal(err)
	}
	other.Close()
	if other.Resume != "" {
		t.Errorf("a checkpoint of another version was resumed: %q", other.Resume)
	}

	s, err = c.Open(ctx, grantRequest(), Have{Version: testVersion, Checkpoint: cp.String()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.Resume != cp.String() {
		t.Fatalf("resume %q, want %q", s.Resume, cp.String())
	}
	st, err := s.ReceiveTree(ctx, dir, nil)
	if err != nil {
		t.Fatalf("resumed ReceiveTree: %v", err)
	}
	if st.Entries != 5001 {
		t.Errorf("%d entries after resuming, want 5001", st.Entries)
	}
	names, _ := dir.Readdirnames(-1)
	if len(names) != 5000 {
		t.Errorf("%d entries in the copy, want 5000", len(names))
	}
}

// TestTreeFormat: a target that does not ask for checkpoints (an older
// node) gets a tree without them; only a snapshot of the version the
// target holds is resumed, and only at a well-formed checkpoint.
func TestTreeFormat(t *testing.T) {
	cp := tree.Checkpoint{Entries: 3, Path: "a", Kind: tree.KindOther}.String()
	asks := http.Header{HeaderTreeFormat: {"2"}, HeaderTreeResume: {cp}}
	tests := []struct {
		name        string
		hdr         http.Header
		version     string
		asked       string
		format      int
		wantResumed bool
	}{
		{"older target", http.Header{}, "v", "v", 0, false},
		{"older target with a checkpoint", http.Header{HeaderTreeResume: {cp}}, "v", "v", 0, false},
		{"from the start", http.Header{HeaderTreeFormat: {"2"}}, "v", "v", 2, false},
		{"snapshot of the same version", asks, "v", "v", 2, true},
		{"snapshot of another version", asks, "v", "w", 2, false},
		{"volume", asks, "", "", 2, false},
		{"malformed checkpoint", http.Header{HeaderTreeFormat: {"2"}, HeaderTreeResume: {"garbage"}}, "v", "v", 2, false},
		{"unknown format", http.Header{HeaderTreeFormat: {"3"}, HeaderTreeResume: {cp}}, "v", "v", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := Header{Layout: LayoutTree, Version: tt.version}
			treeFormat(&h, tt.hdr, ReadRequest{Version: tt.asked})
			if h.TreeFormat != tt.format || (h.Resume != "") != tt.wantResumed {
				t.Errorf("format %d, resume %q; want %d, resumed %v", h.TreeFormat, h.Resume, tt.format, tt.wantResumed)
			}
		})
	}
}
