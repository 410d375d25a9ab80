package mover

import "github.com/flashpv/flashpv/pkg/move"

// The vocabulary of package move (annotations, states, orders and
// answers), under the names the decisions use.
type (
	State        = move.State
	Order        = move.Order
	Progress     = move.Progress
	OrderRequest = move.OrderRequest
	Orders       = move.Orders
)

const (
	AnnRequest  = move.AnnRequest
	AnnState    = move.AnnState
	AnnID       = move.AnnID
	AnnSource   = move.AnnSource
	AnnTarget   = move.AnnTarget
	AnnClaimUID = move.AnnClaimUID
	AnnMode     = move.AnnMode
	AnnReclaim  = move.AnnReclaim
	AnnLate     = move.AnnLate
	AnnWhy      = move.AnnWhy
	RequestAny  = move.RequestAny
	// SnapshotNeedsStop is in the error of a snapshot refused while in use.
	SnapshotNeedsStop = move.SnapshotNeedsStop
	Planned           = move.Planned
	PreCopying        = move.PreCopying
	WaitingForPod     = move.WaitingForPod
	CatchingUp        = move.CatchingUp
	Rebinding         = move.Rebinding
	Cleaning          = move.Cleaning
	Done              = move.Done
	RollingBack       = move.RollingBack
	OrderImport       = move.OrderImport
	OrderFence        = move.OrderFence
	OrderUnfence      = move.OrderUnfence
	OrderCatchUp      = move.OrderCatchUp
	OrderDrop         = move.OrderDrop
	Unknown           = move.Unknown
	Running           = move.Running
	Finished          = move.Finished
	Failed            = move.Failed
)
