package sweeper

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	batchlisters "k8s.io/client-go/listers/batch/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/jobs"
	"go.klusters.dev/credential-webhook/markers"
)

const (
	// saIndex indexes held Jobs by "namespace/serviceAccount", so a ServiceAccount change wakes
	// exactly the Jobs waiting for it.
	saIndex = "serviceaccount"
	// gcDebounce coalesces bursts of ServiceAccount deletions (a namespace going away) into one
	// collection.
	gcDebounce = 2 * time.Second
	// fieldManager names our writes in managedFields.
	fieldManager = "credential-webhook"
)

func metaFor(namespace, name string) metav1.ObjectMeta {
	return metav1.ObjectMeta{Namespace: namespace, Name: name}
}

// term is the state of one leadership term. Nothing survives a term: a new leader rebuilds it
// from the informers' initial lists.
type term struct {
	*Sweeper

	jobInformer cache.SharedIndexInformer
	jobLister   batchlisters.JobLister
	saInformer  cache.SharedIndexInformer
	saLister    corelisters.ServiceAccountLister
	jobQ        workqueue.TypedDelayingInterface[string]
	finishQ     workqueue.TypedDelayingInterface[string]
	gcTrigger   chan struct{}

	mu   sync.Mutex
	held map[string]*heldJob
	// released maps a Job key to the resourceVersion we released, so a stale cache entry of
	// that version is not taken for a Job still held (and announced again).
	released       map[string]string
	finishAttempts map[string]int
	// missing maps "namespace/name" to when garbage collection first found that
	// ServiceAccount missing (see Config.GCGrace).
	missing map[string]time.Time
	// dirty are the claims whose scopes an event made due (see ScopedCollector); dirtyPlain
	// makes the plain Collectors due.
	dirty      map[markers.Claim]bool
	dirtyPlain bool
	// leasesForbidden: deleting a lock Lease was refused (RBAC without delete); said once.
	leasesForbidden bool
}

type heldJob struct {
	uid       types.UID
	attempts  int
	announced bool
	lastWhy   string // why the last completed check failed: what a max-hold release reports
}

func newTerm(s *Sweeper) *term {
	return &term{
		Sweeper:        s,
		jobQ:           workqueue.NewTypedDelayingQueueWithConfig(workqueue.TypedDelayingQueueConfig[string]{Name: "credential-webhook-held-jobs"}),
		finishQ:        workqueue.NewTypedDelayingQueueWithConfig(workqueue.TypedDelayingQueueConfig[string]{Name: "credential-webhook-pending-serviceaccounts"}),
		gcTrigger:      make(chan struct{}, 1),
		held:           map[string]*heldJob{},
		released:       map[string]string{},
		finishAttempts: map[string]int{},
		missing:        map[string]time.Time{},
		dirty:          map[markers.Claim]bool{},
	}
}

func (t *term) run(ctx context.Context) {
	// Jobs: a label selector cannot select annotations, so list KubeStash's Jobs and filter.
	jobFactory := informers.NewSharedInformerFactoryWithOptions(t.cs, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.LabelSelector = labels.Set{annotations.ManagedByLabel: annotations.ManagedByValue}.String()
		}),
		informers.WithTransform(StripJob))
	ji := jobFactory.Batch().V1().Jobs()
	t.jobInformer, t.jobLister = ji.Informer(), ji.Lister()
	var saFactory informers.SharedInformerFactory // nil when the admission cache's informer is shared
	if shared := t.deps.ServiceAccounts; shared != nil {
		t.saInformer, t.saLister = shared, corelisters.NewServiceAccountLister(shared.GetIndexer())
	} else {
		saFactory = informers.NewSharedInformerFactoryWithOptions(t.cs, 0, informers.WithTransform(StripServiceAccount))
		si := saFactory.Core().V1().ServiceAccounts()
		t.saInformer, t.saLister = si.Informer(), si.Lister()
	}

	if err := t.jobInformer.AddIndexers(cache.Indexers{saIndex: func(obj any) ([]string, error) {
		job, ok := obj.(*batchv1.Job)
		if !ok || !IsHeld(job) {
			return nil, nil
		}
		return []string{job.Namespace + "/" + jobs.ServiceAccountName(&job.Spec.Template.Spec)}, nil
	}}); err != nil {
		t.log.Error("sweeper: job index", "error", err)
		return
	}
	regs := []func() error{}
	if r, err := t.jobInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { t.onJob(obj) },
		UpdateFunc: func(_, obj any) { t.onJob(obj) },
		DeleteFunc: t.onJobDelete,
	}); err == nil {
		regs = append(regs, func() error { return t.jobInformer.RemoveEventHandler(r) })
	}
	if r, err := t.saInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { t.onServiceAccount(nil, obj) },
		UpdateFunc: t.onServiceAccount,
		DeleteFunc: t.onServiceAccountDelete,
	}); err == nil {
		regs = append(regs, func() error { return t.saInformer.RemoveEventHandler(r) })
	}

	jobFactory.Start(ctx.Done())
	if saFactory != nil {
		saFactory.Start(ctx.Done())
	}
	defer func() {
		t.jobQ.ShutDown()
		t.finishQ.ShutDown()
		jobFactory.Shutdown()
		if saFactory != nil {
			saFactory.Shutdown()
		}
		for _, r := range regs {
			_ = r()
		}
		t.m.heldJobs.Set(0)
	}()
	if !cache.WaitForCacheSync(ctx.Done(), t.jobInformer.HasSynced, t.saInformer.HasSynced) {
		return
	}
	t.log.Info("sweeper caches synced", "jobs", len(t.jobInformer.GetStore().ListKeys()),
		"serviceaccounts", len(t.saInformer.GetStore().ListKeys()))

	var wg sync.WaitGroup
	for range t.cfg.Workers {
		wg.Go(func() { drain(t.jobQ, func(k string) { t.processJob(ctx, k) }) })
	}
	if len(t.clouds) > 0 {
		for range t.cfg.FinishWorkers {
			wg.Go(func() { drain(t.finishQ, func(k string) { t.processPending(ctx, k) }) })
		}
	}
	wg.Go(func() { t.gcLoop(ctx) })
	<-ctx.Done()
	t.jobQ.ShutDown()
	t.finishQ.ShutDown()
	wg.Wait()
}

