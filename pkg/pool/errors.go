package pool

import "errors"

// Sentinel errors of the storage domain. The CSI layer maps them to gRPC codes
// in one place; nothing in this package knows about gRPC.
var (
	// ErrNotFound: no volume with that ID (or name) exists in the pool.
	ErrNotFound = errors.New("volume not found")
	// ErrAlreadyExists: a volume with that name exists and is incompatible.
	ErrAlreadyExists = errors.New("volume exists with different parameters")
	// ErrNoSpace: the pool cannot hold the requested bytes.
	ErrNoSpace = errors.New("not enough space in pool")
	// ErrInvalid: a malformed ID, name or argument.
	ErrInvalid = errors.New("invalid argument")
	// ErrInProgress: another create, delete or expansion of the volume is
	// under way.
	ErrInProgress = errors.New("operation on the volume in progress")
	// ErrOutOfRange: a capacity range that cannot be met.
	ErrOutOfRange = errors.New("capacity range cannot be satisfied")
)

// ErrInUse: the volume's storage is mounted or open.
var ErrInUse = errors.New("volume in use")

// ErrStorageMissing: a volume's metadata exists but its storage does not.
var ErrStorageMissing = errors.New("volume storage missing")
