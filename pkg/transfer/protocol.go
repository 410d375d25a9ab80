package transfer

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/flashpv/flashpv/pkg/transfer/tree"
)

// The node-to-node protocol: one HTTPS POST to PathRead per attempt, over
// mutual TLS 1.3, its body a ReadRequest. A 200 answer's body is a
// length-prefixed JSON Header followed by the content's frames: package
// stream's from Header.Start on for block content, package tree's for a
// file tree (Header.Layout). Any other answer's body is a RemoteError.
//
// A tree is resumable when the target asks for it with the HTTP header
// Flashpv-Tree-Format: 2 (checkpoints; older sources ignore it, and send
// a whole stream without them), and resumed after a checkpoint with
// Flashpv-Tree-Resume (the checkpoint's text) when the source is of
// ReadRequest.Version. Headers, not request fields: an older source
// refuses a request with fields it does not know.

const (
	// PathRead is the one endpoint of a node's transfer server.
	PathRead = "/v1/read"
	// HeaderTreeFormat and HeaderTreeResume ask for a resumable tree, and
	// for one resumed.
	HeaderTreeFormat = "Flashpv-Tree-Format"
	HeaderTreeResume = "Flashpv-Tree-Resume"
	// TreeFormatCheckpoints is the tree format with checkpoints.
	TreeFormatCheckpoints = 2
	// maxRequest bounds a request body, maxHeader the answer's header.
	maxRequest = 8 << 10
	maxHeader  = 8 << 10
)

// ReadRequest asks the source for a content's data.
type ReadRequest struct {
	Capability string `json:"capability"`
	Kind       string `json:"kind"`
	Source     string `json:"source"`
	Target     string `json:"target"`
	// From and Version are what the target already holds: a resumable
	// content of the same version is sent from From on.
	From    int64  `json:"from,omitempty"`
	Version string `json:"version,omitempty"`
	// Base is a delta's snapshot (Kind auth.KindDelta): Source, a volume,
	// is sent as it differs from Base, which the target holds. Older
	// sources refuse the field, and so a delta.
	Base string `json:"base,omitempty"`
}

// Layouts of a content: what its frames carry.
const (
	// LayoutBlock is an image's or a device's bytes (package stream); ""
	// means the same, for peers that predate trees.
	LayoutBlock = "block"
	// LayoutTree is a quota volume's directory tree (package tree).
	LayoutTree = "tree"
)

// Header describes the content that follows it.
type Header struct {
	Kind   string `json:"kind"`
	Source string `json:"source"`
	// Base is a delta's snapshot: the block frames that follow are a
	// delta stream (stream.SendDelta) against it. A tree is never a delta.
	Base string `json:"base,omitempty"`
	// Name is the name of the volume the content is, or a snapshot was
	// taken of, when the source knows it: a move makes its copy under the
	// same name, and so the same volume ID.
	Name string `json:"name,omitempty"`
	// Layout is LayoutTree or LayoutBlock (also ""). PoolKind is the kind
	// of pool the content comes from, for messages.
	Layout   string `json:"layout,omitempty"`
	PoolKind string `json:"poolKind,omitempty"`
	// Size is the content's size in bytes; a volume made from it is at
	// least this big.
	Size int64 `json:"size"`
	// Mode, FsType and Format are the source's (pool.Mode, its
	// filesystem, and pool.FormatDone when it holds a filesystem that
	// must never be made again).
	Mode   string `json:"mode"`
	FsType string `json:"fsType,omitempty"`
	Format string `json:"format,omitempty"`
	// Version identifies a content that never changes (a snapshot): only
	// such a content is resumed. "" for a volume.
	Version string `json:"version,omitempty"`
	// Start is where the frames begin, Segment the unit of verification,
	// for block content; a tree has neither (0).
	Start   int64 `json:"start"`
	Segment int64 `json:"segment"`
	// TreeFormat is TreeFormatCheckpoints for a resumable tree (0: one
	// without checkpoints), Resume the checkpoint it resumes after, as
	// the target sent it ("": from the start).
	TreeFormat int    `json:"treeFormat,omitempty"`
	Resume     string `json:"resume,omitempty"`
}

// treeOptions is how the tree that follows h is sent and received.
func (h *Header) treeOptions() (tree.Options, error) {
	opt := tree.Options{Checkpoints: h.TreeFormat == TreeFormatCheckpoints}
	if h.Resume != "" {
		c, err := tree.ParseCheckpoint(h.Resume)
		if err != nil {
			return opt, err
		}
		opt.From = &c
	}
	return opt, nil
}

// IsTree tells whether the content is a file tree.
func (h *Header) IsTree() bool { return h.Layout == LayoutTree }

// RemoteError is a refusal, with a gRPC code name for the caller's answer.
type RemoteError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *RemoteError) Error() string { return e.Code + ": " + e.Message }

// Codes of RemoteError.
const (
	CodeDenied       = "PermissionDenied"
	CodeNotFound     = "NotFound"
	CodeInvalid      = "InvalidArgument"
	CodeBusy         = "Unavailable"
	CodeAborted      = "Aborted"
	CodePrecondition = "FailedPrecondition"
	CodeInternal     = "Internal"
)

func writeHeader(w io.Writer, h Header) error {
	data, err := json.Marshal(h)
	if err != nil {
		return err
	}
	var n [4]byte
	binary.BigEndian.PutUint32(n[:], uint32(len(data)))
	if _, err := w.Write(n[:]); err != nil {
		return err
	}
	_, err = w.Write(data)
	return err
}

var errBadHeader = errors.New("malformed transfer header")

func readHeader(r io.Reader) (Header, error) {
	var n [4]byte
	if _, err := io.ReadFull(r, n[:]); err != nil {
		return Header{}, fmt.Errorf("%w: %v", errBadHeader, err)
	}
	size := binary.BigEndian.Uint32(n[:])
	if size == 0 || size > maxHeader {
		return Header{}, fmt.Errorf("%w: %d bytes", errBadHeader, size)
	}
	data := make([]byte, size)
	if _, err := io.ReadFull(r, data); err != nil {
		return Header{}, fmt.Errorf("%w: %v", errBadHeader, err)
	}
	var h Header
	if err := json.Unmarshal(data, &h); err != nil {
		return Header{}, fmt.Errorf("%w: %v", errBadHeader, err)
	}
	switch h.Layout {
	case "", LayoutBlock:
		if h.Size < 0 || h.Segment <= 0 || h.Start < 0 || h.Start > h.Size || h.Start%h.Segment != 0 {
			return Header{}, fmt.Errorf("%w: size %d, start %d, segment %d", errBadHeader, h.Size, h.Start, h.Segment)
		}
	case LayoutTree:
		if h.Size < 0 || h.Start != 0 {
			return Header{}, fmt.Errorf("%w: a tree of size %d starting at %d", errBadHeader, h.Size, h.Start)
		}
		if h.TreeFormat != 0 && h.TreeFormat != TreeFormatCheckpoints {
			return Header{}, fmt.Errorf("%w: tree format %d", errBadHeader, h.TreeFormat)
		}
		if h.Resume != "" && (h.TreeFormat != TreeFormatCheckpoints || h.Version == "") {
			return Header{}, fmt.Errorf("%w: a tree of version %q in format %d that resumes", errBadHeader, h.Version, h.TreeFormat)
		}
		if _, err := h.treeOptions(); err != nil {
			return Header{}, fmt.Errorf("%w: %v", errBadHeader, err)
		}
	default:
		return Header{}, fmt.Errorf("%w: layout %q", errBadHeader, h.Layout)
	}
	return h, nil
}