func key(namespace, name string) string { return namespace + "/" + name }

// drain hands q's keys to process one at a time until q shuts down: the loop of every worker
// here (held Jobs, pending ServiceAccounts, the writer's planned ones).
func drain(q workqueue.TypedInterface[string], process func(k string)) {
	for {
		k, shutdown := q.Get()
		if shutdown {
			return
		}
		process(k)
		q.Done(k)
	}
}

func splitKey(k string) (namespace, name string) {
	namespace, name, _ = strings.Cut(k, "/")
	return namespace, name
}

// ---------------------------------------------------------------------------------------------
// Event handlers. They only enqueue; workers do the work.

func (t *term) onJob(obj any) {
	job, ok := obj.(*batchv1.Job)
	if !ok {
		return
	}
	k := key(job.Namespace, job.Name)
	t.mu.Lock()
	if rv, ok := t.released[k]; ok && rv != job.ResourceVersion {
		delete(t.released, k) // the cache moved past the version we released
	}
	st, tracked := t.held[k]
	t.mu.Unlock()
	switch {
	case IsHeld(job) && (!tracked || st.uid != job.UID):
		t.jobQ.Add(k) // first sight
	case !IsHeld(job) && tracked:
		t.jobQ.Add(k) // released or resumed elsewhere: the worker untracks it
	}
}

func (t *term) onJobDelete(obj any) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	if job, ok := obj.(*batchv1.Job); ok {
		t.untrack(key(job.Namespace, job.Name))
	}
}

