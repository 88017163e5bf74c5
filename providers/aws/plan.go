package aws

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"
)

// Planning at admission. A review only plans: it answers with the role the ServiceAccount will
// get and writes nothing (a review body proves nothing about who sent it; the write happens once
// the ServiceAccount is seen persisted, see package sweeper's Writer). To make the plan come
// true, the answer reserves room in that role for a short while, so a burst of reviews spreads
// over roles as the writer will place them, and the writer places a subject in its reserved role
// whenever it still fits there. A plan that cannot come true (the reservation expired, another
// replica filled the role) is corrected by the writer, which sets the real role ARN.

// reservationTTL bounds how long a plan holds room: the writer normally acts within a second of
// the ServiceAccount's creation; a plan whose object never got persisted (refused later in the
// admission chain, or a forged review) frees its room after this.
const reservationTTL = 30 * time.Second

// maxReservations bounds reservations per seed, so a flood of forged reviews cannot make plans
// point ever further out; beyond it, plans ignore the oldest.
const maxReservations = 4096

// planViewMaxAge is how old a published view may get before a review starts reading the roles
// again (in the background: the review plans on the view it has). The sweeper leader publishes
// after every round it writes, so this matters for a replica that does not write: it loaded its
// view once, and while the leader filled the roles it kept planning subjects into roles that had
// long been full, for as long as it ran. A steady KubeStash load fills a role of 15 in seconds,
// and a plan that misses gives a Pod created from the ServiceAccount before the writer corrects
// the annotation a role that will never trust it. It costs one ListRoles per seed this often,
// while reviews come.
const planViewMaxAge = 5 * time.Second

// planRefreshGap is the least time between two background refreshes of any seeds' views on one
// replica: reviews, forged ones included, name any allowed seed, and every refresh lists the
// seed's path in IAM, whose throttling is per account.
const planRefreshGap = time.Second

// planRefreshTimeout bounds a background refresh of the view; it no longer serves the review
// that started it.
const planRefreshTimeout = 30 * time.Second

// planView is what a lock session left behind, for planning without the lock.
type planView struct {
	roles []RoleView // an immutable copy taken at the end of a lock session
	seed  *roleSpec  // nil until a session read the seed
}

type reservation struct {
	index int
	until time.Time
}

// planner holds a seed's published view and its reservations. Its mutex is never held across
// an IAM or Kubernetes call, so planning never waits for a writer's lock session.
type planner struct {
	mu           sync.Mutex
	view         *planView
	refreshAfter time.Time // when a review should read the roles again (viewOf)
	refreshing   bool      // a background refresh of view runs (refreshView)
	loadErr      error     // why the first read of the view failed, until loadRetryAt
	loadRetryAt  time.Time
	reserved     map[string]reservation // subject -> planned role index
}

// publish replaces the view; called with the seed's session semaphore held.
func (st *seedState) publish(now time.Time) {
	v := &planView{roles: st.views(), seed: st.spec}
	st.plan.mu.Lock()
	st.plan.view, st.plan.refreshAfter = v, now.Add(planViewMaxAge)
	st.plan.settle(v)
	st.plan.mu.Unlock()
}

// settle drops the reservations of subjects that v lists in one of the seed's roles: from now
// on the view counts them, where they really are. Called with mu held whenever a view is
// installed. A reservation used to be dropped when its subject's write returned, while the view
// was published only once the round's writes had all returned (up to a second with IAM's
// latency and a throttled retry): in between the subject was counted nowhere, its role looked as
// roomy as before the write, and admission planned others into room that was gone (e2e
// BenchmarkFlowCreationToTrust with one replica: 468 to 832 of 1,000 plans missed).
func (p *planner) settle(v *planView) {
	if len(p.reserved) == 0 {
		return
	}
	// One map delete per listed subject (about a thousand for a full seed), whatever the
	// reservations number: a flood of forged reviews holds up to maxReservations.
	for _, r := range v.roles {
		if !r.Foreign {
			for _, sub := range r.Trust.subjects {
				delete(p.reserved, sub)
			}
		}
	}
}

