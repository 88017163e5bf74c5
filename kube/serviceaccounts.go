// Package kube holds the Kubernetes-facing pieces shared by the admission plugins and the
// sweeper: the API client (client.go), informers (informer.go), a ServiceAccount cache and a
// Lease-based lock per seed role.
package kube

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	listersv1 "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
)

// ServiceAccounts reads ServiceAccounts from an informer cache and falls back to a direct read
// on a miss: a Job or Pod review often arrives right after its ServiceAccount was created, before
// the watch event reached us, and a wrong "does not exist" would hold or skip it for nothing.
type ServiceAccounts struct {
	cs     Client
	lister listersv1.ServiceAccountLister
	log    *slog.Logger
	// Informer exposes the shared informer so the sweeper can subscribe to delete events
	// without a second watch.
	Informer cache.SharedIndexInformer
}

// NewServiceAccounts builds the cache. Call Start, then WaitForSync.
func NewServiceAccounts(cs Client, resync time.Duration, log *slog.Logger) *ServiceAccounts {
	inf := NewInformer(cs, cs.CoreV1().ServiceAccounts(""), &corev1.ServiceAccount{}, resync, nil)
	_ = inf.SetTransform(stripServiceAccount) // not started: cannot fail
	return &ServiceAccounts{cs: cs, lister: listersv1.NewServiceAccountLister(inf.GetIndexer()), log: log, Informer: inf}
}

// stripServiceAccount keeps only what the webhook reads (name, namespace, uid, labels,
// annotations, resourceVersion): with 10,000 ServiceAccounts, managed fields and secrets lists
// would dominate the process's memory.
func stripServiceAccount(obj any) (any, error) {
	sa, ok := obj.(*corev1.ServiceAccount)
	if !ok {
		return obj, nil
	}
	return &corev1.ServiceAccount{
		ObjectMeta: metav1.ObjectMeta{
			Name: sa.Name, Namespace: sa.Namespace, UID: sa.UID, ResourceVersion: sa.ResourceVersion,
			Labels: sa.Labels, Annotations: sa.Annotations, DeletionTimestamp: sa.DeletionTimestamp,
		},
	}, nil
}

// Start runs the informer until ctx ends.
func (s *ServiceAccounts) Start(ctx context.Context) { go s.Informer.RunWithContext(ctx) }

// WaitForSync blocks until the cache has listed once or ctx ends.
func (s *ServiceAccounts) WaitForSync(ctx context.Context) bool {
	return cache.WaitForCacheSync(ctx.Done(), s.Informer.HasSynced)
}

// Get returns the ServiceAccount, from the cache when it has it, else from the API server. A
// ServiceAccount that exists nowhere yields an error for which apierrors.IsNotFound is true.
func (s *ServiceAccounts) Get(ctx context.Context, namespace, name string) (*corev1.ServiceAccount, error) {
	if sa, err := s.lister.ServiceAccounts(namespace).Get(name); err == nil {
		return sa, nil
	} else if !apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("reading ServiceAccount %s/%s from cache: %w", namespace, name, err)
	}
	sa, err := s.cs.CoreV1().ServiceAccounts(namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		if apierrors.IsNotFound(err) {
			return nil, err
		}
		return nil, fmt.Errorf("reading ServiceAccount %s/%s: %w", namespace, name, err)
	}
	return sa, nil
}

// List returns every cached ServiceAccount.
func (s *ServiceAccounts) List() ([]*corev1.ServiceAccount, error) {
	return s.lister.List(labels.Everything())
}
