package pool

import (
	"context"
	"fmt"
)

// Usable tells whether p is a real pool, not a stand-in for an unusable one.
func Usable(p Pool) bool {
	_, unusable := p.(*Unusable)
	return !unusable
}

// Unusable stands in for a pool that could not be opened because its storage
// is not set up right: every operation fails with the reason, which health
// checks report, while the driver keeps serving its other pools.
type Unusable struct {
	name string
	kind Kind
	err  error
}

// NewUnusable records why pool name of kind cannot be used.
func NewUnusable(name string, kind Kind, err error) *Unusable {
	return &Unusable{name: name, kind: kind, err: err}
}

func (u *Unusable) fail() error                 { return fmt.Errorf("%w: pool %s: %w", ErrUnusable, u.name, u.err) }
func (u *Unusable) Name() string                { return u.name }
func (u *Unusable) Kind() Kind                  { return u.kind }
func (u *Unusable) Get(string) (*Volume, error) { return nil, u.fail() }
func (u *Unusable) GetByName(string) (*Volume, error) {
	return nil, fmt.Errorf("%w: pool %s is unusable", ErrNotFound, u.name)
}
func (u *Unusable) List() ([]*Volume, error) { return nil, nil }
func (u *Unusable) Layout() Layout           { return Layout{} }
func (u *Unusable) Create(context.Context, Spec) (*Volume, bool, error) {
	return nil, false, u.fail()
}
func (u *Unusable) Delete(context.Context, string) error { return u.fail() }
func (u *Unusable) Expand(context.Context, string, int64) (*Volume, error) {
	return nil, u.fail()
}
func (u *Unusable) SetNodeState(context.Context, string, NodeState) (*Volume, error) {
	return nil, u.fail()
}
func (u *Unusable) Capacity(context.Context) (Capacity, error)            { return Capacity{}, nil }
func (u *Unusable) Probe(context.Context) error                           { return u.fail() }
func (u *Unusable) Check(context.Context, []*Volume) map[string][]Problem { return nil }
func (u *Unusable) Close() error                                          { return nil }
