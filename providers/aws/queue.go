package aws

import (
	"context"
	"slices"
	"sync/atomic"
	"time"
)

// assignReq is one Assign waiting for its subject to be placed.
type assignReq struct {
	ctx     context.Context
	subject string
	queued  time.Time         // machine clock: how long it has waited (Config.BatchLinger)
	done    chan assignResult // buffered: the drainer never blocks on a caller that left
}

type assignResult struct {
	a   Assignment
	err error
	// wait: the answer waits for the role's policies to be attached (a role this session
	// created), and carries that error if attaching failed.
	wait *attachment
}

// DefaultBatchLinger is --aws-batch-linger: a subject queued longer ago than that is never held
// back (holdBack), so holding adds at most that to the wait of the subjects that would have
// left a role part full, and nothing to the others. A second: at 50 to 90 new ServiceAccounts a
// second a role of 15 fills in 200 to 500 ms, and with 500 ms one role in ten still ran out of
// time, was created part full and had its trust policy written a second time.
const DefaultBatchLinger = time.Second

// maxBatchWait bounds a batch whose callers have no deadline.
const maxBatchWait = 2 * time.Minute

// drain runs lock sessions for st's queue until it is empty. One drainer runs per seed. The
// batch is taken once the locks are held, so everyone who queued while the previous session or
// the wait for the Lease went on is placed in this session. A session keeps the lock for as long
// as subjects keep arriving (each round places what queued while the previous one wrote) and
// releases it when a round finds the queue empty. Once the hold is old enough that a round
// might outlive it (holdRounds), the session renews the lock if subjects still queue (renew),
// up to maxRenewedHold after the take, else ends: a burst costs one Lease take and release, a
// renewal per 10 s, and one reload at most, instead of one per round, and what arrives during
// a round joins the next write at once instead of waiting for the Lease to be released and
// taken again.
func (a *Assigner) drain(seed RoleARN, st *seedState) {
	for {
		early := st.take(false)
		if len(early) == 0 {
			return
		}
		lockCtx, cancelLock := batchContext(early, time.Time{})
		s, done, err := a.begin(lockCtx, seed)
		locked := time.Now()
		if err != nil {
			cancelLock()
			st.remove(early)
			for _, r := range early {
				r.done <- assignResult{err: err}
			}
			continue
		}
		var until, lastRound time.Time
		limit, limited := a.locker.(holdLimiter)
		hold := func(from time.Time) {
			until = from.Add(limit.HoldLimit() * 2 / 3)
			lastRound = from.Add(min(limit.HoldLimit()/holdRounds, maxRoundsHold))
		}
		if limited {
			hold(locked)
		}
		var placed time.Time // when the last round's placement returned, before it answered
		for rounds := 0; ; rounds++ {
			if rounds > 0 && !lastRound.IsZero() && time.Now().After(lastRound) {
				at, renewed := a.renew(seed, st, locked)
				if !renewed {
					break // what is queued is taken by the next session
				}
				hold(at)
				// No round starts past maxRenewedHold after the take, whatever the renewal.
				if end := locked.Add(a.maxRenewedHold); end.Before(lastRound) {
					lastRound = end
				}
			}
			batch := st.take(true)
			lull := startsLull(batch, placed) // no burst under way: hold only what would create a role
			if len(batch) == 0 {
				batch = s.awaitTail(st) // queued while new roles' policies were being attached
				lull = true
			}
			batch = s.holdBack(st, batch, a.cfg.BatchLinger, lull)
			if len(batch) == 0 {
				break
			}
			placed = a.assignBatch(s, batch, until)
			a.rounds.Add(1)
			st.publish(a.now()) // admission plans from what this round wrote
		}
		s.tail.Wait() // policies still being attached are written under the lock too
		done()
		cancelLock()
	}
}

// DefaultMaxRenewedHold bounds how long after taking a seed's lock a writer still starts rounds
// by renewing it (renew); the last round then ends within two thirds of the hold limit after the
// last renewal (its context), and the session releases the lock. The garbage collection of the
// seed on this replica (beginSession, first come first served behind the session) so waits at most
// that and a round, even while a burst goes on. Another replica waiting for the Lease may still
// lose the race for it to this writer's next session, as before renewals: the sweeper leader's
// writer is the only one that writes in normal operation.
const DefaultMaxRenewedHold = 30 * time.Second

