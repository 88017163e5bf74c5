package sweeper

import (
	"context"

	corev1 "k8s.io/api/core/v1"

	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/hold"
)

// The leader's fallback for pending ServiceAccounts: the writer (writer.go; the leader's own, or
// without a sweeper the planning replica's) writes one at once and tries once; the finisher
// retries every one still pending after Config.Handoff, with backoff (finish.go does the work for
// both).

// pendingSeen schedules the finishing of sa when it is still pending.
func (t *term) pendingSeen(sa *corev1.ServiceAccount) {
	if _, pending := sa.Annotations[annotations.Pending]; pending && sa.DeletionTimestamp == nil && len(t.clouds) > 0 {
		// The replica that planned it writes it within a moment; this is the fallback.
		t.finishQ.AddAfter(key(sa.Namespace, sa.Name), t.cfg.Handoff)
	}
}

func (t *term) processPending(ctx context.Context, k string) {
	ns, name := splitKey(k)
	sa, err := t.saLister.ServiceAccounts(ns).Get(name)
	if err != nil {
		t.forgetFinish(k)
		return
	}
	ctx, cancel := context.WithTimeout(ctx, t.cfg.CheckTimeout)
	defer cancel()
	out, err := t.finish(ctx, sa)
	switch {
	case err != nil:
		t.m.finishes.WithLabelValues("error").Inc()
		t.mu.Lock()
		attempt := t.finishAttempts[k]
		t.finishAttempts[k]++
		t.mu.Unlock()
		after := hold.Backoff(attempt, t.cfg.FinishBackoffInitial, t.cfg.FinishBackoffMax)
		t.log.Warn("finishing pending ServiceAccount failed", "serviceaccount", k, "attempt", attempt, "retryIn", after, "error", err)
		t.recorder.Eventf(sa, corev1.EventTypeWarning, "AssignmentFailed", "credential-webhook could not finish the cloud identity assignment (retrying in %s): %v", after, err)
		t.finishQ.AddAfter(k, after)
	case out == stale:
		t.finishQ.AddAfter(k, t.cfg.BackoffInitial)
	default:
		t.forgetFinish(k)
	}
}

func (t *term) forgetFinish(k string) {
	t.mu.Lock()
	delete(t.finishAttempts, k)
	t.mu.Unlock()
}