// hints are the role indexes planned for subjects that hold a live reservation: the writer tries
// them first, and creates a planned role that does not exist yet (PlaceOptions.Hints). A
// reservation lives until a published view lists its subject (settle) or reservationTTL.
func (st *seedState) hints(subjects []string, now time.Time) map[string]int {
	st.plan.mu.Lock()
	defer st.plan.mu.Unlock()
	var out map[string]int
	for _, sub := range subjects {
		if r, ok := st.plan.reserved[sub]; ok && !now.After(r.until) {
			if out == nil {
				out = map[string]int{}
			}
			out[sub] = r.index
		}
	}
	return out
}

// Plan says where the subject goes, without writing anything or reserving (dryRun). known is
// true when the subject is already listed. The answer is advisory: another replica may have
// written since this replica's last lock session.
func (a *Assigner) Plan(ctx context.Context, seed RoleARN, namespace, name string) (roleARN string, known bool, err error) {
	return a.plan(ctx, seed, namespace, name, false)
}

// Reserve plans like Plan and holds room for the subject in the planned role for a short while;
// Assign then places the subject there when it still fits. It makes no IAM write, and IAM reads
// only the first time this process looks at the seed (the review waits for them) and, in the
// background, when the view it plans on is older than planViewMaxAge (viewOf).
func (a *Assigner) Reserve(ctx context.Context, seed RoleARN, namespace, name string) (roleARN string, known bool, err error) {
	return a.plan(ctx, seed, namespace, name, true)
}

func (a *Assigner) plan(ctx context.Context, seed RoleARN, namespace, name string, reserve bool) (string, bool, error) {
	subject, err := Subject(namespace, name)
	if err != nil {
		return "", false, err
	}
	if err := a.allowed(seed); err != nil {
		return "", false, err
	}
	st, err := a.planState(seed)
	if err != nil {
		return "", false, err
	}
	view, err := a.viewOf(ctx, seed, st)
	if err != nil {
		return "", false, err
	}
	quota := a.quotaFor(ctx)
	now := a.now()
	st.plan.mu.Lock()
	defer st.plan.mu.Unlock()
	if r, ok := st.plan.reserved[subject]; ok && now.Before(r.until) {
		arn, err := Derived(seed, r.index)
		if err != nil {
			return "", false, err
		}
		if reserve {
			r.until = now.Add(reservationTTL)
			st.plan.reserved[subject] = r
		}
		return arn.String(), false, nil
	}
	live := liveReservations(st.plan.reserved, now)
	opt := PlaceOptions{Reserved: live}
	if view.seed != nil {
		opt.Seed = &view.seed.trust
	}
	d := Place(view.roles, []string{subject}, quota, a.cfg.RoleCreationLimit, opt).Decisions[0]
	if d.Err != nil {
		return "", false, fmt.Errorf("planning %s in a derived role of %s: %w", subject, seed, d.Err)
	}
	idx, known := d.Index, d.Listed
	arn, err := Derived(seed, idx)
	if err != nil {
		return "", false, err
	}
	// A new role planned without the seed (a view published by a session that never read it)
	// is unmeasured: reserving its index would give every such plan an index of its own, and
	// the writer creates a planned role at its index (Place, hintedNew). Unreserved, these plans
	// all name the lowest free index, which the writer fills in order.
	if reserve && !known && (view.seed != nil || !d.Creates) {
		if st.plan.reserved == nil {
			st.plan.reserved = map[string]reservation{}
		}
		if len(live) >= maxReservations {
			dropOldest(st.plan.reserved)
		}
		st.plan.reserved[subject] = reservation{index: idx, until: now.Add(reservationTTL)}
	}
	return arn.String(), known, nil
}

// maxPlanSeeds bounds the seeds a replica keeps state for on behalf of reviews alone. A review
// proves nothing (anyone on the pod network can send one), and an allowlist with a glob admits
// any number of seed names: without a bound, forged reviews naming new ones grew memory without
// end. Past it, a review for a seed this replica never saw gets an error (its claim stays
// pending and the writer, acting for persisted ServiceAccounts only, finishes it).
const maxPlanSeeds = 256