// Renewer is a Locker whose hold can be extended without releasing it (kube.LeaseLocker.Renew):
// the new hold starts at the time returned.
type Renewer interface {
	Renew(ctx context.Context, key string) (time.Time, error)
}

// renew extends the session's hold of seed's lock, taken at locked, when its rounds would
// otherwise end (lastRound) with subjects still queued, the locker can renew, and the lock was
// taken less than maxRenewedHold ago. Without it, every 10 s of a burst (the lock's default 30 s
// hold limit over holdRounds) the writer waited for the tail, released the Lease and took it
// again, two apiserver calls in a row, while subjects queued: 0.9 to 1.3 s at 100 ms of IAM
// latency on a busy apiserver, and the subjects of that gap were the burst's p99 from creation to
// trust (e2e BenchmarkFlowCreationToTrust). A renewal is one call, and the tail goes on meanwhile.
// The locker bounds the call by what is left of the hold (kube.LeaseLocker.Renew), renewTimeout
// by a stuck apiserver.
func (a *Assigner) renew(seed RoleARN, st *seedState, locked time.Time) (time.Time, bool) {
	r, ok := a.locker.(Renewer)
	if !ok || time.Since(locked) >= a.maxRenewedHold || st.queued() == 0 {
		return time.Time{}, false
	}
	ctx, cancel := context.WithTimeout(context.Background(), renewTimeout)
	defer cancel()
	at, err := r.Renew(ctx, seed.String())
	if err != nil {
		a.log.Warn("renewing the seed's lock failed; the session ends and the next one takes it again", "seed", seed.String(), "error", err)
		return time.Time{}, false
	}
	return at, true
}

// renewTimeout bounds a renewal's API call.
const renewTimeout = 5 * time.Second

// startsLull reports whether batch, taken after a round whose placement returned at placed (zero:
// the session's first round), starts a lull: none of it queued before then, so none of it came
// while a round wrote. In a burst, subjects queue during every round's IAM round trip; a
// caller that assigns one ServiceAccount after another queues only once its previous answer came,
// after placed. Counting every round but the first as a burst held such a caller's subject back
// whenever it queued before the drainer looked at the queue again (a race of microseconds):
// joining a role with room, it waited for arrivals that never came, the whole linger.
func startsLull(batch []*assignReq, placed time.Time) bool {
	for _, r := range batch {
		if r.queued.Before(placed) {
			return false
		}
	}
	return true
}

// awaitTail waits, with the queue empty, until the session's tail is done (nil: the session can
// end) or someone queues: they join this session in another round (the batch returned), instead
// of waiting for the tail and then for the next session.
func (s *session) awaitTail(st *seedState) []*assignReq {
	idle := s.tail.Idle()
	for {
		select {
		case <-idle:
			return nil
		case <-st.arrived:
			if batch := st.take(true); len(batch) > 0 {
				return batch
			}
		}
	}
}

// holdBack runs before every round of a session: it leaves out of batch the subjects that
// placement would put in a role left with room for another subject, queueing them again, so that
// the subjects arriving meanwhile fill the role and its trust policy is written once, full. In a
// round that starts a lull (a session's first, one of subjects that all queued after the previous
// round had placed its own: startsLull, or one of subjects that queued while the session had
// nothing left to place), only the subjects of new roles are held: a lone ServiceAccount
// joining a role that exists is written at once, and a burst's first round does not leave its
// new roles part full. A round lasts about one IAM round trip, and before this each round's last
// role was written half full and topped up by the next: 1.4 to 1.7 trust policy writes per role
// touched at 60 to 100 ServiceAccounts a second (e2e BenchmarkFlowCreationToTrust).
//
// A role's subjects are held back together, round after round, while every one of them is fresh:
// none queued linger ago (0: nothing is held back). When the whole batch would be held back the
// session waits for arrivals, until linger, instead of running an empty round. So holding adds
// at most linger to the wait of the subjects of a role left part full, and nothing to the others.
// (Holding a role back for one round at most, with a linger of 500 ms, still wrote 1.07 to 1.27
// trust policies per role at 50 to 90 new ServiceAccounts a second: a role takes 200 to 500 ms
// to fill at that rate, the informer delivers them in lumps, and a group that ran out of time
// was created part full and topped up by the next round.)
func (s *session) holdBack(st *seedState, batch []*assignReq, linger time.Duration, lull bool) []*assignReq {
	if linger <= 0 {
		return batch
	}
	for len(batch) > 0 {
		hold, oldest := s.freshOpen(batch, linger, lull)
		if len(hold) == 0 {
			return batch
		}
		var keep, held []*assignReq
		for _, r := range batch {
			if hold[r.subject] {
				held = append(held, r)
			} else {
				keep = append(keep, r)
			}
		}
		s.a.heldBack.Add(int64(len(held)))
		st.qmu.Lock()
		st.queue = append(held, st.queue...)
		st.qmu.Unlock()
		if len(keep) > 0 {
			return keep
		}
		t := time.NewTimer(time.Until(oldest.Add(linger)))
		select {
		case <-st.arrived:
		case <-t.C:
		}
		t.Stop()
		batch = st.take(true)
	}
	return batch
}

