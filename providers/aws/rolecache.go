package aws

import (
	"context"
	"slices"
	"sync"
	"time"
)

// SeedTTL bounds how long a replica uses its copy of a seed (trust statements, policies) before
// reading it again: the seed is read when a role is created or completed, so without an expiry a
// change to the seed would reach new roles only after a restart. The leader's garbage collection
// re-reads every seed on each full pass anyway (SyncFromSeed), and repairs existing roles then.
const SeedTTL = 10 * time.Minute

// ForeignRecheck is how long a replica believes its finding that a role named like a derived
// role is not ours (it lacks the seed tag). After that the finding is forgotten and the role read
// again when placement or garbage collection needs it (one GetRole), so a role an administrator
// has since adopted (credential-webhook roles adopt) is used without a restart.
const ForeignRecheck = SeedTTL

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
	draining bool          // a goroutine runs sessions until queue is empty
	arrived  chan struct{} // signalled (without blocking) whenever a request is queued

	sem    chan struct{}
	loaded bool
	gen    int64 // generation the cache matches; -1 when loaded outside a lock
	roles  []*roleState
	spec   *roleSpec // the seed's permissions, read on first need; see seedSpec
	specAt time.Time // when spec was read: it expires after SeedTTL

	// plan is what admission plans from (see plan.go); it has its own mutex.
	plan planner
}

type roleState struct {
	index    int
	arn      RoleARN
	id       string
	trust    TrustPolicy
	owner    ownership
	complete bool // its permissions were checked (or made) to include the seed's, in this process
	// attach is the attaching of the seed's policies to a role this process just created, which
	// runs while the lock session's next rounds place subjects (session.attachNew); nil otherwise.
	attach *attachment
	bad    error // its trust policy could not be parsed: never written to
	mark   emptyMark
	// foreignAt is when the role was last found foreign (owner ownerOther); zero keeps that
	// finding for good (a derived name taken under another path, see session.adopt).
	foreignAt time.Time
}

// emptyMark is what this replica last read of a role's EmptySinceTag. It is not carried over a
// refresh: another replica may have changed it.
type emptyMark struct {
	known bool      // the role's tags were read (or written) in this cache's lifetime
	since time.Time // zero: no mark
}

// markOf reads the mark in tags. An unreadable value counts as no mark: the role is marked again,
// which only postpones its deletion.
func markOf(tags map[string]string) emptyMark {
	m := emptyMark{known: true}
	if v, ok := tags[EmptySinceTag]; ok {
		if t, err := time.Parse(time.RFC3339, v); err == nil {
			m.since = t
		}
	}
	return m
}

// seed is the cached seed while it is younger than SeedTTL, nil otherwise.
func (st *seedState) seed(now time.Time) *roleSpec {
	if st.spec == nil || now.Sub(st.specAt) >= SeedTTL || now.Before(st.specAt) {
		return nil
	}
	return st.spec
}

func (st *seedState) setSeed(spec *roleSpec, now time.Time) {
	st.spec, st.specAt = spec, now
}

// reservedIndexes are the roles admission has live reservations in: a subject was promised a
// place there and the writer is about to put it in (or has, and the view that lists it is not
// published yet: settle).
func (st *seedState) reservedIndexes(now time.Time) map[int]bool {
	st.plan.mu.Lock()
	defer st.plan.mu.Unlock()
	out := map[int]bool{}
	for _, r := range st.plan.reserved {
		if !now.After(r.until) {
			out[r.index] = true
		}
	}
	return out
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

// expireForeign forgets, for every role found foreign at least recheck ago, that it is: the next
// session reads it again before using it. It reports whether it forgot any.
func (st *seedState) expireForeign(now time.Time, recheck time.Duration) bool {
	forgot := false
	for _, r := range st.roles {
		if r.owner == ownerOther && !r.foreignAt.IsZero() && now.Sub(r.foreignAt) >= recheck {
			r.owner = ownerUnknown
			forgot = true
		}
	}
	return forgot
}

// views is the cache as placement sees it.
func (st *seedState) views() []RoleView {
	out := make([]RoleView, 0, len(st.roles))
	for _, r := range st.roles {
		out = append(out, RoleView{Index: r.index, Trust: r.trust, Foreign: r.owner == ownerOther, Broken: r.bad != nil})
	}
	return out
}
