package aws

import (
	"context"
	"slices"
	"sync"
)

type ownership int8

const (
	ownerUnknown ownership = iota
	ownerUs
	ownerOther
)

// seedState is what this replica knows of one seed between lock sessions: the cache of its
// derived roles, guarded by sem (held for a whole session), and the queue of Assign calls
// waiting for the next session (guarded by qmu, see queue.go).
type seedState struct {
	qmu      sync.Mutex
	queue    []*assignReq
	draining bool // a goroutine runs sessions until queue is empty

	sem    chan struct{}
	loaded bool
	gen    int64 // generation the cache matches; -1 when loaded outside a lock
	roles  []*roleState
	spec   *roleSpec // the seed's permissions, read on first need

	// plan is what admission plans from (see plan.go); it has its own mutex.
	plan planner
}

type roleState struct {
	index    int
	arn      RoleARN
	id       string
	trust    TrustPolicy
	owner    ownership
	complete bool  // its permissions were checked (or made) to include the seed's, in this process
	bad      error // its trust policy could not be parsed: never written to
}

func (st *seedState) acquire(ctx context.Context) (func(), error) {
	select {
	case st.sem <- struct{}{}:
		return func() { <-st.sem }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (st *seedState) insert(r *roleState) {
	i, _ := slices.BinarySearchFunc(st.roles, r.index, func(x *roleState, idx int) int { return x.index - idx })
	st.roles = slices.Insert(st.roles, i, r)
}

// role is the cached role at index idx, nil when there is none.
func (st *seedState) role(idx int) *roleState {
	i, ok := slices.BinarySearchFunc(st.roles, idx, func(x *roleState, idx int) int { return x.index - idx })
	if !ok {
		return nil
	}
	return st.roles[i]
}

// views is the cache as placement sees it.
func (st *seedState) views() []RoleView {
	out := make([]RoleView, 0, len(st.roles))
	for _, r := range st.roles {
		out = append(out, RoleView{Index: r.index, Trust: r.trust, Foreign: r.owner == ownerOther, Broken: r.bad != nil})
	}
	return out
}