func (t *term) onServiceAccount(oldObj, obj any) {
	sa, ok := obj.(*corev1.ServiceAccount)
	if !ok {
		return
	}
	t.ready.Observe(sa)
	if old, ok := oldObj.(*corev1.ServiceAccount); ok {
		t.claimsChanged(old, sa)
	}
	k := key(sa.Namespace, sa.Name)
	if _, pending := sa.Annotations[annotations.Pending]; pending && sa.DeletionTimestamp == nil && len(t.clouds) > 0 {
		// The replica that planned it writes it within a moment; this is the fallback.
		t.finishQ.AddAfter(k, t.cfg.Handoff)
	}
	if old, ok := oldObj.(*corev1.ServiceAccount); ok && fingerprint(old) == fingerprint(sa) &&
		old.Annotations[annotations.SeedRole] == sa.Annotations[annotations.SeedRole] &&
		old.Annotations[annotations.AzureMIName] == sa.Annotations[annotations.AzureMIName] {
		return // nothing a held Job waits for changed (a resync, a label)
	}
	// Created, or its identity changed: check the Jobs waiting for it now, from the start of
	// their backoff, rather than at the end of a long one.
	objs, err := t.jobInformer.GetIndexer().ByIndex(saIndex, k)
	if err != nil {
		return
	}
	for _, o := range objs {
		if job, ok := o.(*batchv1.Job); ok {
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

func (t *term) onServiceAccountDelete(obj any) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	sa, ok := obj.(*corev1.ServiceAccount)
	if !ok {
		return
	}
	t.ready.Forget(sa.Namespace, sa.Name)
	// Only a ServiceAccount our markers say we gave something makes a scope due; any deletion
	// makes the plain Collectors due (they cannot say what concerns them).
	t.makeDue(markerClaims(sa), t.hasPlainCollectors())
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

// ---------------------------------------------------------------------------------------------
// Held Jobs.

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

func (t *term) processJob(ctx context.Context, k string) {
	ns, name := splitKey(k)
	job, err := t.jobLister.Jobs(ns).Get(name)
	if err != nil || !IsHeld(job) {
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
	heldSince := HeldSince(job)
	saName := jobs.ServiceAccountName(&job.Spec.Template.Spec)
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

	if job.Spec.Suspend == nil || !*job.Spec.Suspend || jobs.ManagedElsewhere(job) {
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
	step := Plan(heldSince, ready, attempt, now, t.cfg)
	switch step.Action {
	case Release:
		t.release(ctx, job, ReleaseReady, heldSince, why)
	case ReleaseWithoutCredentials:
		t.release(ctx, job, ReleaseMaxHold, heldSince, why)
	default:
		log.Debug("held Job not ready yet", "reason", why, "attempt", attempt, "retryIn", step.After)
		t.mu.Lock()
		st.attempts++
		t.mu.Unlock()
		t.jobQ.AddAfter(k, step.After)
	}
}

// readiness says whether the credentials of the Job's ServiceAccount work, and why (not). The
// cloud check ends by the Job's max-hold deadline (see CheckDeadline): once it has passed, only
// the answers known without a cloud call count, and Plan releases the Job without credentials.
// checked is false when the answer is only that max hold cut the check short (or left no time).
func (t *term) readiness(ctx context.Context, job *batchv1.Job, saName string, heldSince time.Time) (ready bool, why string, checked bool) {
	sa, err := t.saLister.ServiceAccounts(job.Namespace).Get(saName)
	if apierrors.IsNotFound(err) {
		return false, fmt.Sprintf("ServiceAccount %s/%s does not exist", job.Namespace, saName), true
	} else if err != nil {
		return false, fmt.Sprintf("ServiceAccount %s/%s: %v", job.Namespace, saName, err), true
	}
	id := jobs.IdentityOf(sa)
	switch {
	case !id.Requested():
		return true, "its ServiceAccount requests no cloud identity", true
	case id.Missing != "":
		return false, id.Missing, true
	case t.ready.Ready(sa.Namespace, sa.Name):
		return true, "credentials proven earlier", true
	}
	deadline, cause, inTime := CheckDeadline(heldSince, t.now(), t.cfg)
	if !inTime {
		return false, fmt.Sprintf("max hold reached before the credentials of ServiceAccount %s/%s were proven", sa.Namespace, sa.Name), false
	}
	ctx, cancel := context.WithDeadlineCause(ctx, deadline, cause)
	defer cancel()
	var reasons []string
	for _, c := range []struct {
		cloud   string
		wanted  bool
		checker Checker
	}{{"aws", id.AWS, t.deps.AWS}, {"azure", id.Azure, t.deps.Azure}} {
		if !c.wanted {
			continue
		}
		if c.checker == nil {
			reasons = append(reasons, c.cloud+" identity assigned (no checker configured)")
			continue
		}
		ok, why, err := c.checker.Check(ctx, sa)
		switch {
		case err != nil:
			t.m.checks.WithLabelValues(c.cloud, "error").Inc()
			if errors.Is(context.Cause(ctx), ErrMaxHoldReached) {
				// Not a failure of the cloud: the Job's time is up and Plan releases it now.
				return false, fmt.Sprintf("%s check did not finish before max hold: %v", c.cloud, err), false
			}
			t.log.Warn("credential check failed", "cloud", c.cloud, "serviceaccount", key(sa.Namespace, sa.Name), "error", err)
			return false, fmt.Sprintf("%s check failed: %v", c.cloud, err), true
		case !ok:
			t.m.checks.WithLabelValues(c.cloud, "not-ready").Inc()
			return false, why, true
		}
		t.m.checks.WithLabelValues(c.cloud, "ready").Inc()
		reasons = append(reasons, why)
	}
	t.ready.MarkReady(sa)
	return true, strings.Join(reasons, "; "), true
}

// release resumes job (or, for ReleaseResumedElse, only removes our annotations) and records
// the outcome. A failed patch is retried: from a fresh cache when it conflicted, with backoff
// otherwise.
func (t *term) release(ctx context.Context, job *batchv1.Job, reason string, heldSince time.Time, why string) {
	k := key(job.Namespace, job.Name)
	patch, err := ReleasePatch(job)
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
		t.jobQ.AddAfter(k, Backoff(attempt, t.cfg.BackoffInitial, t.cfg.BackoffMax))
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

// ---------------------------------------------------------------------------------------------
// Pending ServiceAccounts.

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
		after := Backoff(attempt, t.cfg.FinishBackoffInitial, t.cfg.FinishBackoffMax)
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

// ---------------------------------------------------------------------------------------------
// Garbage collection.

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
	run := func(bucketKey string, keepDue func(), collect func(markers.Lookup) (int, error)) {
		if !full {
			if wait := t.gcBuckets.take(bucketKey, t.now()); wait > 0 {
				keepDue()
				later(wait)
				return
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
			run("scope/"+s.Key, func() { t.keepDue(s.Claim, matched) }, func(l markers.Lookup) (int, error) { return sc.CollectScope(ctx, s, l) })
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
