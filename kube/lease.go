package kube

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"go.klusters.dev/credential-webhook/annotations"
)

// generationAnnotation carries, on the Lease, how many lock sessions wrote to IAM for the key.
const generationAnnotation = annotations.Prefix + "generation"
const keyAnnotation = annotations.Prefix + "key"

// LeaseLocker is a mutual-exclusion lock per key shared by every replica (and the sweeper),
// built on coordination.k8s.io Leases with optimistic concurrency: whoever updates the Lease from
// free to held at the current resourceVersion owns it. IAM has no compare-and-swap, so this is
// what keeps two replicas from overwriting each other's trust-policy edits.
//
// A holder that dies leaves a Lease that expires after Duration; whoever takes it over bumps the
// generation, because the dead holder may have written to IAM without bumping.
type LeaseLocker struct {
	cs        Client
	namespace string
	identity  string
	duration  time.Duration
	log       *slog.Logger

	mu    sync.Mutex
	local map[string]chan struct{} // in-process serialisation before touching the API
	// last is the Lease as this replica last wrote or read it, per key, or as the sweeper's
	// latest list showed it (Observe) when the replica had not seen it itself. Acquire updates
	// from it directly, without a Get, and a conflict (someone else changed it since) costs the
	// Get it saved: a lock session is two API calls, take and release, whenever the same replica
	// locks a seed twice in a row, which is what a burst on one replica looks like, and, once a
	// list was observed, from its first session on.
	last map[string]*coordinationv1.Lease
	// listed holds the keys of the seed lock Leases in the latest complete list (Observe); nil
	// until a list is observed. A key missing from it, and from last, was absent at the list,
	// so its first acquire creates the Lease without the Get that would only answer NotFound (a
	// stale absence costs that Get after all: AlreadyExists). Acquire adds the key when it
	// relies on the absence, so it does so once.
	listed map[string]bool
	// fromList holds the keys whose entry in last came from a list, not from this replica's own
	// reads and writes: a later list, being newer, replaces or removes those.
	fromList map[string]bool
	// bumps counts the Bumps of the session holding key; release adds them to the generation.
	bumps map[string]int64
	// heldAt is when this replica took key or last renewed it (monotonic clock, the moment
	// written as RenewTime), while it holds it.
	heldAt map[string]time.Time

	// sessions counts the locks taken and renewed, calls the Lease API calls made for them (Stats).
	sessions, calls atomic.Int64
}

// Stats returns how many locks this replica took or renewed and how many Lease API calls (get, create,
// update) it made for them, including waiting for a Lease another replica holds: what a lock
// session costs the apiserver (the metrics credential_webhook_lock_sessions_total and
// credential_webhook_lock_api_calls_total).
func (l *LeaseLocker) Stats() (sessions, calls int64) { return l.sessions.Load(), l.calls.Load() }

// HoldLimit is how long a holder may keep a lock: the Lease duration. A holder that keeps it
// longer without renewing may find another replica holding it too.
func (l *LeaseLocker) HoldLimit() time.Duration { return l.duration }

// NewLeaseLocker returns a locker keeping its Leases in namespace. identity names this replica
// (its Pod name); duration bounds how long a crashed holder blocks others and must exceed the
// longest lock session (an admission budget is under 10 s).
func NewLeaseLocker(cs Client, namespace, identity string, duration time.Duration, log *slog.Logger) *LeaseLocker {
	if duration <= 0 {
		duration = 30 * time.Second
	}
	// Leases count whole seconds, and 0 is invalid: round up.
	duration = max(time.Second, (duration + time.Second - 1).Truncate(time.Second))
	return &LeaseLocker{cs: cs, namespace: namespace, identity: identity, duration: duration, log: log,
		local: map[string]chan struct{}{}, last: map[string]*coordinationv1.Lease{}, bumps: map[string]int64{}, heldAt: map[string]time.Time{}}
}

// LeaseName maps a key (a seed role ARN) to a valid, stable object name.
func LeaseName(key string) string {
	h := sha256.Sum256([]byte(key))
	return "credential-webhook-seed-" + hex.EncodeToString(h[:10])
}

// remembered returns the Lease last seen for key (nil when none), for the caller to modify.
func (l *LeaseLocker) remembered(key string) *coordinationv1.Lease {
	l.mu.Lock()
	defer l.mu.Unlock()
	if lease := l.last[key]; lease != nil {
		return lease.DeepCopy()
	}
	return nil
}

// remember records lease as the latest for key; nil forgets it.
func (l *LeaseLocker) remember(key string, lease *coordinationv1.Lease) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.fromList, key)
	if lease == nil {
		delete(l.last, key)
		return
	}
	l.last[key] = lease
}

