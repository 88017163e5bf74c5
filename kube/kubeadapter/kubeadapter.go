// Package kubeadapter turns a client-go clientset (kubernetes.Interface: a fake in tests, a real
// one in tools and the e2e tests) into the kube.Client the server's packages take. The server
// itself never imports it: see package kube for why it does not use client-go's clientset.
package kubeadapter

import (
	batchv1 "k8s.io/api/batch/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/client-go/kubernetes"

	"go.klusters.dev/credential-webhook/kube"
)

// Wrap returns cs as a kube.Client. Requests go to cs's typed clients, so a fake clientset's
// reactors and object tracker see them as before.
func Wrap(cs kubernetes.Interface) kube.Client { return clientset{cs} }

type clientset struct{ cs kubernetes.Interface }

// IsWatchListSemanticsUnSupported passes on what a fake clientset says of itself: an informer
// must not wait for the watch-list bookmark a fake never sends.
func (c clientset) IsWatchListSemanticsUnSupported() bool {
	u, ok := c.cs.(interface{ IsWatchListSemanticsUnSupported() bool })
	return ok && u.IsWatchListSemanticsUnSupported()
}

func (c clientset) CoreV1() kube.CoreV1Client                 { return coreV1{c} }
func (c clientset) BatchV1() kube.BatchV1Client               { return batchV1{c} }
func (c clientset) CoordinationV1() kube.CoordinationV1Client { return coordinationV1{c} }
func (c clientset) RbacV1() kube.RbacV1Client                 { return rbacV1{c} }

type coreV1 struct{ clientset }

func (g coreV1) ServiceAccounts(namespace string) kube.ServiceAccountClient {
	return g.cs.CoreV1().ServiceAccounts(namespace)
}

func (g coreV1) Events(namespace string) kube.Resource[*corev1.Event, *corev1.EventList] {
	return g.cs.CoreV1().Events(namespace)
}

type batchV1 struct{ clientset }

func (g batchV1) Jobs(namespace string) kube.Resource[*batchv1.Job, *batchv1.JobList] {
	return g.cs.BatchV1().Jobs(namespace)
}

type coordinationV1 struct{ clientset }

func (g coordinationV1) Leases(namespace string) kube.Resource[*coordinationv1.Lease, *coordinationv1.LeaseList] {
	return g.cs.CoordinationV1().Leases(namespace)
}

type rbacV1 struct{ clientset }

func (g rbacV1) ClusterRoles() kube.Resource[*rbacv1.ClusterRole, *rbacv1.ClusterRoleList] {
	return g.cs.RbacV1().ClusterRoles()
}

func (g rbacV1) ClusterRoleBindings() kube.Resource[*rbacv1.ClusterRoleBinding, *rbacv1.ClusterRoleBindingList] {
	return g.cs.RbacV1().ClusterRoleBindings()
}
