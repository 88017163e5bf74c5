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

// planRefreshTimeout bounds a background refresh of the view; it no longer serves the review
// that started it.
const planRefreshTimeout = 30 * time.Second

// planView is what a lock session left behind, for planning without the lock.
type planView struct {
	roles []RoleView // an immutable copy taken at the end of a lock session
	seed  *roleSpec  // nil until a session read the seed
	at    time.Time  // when it was published (Config.Clock); guarded by planner.mu
}

type reservation struct {
	index int
	until time.Time
}

// planner holds a seed's published view and its reservations. Its mutex is never held across
// an IAM or Kubernetes call, so planning never waits for a writer's lock session.
type planner struct {
	mu         sync.Mutex
	view       *planView
	refreshing bool                   // a background refresh of view runs (refreshView)
	reserved   map[string]reservation // subject -> planned role index
}

// publish replaces the view; called with the seed's session semaphore held.
func (st *seedState) publish(now time.Time) {
	v := &planView{roles: st.views(), seed: st.spec, at: now}
	st.plan.mu.Lock()
	st.plan.view = v
	st.plan.mu.Unlock()
}

// hints are the role indexes planned for subjects that hold a live reservation: the writer tries
// them first (PlaceOptions.Hints).
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

// placed drops the reservations of subjects that were written.
func (st *seedState) placed(subjects []string) {
	st.plan.mu.Lock()
	defer st.plan.mu.Unlock()
	for _, s := range subjects {
		delete(st.plan.reserved, s)
	}
}

// Plan says where the subject goes, without writing anything or reserving (dryRun). known is
// true when the subject is already listed. The answer is advisory: another replica may have
// written since this replica's last lock session.
func (a *Assigner) Plan(ctx context.Context, seed RoleARN, namespace, name string) (roleARN string, known bool, err error) {
	return a.plan(ctx, seed, namespace, name, false)
}

// Reserve plans like Plan and holds room for the subject in the planned role for a short while;
// Assign then places the subject there when it still fits. It makes IAM reads only when this
// process has never looked at the seed, and no IAM write.
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
	st := a.state(seed)
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
	if reserve && !known {
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

// viewOf returns the seed's published view, loading it (under the seed's semaphore, without the
// distributed lock: reads only) the first time. A view older than planViewMaxAge is returned as
// it is, and read again in the background for the reviews after this one.
func (a *Assigner) viewOf(ctx context.Context, seed RoleARN, st *seedState) (*planView, error) {
	st.plan.mu.Lock()
	v := st.plan.view
	stale := v != nil && !st.plan.refreshing && a.now().Sub(v.at) > planViewMaxAge
	if stale {
		st.plan.refreshing = true
	}
	st.plan.mu.Unlock()
	if stale {
		go a.refreshView(context.WithoutCancel(ctx), seed, st)
	}
	if v != nil {
		return v, nil
	}
	release, err := st.acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("waiting for seed %s: %w", seed, err)
	}
	defer release()
	if err := a.loadView(ctx, seed, st, false); err != nil {
		return nil, err
	}
	st.plan.mu.Lock()
	defer st.plan.mu.Unlock()
	return st.plan.view, nil
}

// loadView reads the seed's roles (when reload, or not cached) and the seed, and publishes them;
// called with the seed's semaphore held.
func (a *Assigner) loadView(ctx context.Context, seed RoleARN, st *seedState, reload bool) error {
	s := a.newSession(seed, st, false) // reads only: no lock held, so writes are refused
	if reload || !st.loaded {
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

// refreshView reads the roles again and publishes them, for viewOf. When a lock session
// published while this waited for the semaphore, there is nothing to do. A failed read leaves the
// old view (plans are advisory: the writer corrects them) and is retried by the first review
// after another planViewMaxAge.
func (a *Assigner) refreshView(ctx context.Context, seed RoleARN, st *seedState) {
	ctx, cancel := context.WithTimeout(ctx, planRefreshTimeout)
	defer cancel()
	defer func() {
		st.plan.mu.Lock()
		st.plan.refreshing = false
		st.plan.mu.Unlock()
	}()
	release, err := st.acquire(ctx)
	if err != nil {
		return
	}
	defer release()
	st.plan.mu.Lock()
	fresh := a.now().Sub(st.plan.view.at) <= planViewMaxAge
	st.plan.mu.Unlock()
	if fresh {
		return
	}
	if err := a.loadView(ctx, seed, st, true); err != nil {
		a.log.Warn("reading the derived roles again for planning failed; plans use the previous view", "seed", seed.String(), "err", err)
		st.plan.mu.Lock()
		st.plan.view.at = a.now() // not again before planViewMaxAge
		st.plan.mu.Unlock()
	}
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