// planLoadRetry is how long a seed whose first read failed is not read again for reviews: a
// forged review naming an allowed seed that IAM does not have cost a GetRole every time (and a
// ListRoles, until one succeeded).
const planLoadRetry = 10 * time.Second

// planState is state(seed) for admission: only for seeds known, or within maxPlanSeeds.
func (a *Assigner) planState(seed RoleARN) (*seedState, error) {
	a.mu.Lock()
	_, known := a.seeds[seed.String()]
	full := !known && len(a.seeds) >= a.maxPlanSeeds
	a.mu.Unlock()
	if full {
		return nil, fmt.Errorf("%w: this replica plans for at most %d seeds; %s is not one of them yet", ErrTooManySeeds, a.maxPlanSeeds, seed)
	}
	return a.state(seed), nil
}

// viewOf returns the seed's published view, loading it (under the seed's semaphore, without the
// distributed lock: reads only) the first time. A view older than planViewMaxAge is returned as
// it is, and read again in the background for the reviews after this one, one refresh per seed
// at a time and one a planRefreshGap per replica.
func (a *Assigner) viewOf(ctx context.Context, seed RoleARN, st *seedState) (*planView, error) {
	now := a.now()
	st.plan.mu.Lock()
	v := st.plan.view
	stale := v != nil && !st.plan.refreshing && now.After(st.plan.refreshAfter) && a.mayRefresh(now)
	if stale {
		st.plan.refreshing = true
	}
	st.plan.mu.Unlock()
	if stale {
		go a.refreshView(context.WithoutCancel(ctx), seed, st, v)
	}
	if v != nil {
		return v, nil
	}
	st.plan.mu.Lock()
	failed, retryAt := st.plan.loadErr, st.plan.loadRetryAt
	st.plan.mu.Unlock()
	if failed != nil && now.Before(retryAt) {
		return nil, fmt.Errorf("seed %s could not be read, not read again for %v: %w", seed, retryAt.Sub(now).Round(time.Second), failed)
	}
	release, err := st.acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("waiting for seed %s: %w", seed, err)
	}
	defer release()
	if err := a.loadView(ctx, seed, st); err != nil {
		st.plan.mu.Lock()
		st.plan.loadErr, st.plan.loadRetryAt = err, a.now().Add(planLoadRetry)
		st.plan.mu.Unlock()
		return nil, err
	}
	st.plan.mu.Lock()
	defer st.plan.mu.Unlock()
	return st.plan.view, nil
}

// loadView reads the seed's roles (unless cached) and the seed, and publishes them; called with
// the seed's semaphore held.
func (a *Assigner) loadView(ctx context.Context, seed RoleARN, st *seedState) error {
	s := a.newSession(seed, st, false) // reads only: no lock held, so writes are refused
	if !st.loaded {
		if err := s.refresh(ctx); err != nil {
			return err
		}
		st.gen = -1 // loaded without the lock: the next session reloads
	}
	if _, err := s.seedSpec(ctx); err != nil {
		return err
	}
	st.publish(a.now())
	return nil
}

// mayRefresh reports whether a background refresh may start now (planRefreshGap), and counts it.
func (a *Assigner) mayRefresh(now time.Time) bool {
	a.refreshMu.Lock()
	defer a.refreshMu.Unlock()
	if !a.lastRefresh.IsZero() && now.Sub(a.lastRefresh) < planRefreshGap {
		return false
	}
	a.lastRefresh = now
	return true
}

