// Package election elects one leader among the replicas with a coordination.k8s.io/v1 Lease.
//
// It is written for this server rather than taken from client-go's leaderelection, for two
// reasons. That package links client-go's typed clients and, through them, a scheme with every
// API group (see package kube). And its leader notices a lost Lease late: after a renewal fails
// it first tries to release the Lease, each step allowed RenewDeadline, so with an unreachable
// apiserver a leader kept working up to twice RenewDeadline, past the moment another replica
// may take over. Here the term ends when no renewal has succeeded within Budget of being sent,
// which always ends before the Lease expires as the other replicas count it.
package election

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// Leases is the part of a namespace's Lease client the elector calls.
type Leases interface {
	Get(ctx context.Context, name string, opts metav1.GetOptions) (*coordinationv1.Lease, error)
	Create(ctx context.Context, lease *coordinationv1.Lease, opts metav1.CreateOptions) (*coordinationv1.Lease, error)
	Update(ctx context.Context, lease *coordinationv1.Lease, opts metav1.UpdateOptions) (*coordinationv1.Lease, error)
}

// Elector campaigns for the Lease Name in the namespace of Leases, as Identity.
type Elector struct {
	Leases   Leases
	Name     string
	Identity string
	Labels   map[string]string // set on the Lease when the elector creates it

	// LeaseDuration is how long the other replicas wait, after they last saw the Lease change,
	// before they take it over. The Lease records it in whole seconds.
	LeaseDuration time.Duration
	// RenewDeadline is how long a leader keeps working without a successful renewal (see Budget).
	RenewDeadline time.Duration
	// RetryPeriod is the interval between renewals, and between attempts to acquire.
	RetryPeriod time.Duration

	// OnLeader, if set, is called with the holder's identity whenever the holder this replica
	// observes changes (itself included).
	OnLeader func(identity string)
	// OnOverdue, if set, is called when a term ends because no renewal succeeded for Budget.
	OnOverdue func(since time.Duration)

	Log *slog.Logger

	observed struct { // what this replica last saw of the Lease, and when (its own clock)
		holder  string
		version string
		at      time.Time
	}
	mu       sync.Mutex
	lastSent time.Time // when the last successful write naming this replica was sent
}

// Validate checks the timings: a leader must be able to renew several times before its
// deadline, and stop before the Lease expires.
func (e *Elector) Validate() error {
	switch {
	case e.Leases == nil || e.Name == "" || e.Identity == "":
		return errors.New("election: Leases, Name and Identity are required")
	case e.RetryPeriod <= 0:
		return fmt.Errorf("election: retry period %s must be positive", e.RetryPeriod)
	case e.RenewDeadline <= e.RetryPeriod*6/5:
		return fmt.Errorf("election: renew deadline %s must exceed 1.2 x the retry period %s", e.RenewDeadline, e.RetryPeriod)
	case e.LeaseDuration <= e.RenewDeadline:
		return fmt.Errorf("election: lease duration %s must exceed the renew deadline %s", e.LeaseDuration, e.RenewDeadline)
	case e.LeaseDuration < time.Second:
		return fmt.Errorf("election: lease duration %s is below the Lease's resolution of one second", e.LeaseDuration)
	}
	return nil
}

// Budget is how long after sending its last successful renewal a leader may keep working:
// RenewDeadline, but always a margin before the Lease expires for the other replicas, who count
// the whole seconds the Lease records from when they saw it change (which is after it was sent).
func (e *Elector) Budget() time.Duration {
	margin := min(e.RetryPeriod/4, 250*time.Millisecond)
	return max(min(e.RenewDeadline, e.LeaseDuration.Truncate(time.Second)-margin), 0)
}

// Run campaigns until ctx ends. Each time this replica acquires the Lease it runs lead with a
// context that ends when ctx does, when another replica is seen holding the Lease, or when no
// renewal succeeded for Budget. When ctx ends, Run waits for lead to return and only then
// releases the Lease, so that a replica never works without holding it and the next one takes
// over within a retry period instead of a Lease duration. Run returns an error only for an
// invalid configuration.
func (e *Elector) Run(ctx context.Context, lead func(context.Context)) error {
	if err := e.Validate(); err != nil {
		return err
	}
	for {
		if !e.campaign(ctx) {
			return nil
		}
		e.term(ctx, lead)
		if ctx.Err() != nil {
			e.release()
			return nil
		}
		e.log().Warn("leader term ended without the Lease; campaigning again", "lease", e.Name, "identity", e.Identity)
	}
}

