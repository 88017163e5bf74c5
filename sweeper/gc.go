package sweeper

import (
	"context"
	"errors"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"

	"go.klusters.dev/credential-webhook/markers"
)

// Garbage collection: the Collectors remove what the clouds hold for ServiceAccounts that are
// gone (existence.go says which) or lost their standing. A full collection runs when a term
// starts and every Config.GCInterval; in between, the deletion or change of a ServiceAccount
// carrying our markers makes only the scopes its claims name due (gcscope.go). Full collections
// also maintain the scopes of ScopeMaintainers (AWS: drift repair, empty derived roles deleted).

// ScopeMaintainer is a ScopedCollector with upkeep beyond subjects (AWS: repairing the drift of
// derived roles from their seed, deleting roles empty for longer than a grace). It runs on full
// collections only, after the scope's CollectScope succeeded: upkeep reads every object of the
// scope, too much for every deletion, and should see the subjects already removed.
type ScopeMaintainer interface {
	MaintainScope(ctx context.Context, scope Scope) error
}

// claimsChanged makes due the scopes of the claims old's markers recorded that sa no longer
// keeps: its markers dropped the claim, or its annotations now ask for something else. A
// ServiceAccount without our markers changes nothing.
func (t *term) claimsChanged(old, sa *corev1.ServiceAccount) {
	before := markerClaims(old)
	if len(before) == 0 {
		return
	}
	now := markerClaims(sa)
	var due markers.Claims
	for _, c := range before {
		cloud, known := t.clouds[c.Cloud]
		switch {
		case !now.Has(c):
			due = append(due, c)
		case known:
			if cur, ok := cloud.Claim(sa.Annotations); !ok || cur != c {
				due = append(due, c)
			}
		}
	}
	t.makeDue(due, false)
}

func (t *term) hasPlainCollectors() bool {
	for _, c := range t.deps.Collectors {
		if _, ok := c.(ScopedCollector); !ok {
			return true
		}
	}
	return false
}

// makeDue records claims whose scopes are due (and plain: the plain Collectors) and wakes the
// collection loop, which waits a moment for more (gcDebounce).
func (t *term) makeDue(claims markers.Claims, plain bool) {
	if len(claims) == 0 && !plain {
		return
	}
	t.mu.Lock()
	for _, c := range claims {
		t.dirty[c] = true
	}
	t.dirtyPlain = t.dirtyPlain || plain
	t.mu.Unlock()
	select {
	case t.gcTrigger <- struct{}{}:
	default: // a collection is already due
	}
}

func (t *term) gcLoop(ctx context.Context) {
	if len(t.deps.Collectors) == 0 {
		return
	}
	ticker := time.NewTicker(t.cfg.GCInterval)
	defer ticker.Stop()
	// A new leader collects everything at once: deletions may have happened while nobody led.
	due := time.NewTimer(0)
	defer due.Stop()
	dueAt := t.now()
	full := true
	// schedule moves the next (due-only) collection earlier, never later, so a steady stream of
	// deletions cannot postpone it forever.
	schedule := func(d time.Duration) {
		if at := t.now().Add(d); dueAt.IsZero() || at.Before(dueAt) {
			due.Reset(d) // Go 1.23+ timers: Reset discards a pending fire
			dueAt = at
		}
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
			full = true
		case <-t.gcTrigger:
			schedule(gcDebounce)
			continue
		case <-due.C:
			dueAt = time.Time{}
		}
		if full {
			t.pruneSeedLeases(ctx)
		}
		if waitFor := t.collect(ctx, full); waitFor > 0 {
			// Some ServiceAccounts are still within their grace period, or a due scope is out
			// of tokens: come back then.
			schedule(waitFor)
		}
		full = false
	}
}

