package driver

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flashpv/flashpv/pkg/diskformat"
	"github.com/flashpv/flashpv/pkg/loopdev"
	"github.com/flashpv/flashpv/pkg/mounter"
	"github.com/flashpv/flashpv/pkg/pool"
)

// Errors of the node and controller logic; pool.Err* cover the storage domain.
var (
	errAborted      = errors.New("operation in progress")
	errPrecondition = errors.New("failed precondition")
	errNotThisNode  = errors.New("topology does not include this node")
	errTooMany      = errors.New("volume limit of this node reached")
	errUnsupported  = errors.New("not supported")
)

// toStatus is the one place where errors become gRPC status codes.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	code := codes.Internal
	switch {
	case errors.Is(err, pool.ErrInvalid), errors.Is(err, errUnsupported), errors.Is(err, mounter.ErrOption):
		code = codes.InvalidArgument
	case errors.Is(err, pool.ErrInProgress):
		code = codes.Aborted
	case errors.Is(err, pool.ErrNotFound):
		code = codes.NotFound
	case errors.Is(err, pool.ErrAlreadyExists):
		code = codes.AlreadyExists
	case errors.Is(err, pool.ErrNoSpace), errors.Is(err, errNotThisNode), errors.Is(err, errTooMany):
		code = codes.ResourceExhausted
	case errors.Is(err, pool.ErrOutOfRange):
		code = codes.OutOfRange
	case errors.Is(err, errAborted):
		code = codes.Aborted
	case errors.Is(err, diskformat.ErrNewer):
		// Before ErrUnusable: a pool refused for a newer format is no
		// outage that waiting ends, only a binary that reads it.
		code = codes.FailedPrecondition
	case errors.Is(err, pool.ErrUnusable):
		code = codes.Unavailable
	case errors.Is(err, errPrecondition), errors.Is(err, loopdev.ErrBusy), errors.Is(err, pool.ErrInUse),
		errors.Is(err, pool.ErrStorageMissing), errors.Is(err, mounter.ErrBusy),
		errors.Is(err, mounter.ErrNeedsOperator), errors.Is(err, mounter.ErrCannotGrowOnline):
		code = codes.FailedPrecondition
	case errors.Is(err, context.Canceled):
		code = codes.Canceled
	case errors.Is(err, context.DeadlineExceeded):
		code = codes.DeadlineExceeded
	}
	return status.Error(code, err.Error())
}
