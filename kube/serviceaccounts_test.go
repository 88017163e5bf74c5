package kube_test

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"go.klusters.dev/credential-webhook/kube"
	"go.klusters.dev/credential-webhook/kube/kubeadapter"
)

// The cache lists and watches through kube.Client (here a fake clientset, which supports no
// watch-list streaming: the informer must not wait for its bookmark), keeps the objects
// stripped, and reads through to the API on a miss.
func TestServiceAccountsCache(t *testing.T) {
	cs := fake.NewClientset(
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "a", Namespace: "demo", UID: "ua"}, Secrets: []corev1.ObjectReference{{Name: "t"}}},
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "b", Namespace: "other", UID: "ub"}},
	)
	sas := kube.NewServiceAccounts(kubeadapter.Wrap(cs), 0, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	watching, stopWatching := context.WithCancel(ctx)
	sas.Start(watching)
	if !sas.WaitForSync(ctx) {
		t.Fatal("the cache did not sync")
	}
	all, err := sas.List()
	if err != nil || len(all) != 2 {
		t.Fatalf("List: %d ServiceAccounts, %v; want 2", len(all), err)
	}
	before := len(cs.Actions())
	a, err := sas.Get(ctx, "demo", "a")
	if err != nil || a.UID != "ua" || a.Secrets != nil {
		t.Fatalf("Get demo/a: %+v, %v; want it from the cache, stripped", a, err)
	}
	if len(cs.Actions()) != before {
		t.Errorf("a cached ServiceAccount was read from the API: %v", cs.Actions()[before:])
	}
	// Created while the cache no longer watches: a miss reads the API.
	stopWatching()
	if _, err := cs.CoreV1().ServiceAccounts("demo").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "c", Namespace: "demo", UID: "uc"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if c, err := sas.Get(ctx, "demo", "c"); err != nil || c.UID != "uc" {
		t.Fatalf("Get demo/c: %v, %v", c, err)
	}
	if _, err := sas.Get(ctx, "demo", "missing"); !apierrors.IsNotFound(err) {
		t.Fatalf("Get demo/missing: %v, want NotFound", err)
	}
}
