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

// The writer runs on every replica, leader or not. Admission tells it which ServiceAccounts it
// planned (Planned); when the shared informer delivers one of them persisted and still pending,
// the writer finishes it at once. It tries once (and again after a stale read): a failure is left
// to the leader, which finishes every pending ServiceAccount after Config.Handoff with backoff,
// so a cloud outage is retried by one replica, not by all of them.

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

func (w *writer) onServiceAccount(obj any) {
	sa, ok := obj.(*corev1.ServiceAccount)
	if !ok || sa.DeletionTimestamp != nil {
		return
	}
	if _, pending := sa.Annotations[annotations.Pending]; !pending {
		return
	}
	if k := key(sa.Namespace, sa.Name); w.has(k) {
		w.q.Add(k)
	}
}

// run serves the writer until ctx ends. informer is the shared ServiceAccount informer (already
// started by its owner).
func (w *writer) run(ctx context.Context, informer cache.SharedIndexInformer) {
	reg, err := informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    w.onServiceAccount,
		UpdateFunc: func(_, obj any) { w.onServiceAccount(obj) },
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
	if !w.take(k) {
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
	case out == stale:
		// Someone changed it between our read and our patch (admission re-planned it): the
		// informer delivers the new version, which we take again.
		w.mu.Lock()
		w.planned[k] = w.s.now()
		w.mu.Unlock()
	}
}