func (e *Elector) log() *slog.Logger {
	if e.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return e.Log
}

// campaign tries to acquire the Lease every retry period (with jitter, so that replicas started
// together do not all ask at once) until it has it (true) or ctx ends (false).
func (e *Elector) campaign(ctx context.Context) bool {
	for {
		actx, cancel := context.WithTimeout(ctx, e.RenewDeadline)
		ok, _ := e.tryAcquireOrRenew(actx)
		cancel()
		if ok {
			return true
		}
		jitter := time.Duration(rand.Int64N(int64(e.RetryPeriod/5) + 1))
		select {
		case <-ctx.Done():
			return false
		case <-time.After(e.RetryPeriod + jitter):
		}
	}
}

// term runs lead while the Lease is held and renews it every retry period.
func (e *Elector) term(ctx context.Context, lead func(context.Context)) {
	tctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer cancel()
		if e.overdue(tctx, cancel) {
			return // acquired, but so slowly that its budget is already spent
		}
		lead(tctx)
	}()
	// The watchdog does not depend on a renewal returning: a request to a hung apiserver may
	// not honour its context.
	// Renewals and the watchdog are waited for before the term returns: Run releases the Lease
	// next, and a renewal landing after the release would take the Lease back.
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { e.watch(tctx, cancel) })
	ticker := time.NewTicker(e.RetryPeriod)
	defer ticker.Stop()
	renewing := make(chan struct{}, 1) // at most one renewal in flight
	for {
		select {
		case <-done:
			return
		case <-ticker.C:
			select {
			case renewing <- struct{}{}:
			default:
				continue // the previous renewal still hangs
			}
			wg.Go(func() {
				defer func() { <-renewing }()
				rctx, rcancel := context.WithTimeout(tctx, e.RenewDeadline)
				defer rcancel()
				if _, lost := e.tryAcquireOrRenew(rctx); lost {
					e.log().Warn("leader Lease taken over by another replica; stopping work", "lease", e.Name, "holder", e.observedHolder())
					cancel()
				}
			})
		}
	}
}

// watch ends the term (cancel) when the budget of the last successful renewal runs out. It
// sleeps until that moment rather than polling, so it fires on time whatever the retry period.
func (e *Elector) watch(ctx context.Context, cancel context.CancelFunc) {
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		since := time.Since(e.LastRenewal())
		if since >= e.Budget() {
			e.overdue(ctx, cancel)
			return
		}
		timer.Reset(e.Budget() - since) // timers never fire early: since >= budget then, unless renewed
	}
}

// overdue ends the term when the budget is spent, and says so.
func (e *Elector) overdue(ctx context.Context, cancel context.CancelFunc) bool {
	since := time.Since(e.LastRenewal())
	if since < e.Budget() || ctx.Err() != nil {
		return false
	}
	if e.OnOverdue != nil {
		e.OnOverdue(since)
	}
	cancel()
	return true
}

// LastRenewal is when the last successful write naming this replica holder was sent; zero if
// none. The moment of sending, not of the answer: the other replicas start counting the Lease
// duration at some moment in between, so this is the conservative start.
func (e *Elector) LastRenewal() time.Time {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.lastSent
}

func (e *Elector) renewed(sent time.Time) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if sent.After(e.lastSent) {
		e.lastSent = sent
	}
}

func (e *Elector) observedHolder() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.observed.holder
}

// observe records the Lease as seen now, reporting a new holder.
func (e *Elector) observe(l *coordinationv1.Lease, now time.Time) {
	holder := ""
	if l.Spec.HolderIdentity != nil {
		holder = *l.Spec.HolderIdentity
	}
	e.mu.Lock()
	changed := holder != e.observed.holder
	if changed || l.ResourceVersion != e.observed.version {
		e.observed.holder, e.observed.version, e.observed.at = holder, l.ResourceVersion, now
	}
	e.mu.Unlock()
	if changed && holder != "" && e.OnLeader != nil {
		e.OnLeader(holder)
	}
}

