package sweeper

import (
	"context"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"go.klusters.dev/credential-webhook/annotations"
)

// The writer finishes pending ServiceAccounts as soon as the shared informer delivers them
// persisted: it runs on every replica, but only one of them writes.
//
//   - With a sweeper campaigning in this process (Run), the writer of the replica that leads
//     writes every pending ServiceAccount, whichever replica's admission planned it, and the
//     other replicas' writers write nothing. One writer per cluster means one lock session per
//     seed at a time, from a cache nobody else changed: when every replica wrote what it planned,
//     the replicas took each seed's Lease in turns, and every turn after the other's write began
//     with a reload of the seed's roles, so a burst of 1,000 ServiceAccounts took ~20 s to trust
//     at 100 ms of IAM latency. Held Jobs are released by the leader anyway, so writing there adds
//     no replica that a Job waits on.
//   - Without a sweeper (--sweeper=false) nobody leads: each replica writes what its own
//     admission planned (Planned).
//
// The writer tries once (and again after a stale read): a failure is left to the leader's
// finisher, which finishes every pending ServiceAccount after Config.Handoff with backoff, so a
// cloud outage is retried by one replica, not by all of them.

// plannedTTL bounds how long a plan waits to be seen persisted: a review whose object was never
// stored (refused later in the chain, or forged) is forgotten after it.
const plannedTTL = time.Minute

// maxPlanned bounds the remembered plans, so a flood of forged reviews cannot grow memory.
const maxPlanned = 1 << 16

type writer struct {
	s      *Sweeper
	lister corelisters.ServiceAccountLister
	q      workqueue.TypedDelayingInterface[string]

	mu      sync.Mutex
	planned map[string]time.Time // "namespace/name" -> when admission planned it
}

// Planned records that admission on this replica planned namespace/name; the writer finishes it
// when the informer shows it persisted. Safe to call before Run and from any goroutine.
func (s *Sweeper) Planned(namespace, name string) {
	if s.campaigning.Load() {
		return // the leader's writer writes every pending ServiceAccount
	}
	w := s.writer
	now := s.now()
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.planned) >= maxPlanned {
		for k, at := range w.planned {
			if now.Sub(at) > plannedTTL {
				delete(w.planned, k)
			}
		}
		if len(w.planned) >= maxPlanned {
			return // the leader's fallback still finishes it, after Handoff
		}
	}
	w.planned[key(namespace, name)] = now
}

// take reports whether k was planned here recently and forgets it.
func (w *writer) take(k string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	at, ok := w.planned[k]
	delete(w.planned, k)
	return ok && w.s.now().Sub(at) <= plannedTTL
}

func (w *writer) has(k string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	_, ok := w.planned[k]
	return ok
}

func (w *writer) onServiceAccount(oldObj, obj any) {
	sa, ok := obj.(*corev1.ServiceAccount)
	if !ok || sa.DeletionTimestamp != nil {
		return
	}
	if _, pending := sa.Annotations[annotations.Pending]; !pending {
		return
	}
	if old, ok := oldObj.(*corev1.ServiceAccount); ok && w.s.leading.Load() && old.Annotations[annotations.Pending] == sa.Annotations[annotations.Pending] {
		// The leader takes a ServiceAccount when it appears, and again only when admission planned
		// it anew: any other update (a label) would retry a failing cloud at once, outside the
		// finisher's backoff, as often as someone updates it.
		return
	}
	if k := key(sa.Namespace, sa.Name); writes(w.s.leading.Load(), w.s.campaigning.Load(), w.has(k)) {
		w.q.Add(k)
	}
}

// writes decides whether this replica's writer writes a pending ServiceAccount (see the top of
// this file): the leader writes every one; where a sweeper campaigns, another replica leads (or
// will) and writes it; without a sweeper, each replica writes what it planned.
func writes(leading, campaigning, planned bool) bool {
	switch {
	case leading:
		return true
	case campaigning:
		return false
	}
	return planned
}

// mayWrite reports whether this replica's writer writes k now, and forgets k's plan either way.
func (w *writer) mayWrite(k string) bool {
	return writes(w.s.leading.Load(), w.s.campaigning.Load(), w.take(k))
}

// leadingStarted queues every pending ServiceAccount the informer holds: the informer delivered
// them before this replica led, when its writer left them to the leader of the time.
func (w *writer) leadingStarted() {
	informer := w.s.deps.ServiceAccounts
	if informer == nil || len(w.s.clouds) == 0 {
		return // RunWriter does not run: nobody would take them from the queue
	}
	for _, obj := range informer.GetStore().List() {
		if sa, ok := obj.(*corev1.ServiceAccount); ok && sa.DeletionTimestamp == nil {
			if _, pending := sa.Annotations[annotations.Pending]; pending {
				w.q.Add(key(sa.Namespace, sa.Name))
			}
		}
	}
}

// run serves the writer until ctx ends. informer is the shared ServiceAccount informer (already
// started by its owner).
func (w *writer) run(ctx context.Context, informer cache.SharedIndexInformer) {
	reg, err := informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { w.onServiceAccount(nil, obj) },
		UpdateFunc: w.onServiceAccount,
	})
	if err != nil {
		w.s.log.Error("writer disabled: cannot watch ServiceAccounts", "error", err)
		return
	}
	defer func() { _ = informer.RemoveEventHandler(reg) }()
	w.lister = corelisters.NewServiceAccountLister(informer.GetIndexer())
	var wg sync.WaitGroup
	for range w.s.cfg.WriterWorkers {
		wg.Go(func() { drain(w.q, func(k string) { w.process(ctx, k) }) })
	}
	<-ctx.Done()
	w.q.ShutDown()
	wg.Wait()
}

func (w *writer) process(ctx context.Context, k string) {
	if !w.mayWrite(k) {
		return
	}
	ns, name := splitKey(k)
	sa, err := w.lister.ServiceAccounts(ns).Get(name)
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, w.s.cfg.CheckTimeout)
	defer cancel()
	out, err := w.s.finish(ctx, sa)
	switch {
	case err != nil:
		w.s.m.finishes.WithLabelValues("writer_error").Inc()
		w.s.log.Warn("writing a planned ServiceAccount failed; the sweeper leader retries it", "serviceaccount", k, "error", err)
	case out == stale && w.s.leading.Load():
		// Someone changed it between our read and our patch: look again once the cache caught up.
		w.q.AddAfter(k, w.s.cfg.BackoffInitial)
	case out == stale:
		// Someone changed it between our read and our patch (admission re-planned it): the
		// informer delivers the new version, which we take again.
		w.mu.Lock()
		w.planned[k] = w.s.now()
		w.mu.Unlock()
	}
}
