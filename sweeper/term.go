package sweeper

import (
	"context"
	"strings"
	"sync"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	"k8s.io/apimachinery/pkg/types"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"go.klusters.dev/credential-webhook/markers"
)

// fieldManager names our writes in managedFields.
const fieldManager = "credential-webhook"

// term is the state of one leadership term. Nothing survives a term: a new leader rebuilds it
// from the informers' initial lists.
type term struct {
	*Sweeper

	jobInformer cache.SharedIndexInformer
	jobs        cache.Indexer // holds *cachedJob (strip.go): read with job
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

// run is one leadership term: it watches Jobs and ServiceAccounts (informers.go), and once the
// caches are synced runs the held-Job workers (jobloop.go), the pending-ServiceAccount workers
// (finisher.go) and the garbage collection loop (gc.go) until ctx ends.
func (t *term) run(ctx context.Context) {
	stopWatching, err := t.watch(ctx)
	if err != nil {
		t.log.Error("sweeper: watching Jobs and ServiceAccounts", "error", err)
		return
	}
	defer func() {
		t.jobQ.ShutDown()
		t.finishQ.ShutDown()
		stopWatching()
		t.m.heldJobs.Set(0)
	}()
	if !cache.WaitForCacheSync(ctx.Done(), t.jobInformer.HasSynced, t.saInformer.HasSynced) {
		return
	}
	t.log.Info("sweeper caches synced", "jobs", len(t.jobInformer.GetStore().ListKeys()),
		"serviceaccounts", len(t.saInformer.GetStore().ListKeys()))
	// The state gauges read these caches at scrape time, while this term leads.
	t.m.state.set(t.cacheSource())
	defer t.m.state.set(nil)

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

// job returns the cached Job namespace/name, as the hold package reads it.
func (t *term) job(namespace, name string) (*batchv1.Job, bool) {
	obj, ok, err := t.jobs.GetByKey(key(namespace, name))
	if err != nil || !ok {
		return nil, false
	}
	j, ok := asJob(obj)
	return &j, ok
}

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