// presumedAbsent reports whether the latest observed list says key has no Lease and this
// replica remembers none either (one it wrote after the list). It answers true once per key
// and list: if the Create it leads to fails (AlreadyExists: the list was stale), the next
// attempt reads the Lease.
func (l *LeaseLocker) presumedAbsent(key string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.listed == nil || l.listed[key] || l.last[key] != nil {
		return false
	}
	l.listed[key] = true
	return true
}

// Observe takes in a complete list of the managed Leases (label annotations.ManagedLabel=true)
// of namespace, as the sweeper leader reads it on every full collection, so that this
// replica's first lock session of a seed costs two API calls, as its later ones do, instead of
// three: a free Lease in the list is updated without the Get, and a seed whose Lease the list
// lacks is created without the Get that would answer NotFound. The list costs nothing extra,
// and stale information stays safe: an Update of a Lease changed since fails with Conflict and
// a Create of a Lease created since with AlreadyExists, and acquire reads the Lease then.
//
// Observe never replaces a Lease this replica wrote or read itself (that may be newer than the
// list, and no resourceVersion may be compared but for equality) nor one it holds; it does
// replace, or forget when the list lacks it, what an earlier list showed. A list of another
// namespace says nothing about this locker's Leases: it is ignored. The caller must leave out
// the Leases it deleted after listing, or this replica's next session of such a seed would
// update a Lease that is gone (NotFound) before reading and creating it.
func (l *LeaseLocker) Observe(namespace string, leases []coordinationv1.Lease) {
	if namespace != l.namespace {
		return
	}
	listed := make(map[string]bool, len(leases))
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.fromList == nil {
		l.fromList = map[string]bool{}
	}
	for i := range leases {
		lease := &leases[i]
		key := lease.Annotations[keyAnnotation]
		if key == "" || lease.Name != LeaseName(key) || (lease.Namespace != "" && lease.Namespace != l.namespace) {
			continue // not a seed lock Lease of this locker
		}
		listed[key] = true
		if _, held := l.heldAt[key]; held || (l.last[key] != nil && !l.fromList[key]) {
			continue
		}
		// A copy: the caller's list is not ours to keep, and acquire modifies what it updates.
		l.last[key], l.fromList[key] = lease.DeepCopy(), true
	}
	for key := range l.fromList {
		if !listed[key] {
			delete(l.last, key) // gone since the earlier list showed it (the sweeper deleted it)
			delete(l.fromList, key)
		}
	}
	l.listed = listed
}

func (l *LeaseLocker) localChan(key string) chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	c, ok := l.local[key]
	if !ok {
		c = make(chan struct{}, 1)
		l.local[key] = c
	}
	return c
}

// Lock blocks until key is held or ctx ends.
func (l *LeaseLocker) Lock(ctx context.Context, key string) (func(), int64, error) {
	c := l.localChan(key)
	select {
	case c <- struct{}{}:
	case <-ctx.Done():
		return nil, 0, fmt.Errorf("waiting for lock %s: %w", key, ctx.Err())
	}
	gen, start, err := l.acquire(ctx, key)
	if err != nil {
		<-c
		return nil, 0, err
	}
	l.sessions.Add(1)
	l.mu.Lock()
	l.heldAt[key], l.bumps[key] = start, 0
	l.mu.Unlock()
	var once sync.Once
	unlock := func() {
		once.Do(func() {
			// Release even when the caller's context has ended, or others wait for expiry.
			rctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := l.release(rctx, key); err != nil && l.log != nil {
				l.log.Warn("releasing lease failed; it expires by itself", "lease", LeaseName(key), "error", err)
			}
			<-c
		})
	}
	return unlock, gen, nil
}

