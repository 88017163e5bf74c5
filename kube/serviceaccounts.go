// Package kube holds the Kubernetes-facing pieces shared by the admission plugins and the
// sweeper: a ServiceAccount cache and a Lease-based lock per seed role.
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
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	listersv1 "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
)

// ServiceAccounts reads ServiceAccounts from an informer cache and falls back to a direct read
// on a miss: a Job or Pod review often arrives right after its ServiceAccount was created, before
// the watch event reached us, and a wrong "does not exist" would hold or skip it for nothing.
type ServiceAccounts struct {
	cs      kubernetes.Interface
	lister  listersv1.ServiceAccountLister
	synced  cache.InformerSynced
	factory informers.SharedInformerFactory
	log     *slog.Logger
	// Informer exposes the shared informer so the sweeper can subscribe to delete events
	// without a second watch.
	Informer cache.SharedIndexInformer
}

// NewServiceAccounts builds the cache. Call Start, then WaitForSync.
func NewServiceAccounts(cs kubernetes.Interface, resync time.Duration, log *slog.Logger) *ServiceAccounts {
	f := informers.NewSharedInformerFactoryWithOptions(cs, resync, informers.WithTransform(stripServiceAccount))
	inf := f.Core().V1().ServiceAccounts()
	return &ServiceAccounts{cs: cs, lister: inf.Lister(), synced: inf.Informer().HasSynced, factory: f, log: log, Informer: inf.Informer()}
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
func (s *ServiceAccounts) Start(ctx context.Context) { s.factory.Start(ctx.Done()) }

// WaitForSync blocks until the cache has listed once or ctx ends.
func (s *ServiceAccounts) WaitForSync(ctx context.Context) bool {
	return cache.WaitForCacheSync(ctx.Done(), s.synced)
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
