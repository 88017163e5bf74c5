package sweeper

import (
	"context"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Whether a ServiceAccount still exists, as garbage collection asks it: only one missing from
// the cache for Config.GCGrace and then confirmed missing by a live read is gone.

// Gone reports whether a ServiceAccount first seen missing at firstMissing (zero: not missing)
// has been missing for the grace period, so its cloud subjects may be collected.
func Gone(firstMissing, now time.Time, grace time.Duration) bool {
	return !firstMissing.IsZero() && now.Sub(firstMissing) >= grace
}

// lookup answers a Collector: the ServiceAccount namespace/name, from the cache. Only a
// ServiceAccount missing from the cache for GCGrace, and then confirmed missing by a live read,
// counts as gone. Every doubt (read errors) answers "exists, unknown" (nil, true): collecting a
// live subject breaks a backup, keeping a dead one costs a few characters of trust policy until
// the next sweep.
func (t *term) lookup(ctx context.Context, namespace, name string, asked map[string]bool) (*corev1.ServiceAccount, bool) {
	k := key(namespace, name)
	sa, err := t.saLister.ServiceAccounts(namespace).Get(name)
	now := t.now()
	t.mu.Lock()
	asked[k] = true
	if err == nil || !apierrors.IsNotFound(err) {
		delete(t.missing, k)
		t.mu.Unlock()
		return sa, true
	}
	first, seen := t.missing[k]
	if !seen {
		t.missing[k] = now
	}
	t.mu.Unlock()
	if !Gone(first, now, t.cfg.GCGrace) {
		return nil, true
	}
	live, err := t.cs.CoreV1().ServiceAccounts(namespace).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, false
	}
	if err != nil {
		return nil, true
	}
	t.mu.Lock()
	delete(t.missing, k)
	t.mu.Unlock()
	return live, true
}

// graceLeft is how long until the first of the ServiceAccounts in asked that are missing but
// within their grace period may be collected; 0 when none is.
func (t *term) graceLeft(asked map[string]bool) time.Duration {
	now := t.now()
	var next time.Duration
	t.mu.Lock()
	defer t.mu.Unlock()
	for k := range asked {
		first, ok := t.missing[k]
		if !ok {
			continue
		}
		if left := first.Add(t.cfg.GCGrace).Sub(now); left > 0 && (next == 0 || left < next) {
			next = left
		}
	}
	return next
}
