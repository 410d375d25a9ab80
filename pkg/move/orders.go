// Package move is what the cluster controller and a node's flashpv share
// about moving a volume to another node (docs/moving.md): the orders and
// their answers. It imports nothing of Kubernetes, so the node plugin can
// use it; the controller's side is package mover.
package move

import "context"

// Annotations. The request is on the claim; the record on the source PV,
// which lives through the whole move (also while the claim is deleted and
// recreated); the state is also copied onto the claim for people.
const (
	AnnRequest  = "flashpv.dev/move-to"
	AnnState    = "flashpv.dev/move-state"
	AnnID       = "flashpv.dev/move-id"
	AnnSource   = "flashpv.dev/move-source"
	AnnTarget   = "flashpv.dev/move-target"
	AnnClaimUID = "flashpv.dev/move-claim-uid"
	AnnMode     = "flashpv.dev/move-mode"
	AnnReclaim  = "flashpv.dev/move-reclaim"
	// AnnLate: the volume could not be snapshotted while in use, so the
	// move's snapshot is taken once its pod has stopped, behind the fence.
	AnnLate = "flashpv.dev/move-snapshot-after-stop"
	// AnnWhy: why a move is being rolled back.
	AnnWhy = "flashpv.dev/move-rollback-reason"
	// RequestAny asks for any node that fits.
	RequestAny = "any"
)

// SnapshotNeedsStop is in the error of a snapshot refused because its
// volume is in use and cannot be frozen (a directory of a quota pool, a
// published Block volume of a pool that cannot share blocks). A move then
// snapshots it after its pod stops.
const SnapshotNeedsStop = "can be snapshotted only while no pod uses it"

// State is a move's step.
type State string

const (
	Planned       State = "Planned"
	PreCopying    State = "PreCopying"
	WaitingForPod State = "WaitingForPod"
	CatchingUp    State = "CatchingUp"
	Rebinding     State = "Rebinding"
	Cleaning      State = "Cleaning"
	Done          State = "Done"
	RollingBack   State = "RollingBack"
)

// Order is what the controller asks of a node's flashpv.
type Order string

const (
	// OrderImport: the target fetches the snapshot into an incoming copy.
	OrderImport Order = "import"
	// OrderFence: the source refuses to stage or publish the volume.
	OrderFence Order = "fence"
	// OrderUnfence lifts the fence.
	OrderUnfence Order = "unfence"
	// OrderCatchUp: the target fetches the volume's delta against the
	// snapshot and completes its copy.
	OrderCatchUp Order = "catch-up"
	// OrderDrop: the node deletes its copy of the volume (the target's
	// incoming one on a rollback, the source's after the move).
	OrderDrop Order = "drop"
)

// Progress is a node's answer about an order.
type Progress string

const (
	// Unknown: not asked yet (or the controller restarted).
	Unknown Progress = ""
	Running Progress = "Running"
	// Finished: the order is carried out.
	Finished Progress = "Finished"
	Failed   Progress = "Failed"
)

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