// heldByOther reports whether another replica holds the Lease: it names a holder other than
// this replica, and this replica saw it change less than the Lease's duration ago.
func (e *Elector) heldByOther(l *coordinationv1.Lease, now time.Time) bool {
	if l.Spec.HolderIdentity == nil || *l.Spec.HolderIdentity == "" || *l.Spec.HolderIdentity == e.Identity {
		return false
	}
	d := e.LeaseDuration
	if l.Spec.LeaseDurationSeconds != nil {
		d = time.Duration(*l.Spec.LeaseDurationSeconds) * time.Second
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	return now.Before(e.observed.at.Add(d))
}

// tryAcquireOrRenew makes this replica the holder if the Lease is free, expired or already its
// own, with one read and one write (conditional on the read's resourceVersion, so two replicas
// never both win). lost says another replica holds it now.
func (e *Elector) tryAcquireOrRenew(ctx context.Context) (ok, lost bool) {
	sent := time.Now()
	cur, err := e.Leases.Get(ctx, e.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		l := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: e.Name, Labels: e.Labels}}
		e.hold(l, metav1.NewMicroTime(sent))
		created, err := e.Leases.Create(ctx, l, metav1.CreateOptions{})
		if err != nil {
			e.log().Debug("creating the leader Lease failed", "lease", e.Name, "error", err)
			return false, false
		}
		e.renewed(sent)
		e.observe(created, time.Now())
		return true, false
	case err != nil:
		e.log().Debug("reading the leader Lease failed", "lease", e.Name, "error", err)
		return false, false
	}
	e.observe(cur, time.Now())
	if e.heldByOther(cur, time.Now()) {
		return false, true
	}
	l := cur.DeepCopy()
	e.hold(l, metav1.NewMicroTime(sent))
	sent = time.Now() // the write, not the read, is what extends the Lease
	updated, err := e.Leases.Update(ctx, l, metav1.UpdateOptions{})
	if err != nil {
		// A conflict means someone else wrote first: look again next time.
		e.log().Debug("writing the leader Lease failed", "lease", e.Name, "error", err)
		return false, false
	}
	e.renewed(sent)
	e.observe(updated, time.Now())
	return true, false
}

// hold sets the Lease's spec to name this replica as holder at now, counting a transition when
// the holder changes.
func (e *Elector) hold(l *coordinationv1.Lease, now metav1.MicroTime) {
	if l.Spec.HolderIdentity == nil || *l.Spec.HolderIdentity != e.Identity {
		l.Spec.AcquireTime = &now
		if l.Spec.HolderIdentity != nil && *l.Spec.HolderIdentity != "" {
			l.Spec.LeaseTransitions = new(ptr.Deref(l.Spec.LeaseTransitions, 0) + 1)
		}
		l.Spec.HolderIdentity = new(e.Identity)
	}
	if l.Spec.LeaseTransitions == nil {
		l.Spec.LeaseTransitions = new(int32(0))
	}
	l.Spec.RenewTime = &now
	l.Spec.LeaseDurationSeconds = new(int32(e.LeaseDuration / time.Second))
}

// release gives the Lease up if this replica still holds it: no holder, a one-second duration,
// so the next replica takes over at its next attempt. Best effort, within RenewDeadline; it runs
// after the term's work stopped.
func (e *Elector) release() {
	ctx, cancel := context.WithTimeout(context.Background(), e.RenewDeadline)
	defer cancel()
	cur, err := e.Leases.Get(ctx, e.Name, metav1.GetOptions{})
	if err != nil || cur.Spec.HolderIdentity == nil || *cur.Spec.HolderIdentity != e.Identity {
		return
	}
	l := cur.DeepCopy()
	now := metav1.NewMicroTime(time.Now())
	l.Spec.HolderIdentity = new("")
	l.Spec.RenewTime = &now
	l.Spec.LeaseDurationSeconds = new(int32(1))
	if _, err := e.Leases.Update(ctx, l, metav1.UpdateOptions{}); err != nil {
		e.log().Warn("releasing the leader Lease failed; the next replica takes over when it expires", "lease", e.Name, "error", err)
	}
}