// refreshView reads the seed's roles into a scratch state, as Roles does, and publishes them in
// place of old, for viewOf. It leaves the seed's cache alone: on the writer, the cache holds its
// own latest writes at a known generation, and an eventually consistent read must not replace
// them (nor make the next lock session list the roles again), so no semaphore either. When a lock
// session published while this read, its view is the newer one and stays. Roles the lock
// sessions found foreign stay so (ownership is read only under the lock). A failed read keeps
// old, and is tried again after planViewMaxAge.
func (a *Assigner) refreshView(ctx context.Context, seed RoleARN, st *seedState, old *planView) {
	ctx, cancel := context.WithTimeout(ctx, planRefreshTimeout)
	defer cancel()
	var v *planView
	defer func() {
		if p := recover(); p != nil { // no server recovery on this goroutine: keep the process
			a.log.Error("reading the derived roles again for planning panicked; plans use the previous view", "seed", seed.String(), "panic", p)
		}
		st.plan.mu.Lock()
		defer st.plan.mu.Unlock()
		st.plan.refreshing = false
		st.plan.refreshAfter = a.now().Add(planViewMaxAge)
		if v != nil && st.plan.view == old {
			st.plan.view = v
			st.plan.settle(v)
		}
	}()
	scratch := &seedState{}
	s := a.newSession(seed, scratch, false)
	s.known = a.publishedTrust(seed) // a document unchanged since is not parsed again
	if err := s.refresh(ctx); err != nil {
		a.log.Warn("reading the derived roles again for planning failed; plans use the previous view", "seed", seed.String(), "err", err)
		return
	}
	roles := scratch.views()
	for i, r := range roles {
		if slices.ContainsFunc(old.roles, func(o RoleView) bool { return o.Index == r.Index && o.Foreign }) {
			roles[i].Foreign = true
		}
	}
	v = &planView{roles: roles, seed: old.seed}
}

// liveReservations drops expired reservations from m and returns the live ones by role index.
func liveReservations(m map[string]reservation, now time.Time) map[int][]string {
	out := map[int][]string{}
	for sub, r := range m {
		if now.After(r.until) {
			delete(m, sub)
			continue
		}
		out[r.index] = append(out[r.index], sub)
	}
	return out
}

func dropOldest(m map[string]reservation) {
	var oldest string
	var at time.Time
	for sub, r := range m {
		if oldest == "" || r.until.Before(at) {
			oldest, at = sub, r.until
		}
	}
	delete(m, oldest)
}

// Expect tells the writer which role admission planned for namespace/name: the role ARN the
// persisted ServiceAccount carries. The lock session then places the subject there when it
// still fits (PlaceOptions.Hints), as for a plan made on this replica. The sweeper leader writes
// every pending ServiceAccount, so the plan was often made on another replica, whose reservation
// this one never saw; without the hint the writer placed such subjects by first fit and
// corrected their annotation. The annotation is the ServiceAccount owner's to edit, which is
// harmless here: it only picks among the seed's derived roles, which all carry the seed's
// permissions, and only a role with room. A plan made on this replica wins, and nothing is
// recorded for a seed that is not allowed, or for a role that is not one of its derived roles in
// the published view (a reservation for a role that does not exist would steer other plans to
// that index for as long as it lives).
func (a *Assigner) Expect(seed RoleARN, namespace, name, roleARN string) {
	subject, err := Subject(namespace, name)
	if err != nil || a.allowed(seed) != nil {
		return
	}
	role, err := ParseRoleARN(roleARN)
	if err != nil {
		return
	}
	idx, ok := DerivedIndex(role, seed)
	if !ok {
		return
	}
	st := a.state(seed)
	now := a.now()
	st.plan.mu.Lock()
	defer st.plan.mu.Unlock()
	if r, ok := st.plan.reserved[subject]; ok && !now.After(r.until) {
		return
	}
	if v := st.plan.view; v == nil || !slices.ContainsFunc(v.roles, func(r RoleView) bool { return r.Index == idx && !r.Foreign && !r.Broken }) {
		return
	}
	if st.plan.reserved == nil {
		st.plan.reserved = map[string]reservation{}
	}
	if len(st.plan.reserved) >= maxReservations {
		dropOldest(st.plan.reserved)
	}
	st.plan.reserved[subject] = reservation{index: idx, until: now.Add(reservationTTL)}
}