// acquire takes the Lease and returns its generation and the moment (monotonic clock) written as
// its RenewTime, so the hold is measured from where others measure expiry, not from when this
// replica started waiting.
func (l *LeaseLocker) acquire(ctx context.Context, key string) (int64, time.Time, error) {
	name := LeaseName(key)
	leases := l.cs.CoordinationV1().Leases(l.namespace)
	wait := 10 * time.Millisecond
	cached := l.remembered(key)
	if cached != nil && cached.Spec.HolderIdentity != nil {
		cached = nil // last seen held: only the API can say whether it still is
	}
	absent := cached == nil && l.presumedAbsent(key)
	for {
		at := time.Now() // the RenewTime written below: the hold is measured from here
		now := metav1.NewMicroTime(at)
		var lease *coordinationv1.Lease
		var err error
		notFound, guessed := false, false
		switch {
		case cached != nil:
			lease, cached = cached, nil // trusted once: a conflict below reads the API
		case absent:
			notFound, guessed, absent = true, true, false // trusted once: AlreadyExists below reads the API
		default:
			l.calls.Add(1)
			lease, err = leases.Get(ctx, name, metav1.GetOptions{})
			notFound = apierrors.IsNotFound(err)
		}
		switch {
		case notFound:
			lease = &coordinationv1.Lease{
				ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: l.namespace,
					Labels:      map[string]string{annotations.ManagedLabel: "true"},
					Annotations: map[string]string{generationAnnotation: "0", keyAnnotation: key}},
				Spec: l.heldSpec(now),
			}
			l.calls.Add(1)
			if created, err := leases.Create(ctx, lease, metav1.CreateOptions{}); err == nil {
				l.remember(key, created)
				return 0, at, nil
			} else if !apierrors.IsAlreadyExists(err) {
				return 0, time.Time{}, fmt.Errorf("creating lease %s: %w", name, err)
			} else if guessed {
				continue // the observed list was stale: read the Lease at once, it may well be free
			}
		case err != nil:
			return 0, time.Time{}, fmt.Errorf("reading lease %s: %w", name, err)
		default:
			gen, _ := strconv.ParseInt(lease.Annotations[generationAnnotation], 10, 64)
			holder := ""
			if lease.Spec.HolderIdentity != nil {
				holder = *lease.Spec.HolderIdentity
			}
			expired := lease.Spec.RenewTime == nil || lease.Spec.LeaseDurationSeconds == nil ||
				now.After(lease.Spec.RenewTime.Add(time.Duration(*lease.Spec.LeaseDurationSeconds)*time.Second))
			if holder == "" || expired {
				if holder != "" {
					// Taken over from a holder that did not release: it may have written to IAM.
					gen++
					if l.log != nil {
						l.log.Warn("taking over an expired lease", "lease", name, "previousHolder", holder)
					}
				}
				upd := lease.DeepCopy()
				upd.Spec = l.heldSpec(now)
				if upd.Annotations == nil {
					upd.Annotations = map[string]string{}
				}
				upd.Annotations[generationAnnotation] = strconv.FormatInt(gen, 10)
				l.calls.Add(1)
				updated, err := leases.Update(ctx, upd, metav1.UpdateOptions{})
				if err == nil {
					l.remember(key, updated)
					return gen, at, nil
				}
				l.remember(key, nil)
				if apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
					continue // changed (or deleted) since we last saw it: read it again at once
				}
				return 0, time.Time{}, fmt.Errorf("acquiring lease %s: %w", name, err)
			}
		}
		// Held by another replica (or we lost a race): wait a little, with jitter, and retry.
		t := time.NewTimer(wait + time.Duration(rand.Int64N(int64(wait))))
		select {
		case <-ctx.Done():
			t.Stop()
			return 0, time.Time{}, fmt.Errorf("waiting for lease %s: %w", name, ctx.Err())
		case <-t.C:
		}
		wait = min(wait*2, 200*time.Millisecond)
	}
}

func (l *LeaseLocker) heldSpec(now metav1.MicroTime) coordinationv1.LeaseSpec {
	id := l.identity
	secs := int32(l.duration / time.Second)
	return coordinationv1.LeaseSpec{HolderIdentity: &id, LeaseDurationSeconds: &secs, AcquireTime: &now, RenewTime: &now}
}

// Bump records that the session holding key is about to write to IAM: the release that ends the
// session adds the bumps to the generation, in the same update that frees the Lease. Nobody reads
// the generation while the Lease is held, so the next holder sees it bumped, as Locker's protocol
// asks, at one API call fewer per session; a holder that dies before releasing has the
// generation bumped by whoever takes the expired Lease over.
//
// Bump refuses when this replica may no longer hold the Lease: it never took it, or three
// quarters of the Lease duration have passed since it took or last renewed it (Renew), by the
// local monotonic clock; the rest is margin for clock skew against whoever would take it over.
// The caller then does not write. This replaces the API round trip that used to re-read the
// Lease here: that read proved the Lease held at the first write of a session only, which is
// what the local clock proves too, while the session's later writes were always bounded by
// HoldLimit alone.
func (l *LeaseLocker) Bump(_ context.Context, key string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.heldLocked(key); err != nil {
		return err
	}
	l.bumps[key]++
	return nil
}

// Held reports whether this replica still safely holds key (see Bump), without an API call.
func (l *LeaseLocker) Held(key string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.heldLocked(key)
}

func (l *LeaseLocker) heldLocked(key string) error {
	at, held := l.heldAt[key]
	if !held {
		return fmt.Errorf("lease %s is not held by %s", LeaseName(key), l.identity)
	}
	if age := time.Since(at); age > l.duration*3/4 {
		return fmt.Errorf("lease %s was taken %s ago, too close to its %s expiry to write under it", LeaseName(key), age.Round(time.Millisecond), l.duration)
	}
	return nil
}