// freshOpen returns the subjects of batch that would go to a role left with room (openGroups)
// whose every subject is fresh (holdBack), and when the oldest of them was queued.
func (s *session) freshOpen(batch []*assignReq, linger time.Duration, newOnly bool) (hold map[string]bool, oldest time.Time) {
	subjects := batchSubjects(batch)
	now := time.Now()
	for _, g := range s.openGroups(subjects, newOnly) {
		fresh, first := true, now
		for _, r := range batch {
			if !slices.Contains(g, r.subject) {
				continue
			}
			if now.Sub(r.queued) >= linger {
				fresh = false // written now, the whole role: holding the rest would split it
				break
			}
			if r.queued.Before(first) {
				first = r.queued
			}
		}
		if !fresh {
			continue
		}
		if hold == nil {
			hold = map[string]bool{}
		}
		for _, sub := range g {
			hold[sub] = true
		}
		if oldest.IsZero() || first.Before(oldest) {
			oldest = first
		}
	}
	return hold, oldest
}

// openGroups returns, for every role (new or not) that placing subjects now would leave with
// room for another subject as long as the longest of them, the subjects it would get.
// Whatever placement cannot decide without I/O (the seed not read yet, a subject it refuses)
// holds nothing back: the round reads and answers it.
func (s *session) openGroups(subjects []string, newOnly bool) [][]string {
	now := s.a.now()
	spec := s.st.seed(now)
	if spec == nil {
		return nil
	}
	quota := s.a.quotaFor(context.Background()) // known once a round has run: no I/O
	pl := Place(s.st.views(), subjects, quota, s.a.cfg.RoleCreationLimit, PlaceOptions{Seed: &spec.trust, Hints: s.st.hints(subjects, now)})
	if pl.NeedSeed {
		return nil
	}
	probe := ""
	for _, d := range pl.Decisions {
		if d.Err != nil {
			return nil
		}
		if len(d.Subject) > len(probe) {
			probe = d.Subject
		}
	}
	probe += "~" // listed nowhere, and one character longer than any of them
	roomy := func(p TrustPolicy) bool {
		_, _, ok, err := Fit(p, probe, quota)
		return ok && err == nil
	}
	var open [][]string
	for _, c := range pl.Creates {
		if roomy(c.Trust) {
			open = append(open, c.Subjects)
		}
	}
	for _, w := range pl.Writes {
		if !newOnly && roomy(w.Trust) {
			open = append(open, w.Added)
		}
	}
	return open
}

// batchSubjects returns the subjects of batch once each (two callers may ask for one), in
// order. A map past a few: the search in the list was 4 % of the simulated month's CPU
// (benchtool sim, ~330 subjects a step).
func batchSubjects(batch []*assignReq) []string {
	subjects := make([]string, 0, len(batch))
	if len(batch) <= 16 {
		for _, r := range batch {
			if !slices.Contains(subjects, r.subject) {
				subjects = append(subjects, r.subject)
			}
		}
		return subjects
	}
	seen := make(map[string]bool, len(batch))
	for _, r := range batch {
		if !seen[r.subject] {
			seen[r.subject] = true
			subjects = append(subjects, r.subject)
		}
	}
	return subjects
}

// holdRounds: a session starts another round only within the first 1/holdRounds of the lock's
// hold limit:
// a round is bounded by two thirds of it (assignBatch), so a round started later would be cut
// short, and the lock is released and taken again instead.
const holdRounds = 3