// collect runs the Collectors: all of every one when full (the periodic sweep), else only the
// due scopes of the ScopedCollectors and, when due, the plain Collectors, each within its token
// bucket. It returns how long until a scope left due (a ServiceAccount still within its grace
// period, a bucket out of tokens) can be collected; 0 when none is left.
func (t *term) collect(ctx context.Context, full bool) time.Duration {
	var next time.Duration
	later := func(d time.Duration) {
		if d > 0 && (next == 0 || d < next) {
			next = d
		}
	}
	asked := map[string]bool{} // every ServiceAccount asked about by this collection
	total, ran := 0, 0
	var errs []error
	t.mu.Lock()
	plainDue := t.dirtyPlain || full
	t.dirtyPlain = false
	due := make([]markers.Claim, 0, len(t.dirty)) // what was due when this collection started
	for c := range t.dirty {
		due = append(due, c)
	}
	t.mu.Unlock()
	matched := map[markers.Claim]bool{}
	live := map[string]bool{}

	// run collects one scope (or a plain Collector) and keeps it due while some of what it
	// asked about is within its grace period.
	// It reports whether the collection ran and succeeded.
	run := func(bucketKey string, keepDue func(), collect func(markers.Lookup) (int, error)) bool {
		if !full {
			if wait := t.gcBuckets.take(bucketKey, t.now()); wait > 0 {
				keepDue()
				later(wait)
				return false
			}
		}
		mine := map[string]bool{}
		n, err := collect(func(ns, name string) (*corev1.ServiceAccount, bool) { return t.lookup(ctx, ns, name, mine) })
		ran++
		total += n
		if err != nil {
			errs = append(errs, err)
		}
		if wait := t.graceLeft(mine); wait > 0 {
			keepDue()
			later(wait)
		}
		for k := range mine {
			asked[k] = true
		}
		return err == nil
	}

	for i, c := range t.deps.Collectors {
		sc, scoped := c.(ScopedCollector)
		if !scoped {
			if plainDue {
				run(fmt.Sprintf("collector/%d", i), func() { t.makeDuePlain() }, func(l markers.Lookup) (int, error) { return c.Collect(ctx, l) })
			}
			continue
		}
		scopes, err := sc.Scopes(ctx)
		if err != nil {
			errs = append(errs, err)
			for _, c := range due { // keep what was due for the next try
				matched[c] = true
			}
			continue
		}
		for _, s := range scopes {
			live[s.Key] = true
			if !full && !t.takeDue(s, matched) {
				continue
			}
			if full {
				t.takeDue(s, matched)
			}
			s.Full = full
			ok := run("scope/"+s.Key, func() { t.keepDue(s.Claim, matched) }, func(l markers.Lookup) (int, error) { return sc.CollectScope(ctx, s, l) })
			if m, maintains := sc.(ScopeMaintainer); full && ok && maintains {
				if err := m.MaintainScope(ctx, s); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	t.gcBuckets.keep(prefixed(live, "scope/"), t.now())

	t.mu.Lock()
	// Claims no scope holds (a seed that is not configured, or for which this server never
	// wrote) are dropped: there is nothing of ours to collect for them, and no cloud call.
	for _, c := range due {
		if !matched[c] {
			delete(t.dirty, c)
		}
	}
	if full {
		// Forget ServiceAccounts no Collector asks about any more (their subjects are gone).
		for k := range t.missing {
			if !asked[k] {
				delete(t.missing, k)
			}
		}
	}
	t.mu.Unlock()

	if full && len(errs) == 0 {
		// Even a pass that found no scope (no seed written to yet) is a finished full pass.
		t.m.gcLastFull.Set(float64(t.now().UnixNano()) / 1e9)
	}
	if ran == 0 && len(errs) == 0 {
		return next
	}
	t.m.subjectsCollected.Add(float64(total))
	if err := errors.Join(errs...); err != nil {
		t.m.gcRuns.WithLabelValues("error").Inc()
		t.log.Warn("garbage collection failed", "removed", total, "error", err)
	} else {
		t.m.gcRuns.WithLabelValues("ok").Inc()
		if total > 0 {
			t.log.Info("garbage collection", "removed", total, "full", full)
		}
	}
	return next
}

func prefixed(keys map[string]bool, prefix string) map[string]bool {
	out := make(map[string]bool, len(keys))
	for k := range keys {
		out[prefix+k] = true
	}
	return out
}

// takeDue reports whether scope s is due and, if so, clears the claims that made it due
// (recording them in matched). An event during the collection makes it due again.
func (t *term) takeDue(s Scope, matched map[markers.Claim]bool) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	found := false
	for c := range t.dirty {
		if s.matches(c) {
			found = true
			matched[c] = true
			delete(t.dirty, c)
		}
	}
	return found
}

// keepDue makes scope s (its claim) due again after this collection.
func (t *term) keepDue(c markers.Claim, matched map[markers.Claim]bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.dirty[c] = true
	matched[c] = true
}

func (t *term) makeDuePlain() {
	t.mu.Lock()
	t.dirtyPlain = true
	t.mu.Unlock()
}