// Renew extends this replica's hold of key with one Lease update (RenewTime now), without
// releasing it, and returns the moment written as the RenewTime: the new hold, which Bump and
// Held measure from, starts there. A writer still busy when its hold runs out (a burst of new
// ServiceAccounts) goes on at the cost of that one call, where releasing and taking the Lease
// again cost two, and the wait for both, while subjects queued. It counts as a lock session in
// Stats: a session is a bounded hold, begun by a take or a renewal, and the bumps of the
// sessions still go to the generation at the release. It fails, and the hold stays as it was,
// when the Lease is no longer this replica's (ours expired and someone took it) or when the
// update fails: the caller then stops writing and releases.
func (l *LeaseLocker) Renew(ctx context.Context, key string) (time.Time, error) {
	l.mu.Lock()
	err := l.heldLocked(key)
	safeUntil := l.heldAt[key].Add(l.duration * 3 / 4)
	l.mu.Unlock()
	if err != nil {
		return time.Time{}, err // too late to renew: another replica may be taking it over
	}
	// A renewal that lands later than the hold it extends gains nothing: Held refuses by then.
	ctx, cancel := context.WithDeadline(ctx, safeUntil)
	defer cancel()
	at := time.Now()
	now := metav1.NewMicroTime(at)
	if err := l.modify(ctx, key, func(lease *coordinationv1.Lease) { lease.Spec.RenewTime = &now }); err != nil {
		return time.Time{}, fmt.Errorf("renewing lease %s: %w", LeaseName(key), err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, held := l.heldAt[key]; !held {
		return time.Time{}, fmt.Errorf("lease %s was released while it was renewed", LeaseName(key))
	}
	l.heldAt[key] = at
	l.sessions.Add(1)
	return at, nil
}

func (l *LeaseLocker) release(ctx context.Context, key string) error {
	l.mu.Lock()
	bumps := l.bumps[key]
	delete(l.bumps, key)
	delete(l.heldAt, key)
	l.mu.Unlock()
	return l.modify(ctx, key, func(lease *coordinationv1.Lease) {
		if bumps > 0 {
			gen, _ := strconv.ParseInt(lease.Annotations[generationAnnotation], 10, 64)
			lease.Annotations[generationAnnotation] = strconv.FormatInt(gen+bumps, 10)
		}
		lease.Spec.HolderIdentity = nil
		lease.Spec.AcquireTime = nil
		lease.Spec.RenewTime = nil
	})
}

// modify changes the Lease we hold; a Lease held by someone else is an error (ours expired).
func (l *LeaseLocker) modify(ctx context.Context, key string, change func(*coordinationv1.Lease)) error {
	name := LeaseName(key)
	leases := l.cs.CoordinationV1().Leases(l.namespace)
	cached := l.remembered(key)
	for range 5 {
		lease := cached
		cached = nil
		if lease == nil {
			var err error
			l.calls.Add(1)
			if lease, err = leases.Get(ctx, name, metav1.GetOptions{}); err != nil {
				l.remember(key, nil)
				return fmt.Errorf("reading lease %s: %w", name, err)
			}
		}
		if lease.Spec.HolderIdentity == nil || *lease.Spec.HolderIdentity != l.identity {
			return fmt.Errorf("lease %s is no longer held by %s", name, l.identity)
		}
		if lease.Annotations == nil {
			lease.Annotations = map[string]string{}
		}
		change(lease)
		l.calls.Add(1)
		updated, err := leases.Update(ctx, lease, metav1.UpdateOptions{})
		if err == nil {
			l.remember(key, updated)
			return nil
		}
		l.remember(key, nil)
		if !apierrors.IsConflict(err) {
			return fmt.Errorf("updating lease %s: %w", name, err)
		}
	}
	return fmt.Errorf("updating lease %s: too many conflicts", name)
}

// LeaseKeys lists the keys (seed role ARNs) that have a lock Lease in namespace: the seeds this
// server has ever written for, including those whose last ServiceAccount is gone.
func LeaseKeys(ctx context.Context, cs Client, namespace string) ([]string, error) {
	list, err := cs.CoordinationV1().Leases(namespace).List(ctx, metav1.ListOptions{LabelSelector: annotations.ManagedLabel + "=true"})
	if err != nil {
		return nil, fmt.Errorf("listing leases: %w", err)
	}
	var keys []string
	for _, l := range list.Items {
		if k := l.Annotations[keyAnnotation]; k != "" {
			keys = append(keys, k)
		}
	}
	return keys, nil
}