// maxRoundsHold bounds how long a session keeps starting rounds even under a long hold limit,
// before it renews the lock (up to DefaultMaxRenewedHold) or ends. Between two sessions the
// writer waits for the last round's policies to be attached and takes the Lease again, 0.3 to
// 0.9 s at 100 ms of IAM latency, while subjects queue: at 2 s, a 15 s burst paid seven such
// gaps and they were most of its p99 from creation to trust (e2e BenchmarkFlowCreationToTrust).
const maxRoundsHold = 10 * time.Second

// take returns the requests whose callers still wait, dropping the others; clear also empties
// the queue. When nobody waits, the drainer's turn ends (under the same lock as enqueueing, so
// no request is left without a drainer).
func (st *seedState) take(clear bool) []*assignReq {
	st.qmu.Lock()
	defer st.qmu.Unlock()
	live := st.queue[:0]
	for _, r := range st.queue {
		if r.ctx.Err() == nil { // callers that left already returned their ctx error
			live = append(live, r)
		}
	}
	st.queue = live
	out := slices.Clone(live)
	if clear {
		st.queue = nil
	}
	if len(out) == 0 && !clear {
		st.draining = false
	}
	return out
}

// queued returns how many requests wait in the queue.
func (st *seedState) queued() int {
	st.qmu.Lock()
	defer st.qmu.Unlock()
	return len(st.queue)
}

// remove takes answered requests out of the queue.
func (st *seedState) remove(done []*assignReq) {
	st.qmu.Lock()
	defer st.qmu.Unlock()
	st.queue = slices.DeleteFunc(st.queue, func(r *assignReq) bool { return slices.Contains(done, r) })
}

// holdLimiter is implemented by lockers whose lock expires (a Kubernetes Lease): a session must
// end well before that, or another replica may take the lock over while this one still writes.
type holdLimiter interface{ HoldLimit() time.Duration }

// batchContext lasts while any caller of the batch still waits, no longer than the latest
// caller's deadline, and not past until (zero: no bound). It keeps the first caller's values
// (loggers, tracing).
func batchContext(batch []*assignReq, until time.Time) (context.Context, context.CancelFunc) {
	deadline := time.Now().Add(maxBatchWait)
	if !until.IsZero() {
		deadline = earlier(deadline, until)
	}
	latest := time.Time{}
	for _, r := range batch {
		d, ok := r.ctx.Deadline()
		if !ok {
			latest = deadline
			break
		}
		latest = later(latest, d)
	}
	ctx, cancel := context.WithDeadline(context.WithoutCancel(batch[0].ctx), earlier(latest, deadline))
	var waiting atomic.Int64
	waiting.Store(int64(len(batch)))
	stops := make([]func() bool, 0, len(batch))
	for _, r := range batch {
		stops = append(stops, context.AfterFunc(r.ctx, func() {
			if waiting.Add(-1) == 0 {
				cancel() // nobody waits for this batch any more
			}
		}))
	}
	return ctx, func() {
		for _, stop := range stops {
			stop()
		}
		cancel()
	}
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func earlier(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// assignBatch places batch in the lock session s and answers every caller: at once, or once the
// policies of the new role it went to are attached, which goes on while the session's next round
// places what queued meanwhile (the batch's context lasts until then). It returns when the
// placement returned, just before the first answer (startsLull).
func (a *Assigner) assignBatch(s *session, batch []*assignReq, until time.Time) (placed time.Time) {
	ctx, cancel := batchContext(batch, until)
	subjects := batchSubjects(batch)
	results := s.placeBatch(ctx, subjects)
	placed = time.Now() // before any answer: a caller that queues once answered comes after it
	var later []*assignReq
	for _, r := range batch {
		if res := results[r.subject]; res.wait == nil {
			r.done <- res
		} else {
			later = append(later, r)
		}
	}
	if len(later) == 0 {
		cancel()
	} else {
		s.tail.Go(func() {
			defer cancel()
			for _, r := range later {
				res := results[r.subject]
				if err := res.wait.wait(); err != nil && res.err == nil {
					res.err = err
				}
				res.wait = nil
				r.done <- res
			}
		})
	}
	if len(subjects) > 1 {
		a.log.Debug("assigned a batch of subjects in one lock session", "seed", s.seed.String(), "subjects", len(subjects))
	}
	return placed
}
