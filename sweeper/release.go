package sweeper

import (
	"context"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"go.klusters.dev/credential-webhook/hold"
)

// release resumes job (or, for ReleaseResumedElse, only removes our annotations) and records
// the outcome. A failed patch is retried: from a fresh cache when it conflicted, with backoff
// otherwise.
func (t *term) release(ctx context.Context, job *batchv1.Job, reason string, heldSince time.Time, why string) {
	k := key(job.Namespace, job.Name)
	patch, err := hold.ReleasePatch(job)
	if err != nil {
		t.log.Error("cannot build release patch", "job", k, "error", err)
		t.untrack(k)
		return
	}
	_, err = t.cs.BatchV1().Jobs(job.Namespace).Patch(ctx, job.Name, types.JSONPatchType, patch, metav1.PatchOptions{FieldManager: fieldManager})
	switch {
	case apierrors.IsNotFound(err):
		t.untrack(k)
		return
	case isStale(err):
		// Our view was stale (the test op failed): look again once the cache caught up.
		t.log.Info("release patch conflicted; re-reading the Job", "job", k, "error", err)
		t.jobQ.AddAfter(k, t.cfg.BackoffInitial)
		return
	case err != nil:
		t.mu.Lock()
		attempt := 0
		if st, ok := t.held[k]; ok {
			attempt = st.attempts
			st.attempts++
		}
		t.mu.Unlock()
		t.log.Warn("releasing held Job failed", "job", k, "error", err)
		t.jobQ.AddAfter(k, hold.Backoff(attempt, t.cfg.BackoffInitial, t.cfg.BackoffMax))
		return
	}
	t.mu.Lock()
	t.released[k] = job.ResourceVersion
	t.mu.Unlock()
	t.untrack(k)
	waited := t.now().Sub(heldSince).Round(time.Second)
	t.m.releases.WithLabelValues(reason).Inc()
	if reason != ReleaseResumedElse {
		t.m.holdDuration.Observe(max(t.now().Sub(heldSince), 0).Seconds())
	}
	switch reason {
	case ReleaseReady:
		t.recorder.Eventf(job, corev1.EventTypeNormal, "Released", "Released after %s: %s", waited, why)
	case ReleaseMaxHold:
		t.recorder.Eventf(job, corev1.EventTypeWarning, "ReleasedWithoutCredentials",
			"Released after %s (max hold %s) without working cloud credentials: %s", waited, t.cfg.MaxHold, why)
	default:
		t.recorder.Eventf(job, corev1.EventTypeNormal, "Released", "Resumed by someone else after %s; hold annotations removed", waited)
	}
	t.log.Info("released held Job", "job", k, "reason", reason, "waited", waited, "detail", why)
}

// isStale reports a write rejected because our copy was outdated: a failed JSON patch test
// (the apiserver answers 422 Invalid) or a conflict.
func isStale(err error) bool {
	return apierrors.IsConflict(err) || apierrors.IsInvalid(err)
}
