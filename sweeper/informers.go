package sweeper

import (
	"context"
	"fmt"
	"sync"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/hold"
	"go.klusters.dev/credential-webhook/kube"
)

// The term's informers and their event handlers. Handlers only enqueue or mark work due; the
// loops (jobloop.go, finisher.go, gc.go) do the work.

const (
	// saIndex indexes held Jobs by "namespace/serviceAccount", so a ServiceAccount change wakes
	// exactly the Jobs waiting for it.
	saIndex = "serviceaccount"
	// gcDebounce coalesces bursts of ServiceAccount deletions (a namespace going away) into one
	// collection.
	gcDebounce = 2 * time.Second
)

// watch builds and starts the term's informers: KubeStash's Jobs (its own, stripped), and every
// ServiceAccount (the admission cache's shared informer when Deps.ServiceAccounts is set, else
// its own). stop shuts down what watch started and removes its handlers.
func (t *term) watch(ctx context.Context) (stop func(), err error) {
	// Jobs: a label selector cannot select annotations, so list KubeStash's Jobs and filter.
	t.jobInformer = kube.NewInformer(t.cs, t.cs.BatchV1().Jobs(""), &batchv1.Job{}, 0, func(o *metav1.ListOptions) {
		o.LabelSelector = labels.Set{annotations.ManagedByLabel: annotations.ManagedByValue}.String()
	})
	_ = t.jobInformer.SetTransform(t.strip.Job) // not started: cannot fail
	t.jobs = t.jobInformer.GetIndexer()
	informers := []cache.SharedIndexInformer{t.jobInformer} // the ones this term runs
	if shared := t.deps.ServiceAccounts; shared != nil {
		t.saInformer = shared
	} else {
		t.saInformer = kube.NewInformer(t.cs, t.cs.CoreV1().ServiceAccounts(""), &corev1.ServiceAccount{}, 0, nil)
		_ = t.saInformer.SetTransform(t.strip.ServiceAccount)
		informers = append(informers, t.saInformer)
	}
	t.saLister = corelisters.NewServiceAccountLister(t.saInformer.GetIndexer())

	if err := t.jobInformer.AddIndexers(cache.Indexers{saIndex: func(obj any) ([]string, error) {
		job, ok := asJob(obj)
		if !ok || !hold.IsHeld(&job) {
			return nil, nil
		}
		return []string{job.Namespace + "/" + hold.ServiceAccountName(&job.Spec.Template.Spec)}, nil
	}}); err != nil {
		return nil, fmt.Errorf("indexing held Jobs by ServiceAccount: %w", err)
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

	// As an informer factory's Start and Shutdown: run until stop, which waits for them.
	runCtx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for _, inf := range informers {
		wg.Go(func() { inf.RunWithContext(runCtx) })
	}
	return func() {
		cancel()
		wg.Wait()
		for _, r := range regs {
			_ = r()
		}
	}, nil
}

// onServiceAccount hands a ServiceAccount added or changed to everything that waits on one: the
// ready cache (a changed identity is no longer proven), garbage collection (claims it gave up),
// the finisher (still pending) and the held Jobs running as it.
func (t *term) onServiceAccount(oldObj, obj any) {
	sa, ok := obj.(*corev1.ServiceAccount)
	if !ok {
		return
	}
	old, _ := oldObj.(*corev1.ServiceAccount)
	t.ready.Observe(sa)
	if old != nil {
		t.claimsChanged(old, sa)
	}
	t.pendingSeen(sa)
	t.wakeHeldJobs(old, sa)
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
