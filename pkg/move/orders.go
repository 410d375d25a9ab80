package move

import "context"

// OrderRequest is one order from the controller to a node's flashpv.
// Orders are idempotent: the same request again returns the order's
// progress (starting it, or starting it over, when the node does not know
// it, e.g. after a restart).
type OrderRequest struct {
	// MoveID names the move (Record.ID); a node keeps one job per move and
	// order.
	MoveID string `json:"moveID"`
	Order  Order  `json:"order"`
	// Volume is the volume's ID, the same on both nodes.
	Volume string `json:"volume"`
	// Snapshot is the pre-copy's snapshot ID on the source node (import,
	// catch-up).
	Snapshot string `json:"snapshot,omitempty"`
	// Source and Target are the two nodes' names; SourceAddress is the
	// source's transfer server (host:port), for import and catch-up.
	Source        string `json:"source"`
	Target        string `json:"target"`
	SourceAddress string `json:"sourceAddress,omitempty"`
	// Capability lets the target read from the source (import: the
	// snapshot; catch-up: the volume against the snapshot); the controller
	// signs it like a restore's.
	Capability string `json:"capability,omitempty"`
}

// Orders sends orders to nodes' flashpv: the answer's progress, and for
// Failed what the node said. An error is a failure to ask (the node did
// not answer); the controller tries again.
type Orders interface {
	Send(ctx context.Context, node string, req OrderRequest) (Progress, string, error)
}
