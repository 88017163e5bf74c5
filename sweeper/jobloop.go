package sweeper

import (
	"context"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/cache"

	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/hold"
)

// The held-Job loop: Job and ServiceAccount events enqueue held Jobs, a worker checks each
// (processJob) and either releases it (release.go) or looks again after a backoff. Every
// decision is package hold's: which Jobs are held (IsHeld), which only lose our annotations
// (ResumedElsewhere), and when to release (Plan).

// onJob enqueues a Job the term must look at: held and not tracked yet (first sight, or
// re-created under the same name), or tracked but no longer held.
func (t *term) onJob(obj any) {
	j, ok := asJob(obj)
	if !ok {
		return
	}
	job := &j
	k := key(job.Namespace, job.Name)
	t.mu.Lock()
	if rv, ok := t.released[k]; ok && rv != job.ResourceVersion {
		delete(t.released, k) // the cache moved past the version we released
	}
	st, tracked := t.held[k]
	t.mu.Unlock()
	switch {
	case hold.IsHeld(job) && (!tracked || st.uid != job.UID):
		t.jobQ.Add(k) // first sight
	case !hold.IsHeld(job) && tracked:
		t.jobQ.Add(k) // released or resumed elsewhere: the worker untracks it
	}
}

func (t *term) onJobDelete(obj any) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	if job, ok := asJob(obj); ok {
		t.untrack(key(job.Namespace, job.Name))
	}
}

// wakeHeldJobs checks the Jobs waiting for ServiceAccount sa now, from the start of their
// backoff, when it was created (old is nil) or its identity changed.
func (t *term) wakeHeldJobs(old, sa *corev1.ServiceAccount) {
	if old != nil && fingerprint(old) == fingerprint(sa) &&
		old.Annotations[annotations.SeedRole] == sa.Annotations[annotations.SeedRole] &&
		old.Annotations[annotations.AzureMIName] == sa.Annotations[annotations.AzureMIName] {
		return // nothing a held Job waits for changed (a resync, a label)
	}
	// Created, or its identity changed: check the Jobs waiting for it now, from the start of
	// their backoff, rather than at the end of a long one.
	objs, err := t.jobInformer.GetIndexer().ByIndex(saIndex, key(sa.Namespace, sa.Name))
	if err != nil {
		return
	}
	for _, o := range objs {
		if job, ok := asJob(o); ok {
			jk := key(job.Namespace, job.Name)
			t.mu.Lock()
			if st, ok := t.held[jk]; ok {
				st.attempts = 0
			}
			t.mu.Unlock()
			t.jobQ.Add(jk)
		}
	}
}

func (t *term) track(k string, job *batchv1.Job) *heldJob {
	t.mu.Lock()
	defer t.mu.Unlock()
	st, ok := t.held[k]
	if !ok || st.uid != job.UID {
		st = &heldJob{uid: job.UID}
		t.held[k] = st
	}
	t.m.heldJobs.Set(float64(len(t.held)))
	return st
}

func (t *term) untrack(k string) {
	t.mu.Lock()
	delete(t.held, k)
	t.m.heldJobs.Set(float64(len(t.held)))
	t.mu.Unlock()
}

// processJob looks at one held Job: it announces the hold once (a Held Event), cleans up a Job
// someone else resumed, and otherwise checks the credentials (readiness.go) and lets hold.Plan
// say whether to release it now (release.go), at max hold without credentials, or look again
// after a backoff.
func (t *term) processJob(ctx context.Context, k string) {
	ns, name := splitKey(k)
	job, ok := t.job(ns, name)
	if !ok || !hold.IsHeld(job) {
		t.untrack(k)
		return
	}
	t.mu.Lock()
	stale := t.released[k] == job.ResourceVersion
	t.mu.Unlock()
	if stale {
		return // we released this version already; the cache has not caught up
	}
	st := t.track(k, job)
	heldSince := hold.HeldSince(job)
	saName := hold.ServiceAccountName(&job.Spec.Template.Spec)
	log := t.log.With("job", k, "serviceaccount", saName)

	t.mu.Lock()
	announce := !st.announced
	st.announced = true
	attempt := st.attempts
	t.mu.Unlock()
	if announce {
		t.recorder.Eventf(job, corev1.EventTypeNormal, "Held",
			"Held by credential-webhook since %s (%s): waiting until ServiceAccount %s has working cloud credentials",
			heldSince.UTC().Format(time.RFC3339), job.Annotations[annotations.HoldReason], saName)
	}

	if hold.ResumedElsewhere(job) {
		// Someone else resumed it, or another controller (Kueue, spec.managedBy) owns its
		// suspend: only our annotations are left to remove.
		t.release(ctx, job, ReleaseResumedElse, heldSince, "")
		return
	}
	ready, why, checked := t.readiness(ctx, job, saName, heldSince)
	t.mu.Lock()
	switch {
	case ready:
	case checked:
		st.lastWhy = why
	case st.lastWhy != "":
		// No check could finish before max hold: the operator needs the last real failure
		// (refused by STS, role missing ...), not only that time ran out.
		why += "; last completed check: " + st.lastWhy
	}
	t.mu.Unlock()
	now := t.now()
	step := hold.Plan(heldSince, ready, attempt, now, t.cfg.holdPolicy())
	switch step.Action {
	case hold.Release:
		t.release(ctx, job, ReleaseReady, heldSince, why)
	case hold.ReleaseWithoutCredentials:
		t.release(ctx, job, ReleaseMaxHold, heldSince, why)
	default:
		log.Debug("held Job not ready yet", "reason", why, "attempt", attempt, "retryIn", step.After)
		t.mu.Lock()
		st.attempts++
		t.mu.Unlock()
		t.jobQ.AddAfter(k, step.After)
	}
}
