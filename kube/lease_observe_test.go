package kube_test

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"go.klusters.dev/credential-webhook/kube"
	"go.klusters.dev/credential-webhook/kube/kubeadapter"
)

// versionedLeases makes the fake clientset's Leases keep resourceVersions as the apiserver
// does: every write gets a new one, and an update at another than the stored one is a
// Conflict. The fake tracker does neither, and the tests below are about stale Leases.
func versionedLeases(cs *fake.Clientset) {
	next := 0 // the fake runs reactors one action at a time
	gvr := coordinationv1.SchemeGroupVersion.WithResource("leases")
	cs.PrependReactor("create", "leases", func(a k8stesting.Action) (bool, runtime.Object, error) {
		next++
		a.(k8stesting.CreateAction).GetObject().(*coordinationv1.Lease).ResourceVersion = strconv.Itoa(next)
		return false, nil, nil // the tracker stores it (or answers AlreadyExists)
	})
	cs.PrependReactor("update", "leases", func(a k8stesting.Action) (bool, runtime.Object, error) {
		lease := a.(k8stesting.UpdateAction).GetObject().(*coordinationv1.Lease)
		stored, err := cs.Tracker().Get(gvr, lease.Namespace, lease.Name)
		if err != nil {
			return false, nil, nil // the tracker answers NotFound
		}
		if rv := stored.(*coordinationv1.Lease).ResourceVersion; rv != lease.ResourceVersion {
			return true, nil, apierrors.NewConflict(gvr.GroupResource(), lease.Name, nil)
		}
		next++
		lease.ResourceVersion = strconv.Itoa(next)
		return false, nil, nil
	})
}

const (
	observeNS  = "ns"
	observeKey = "arn:aws:iam::123456789012:role/seed"
	otherKey   = "arn:aws:iam::123456789012:role/other-seed"
)

// session locks key on l, bumps when write, unlocks, and returns the API calls it made (as the
// fake saw them) and the generation it was given.
func session(t *testing.T, cs *fake.Clientset, l *kube.LeaseLocker, key string, write bool) (string, int64) {
	t.Helper()
	ctx := context.Background()
	before := len(cs.Actions())
	unlock, gen, err := l.Lock(ctx, key)
	if err != nil {
		t.Fatalf("Lock(%s): %v", key, err)
	}
	if write {
		if err := l.Bump(ctx, key); err != nil {
			t.Fatal(err)
		}
	}
	unlock()
	var verbs []string
	for _, a := range cs.Actions()[before:] {
		verbs = append(verbs, a.GetVerb())
	}
	return strings.Join(verbs, ","), gen
}

// listLeases is what the sweeper leader reads (sweeper.pruneSeedLeases).
func listLeases(t *testing.T, cs *fake.Clientset) []coordinationv1.Lease {
	t.Helper()
	list, err := cs.CoordinationV1().Leases(observeNS).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return list.Items
}

func newObserveFixture() (*fake.Clientset, *kube.LeaseLocker, *kube.LeaseLocker) {
	cs := fake.NewClientset()
	versionedLeases(cs)
	a := kube.NewLeaseLocker(kubeadapter.Wrap(cs), observeNS, "replica-a", 0, nil)
	b := kube.NewLeaseLocker(kubeadapter.Wrap(cs), observeNS, "replica-b", 0, nil)
	return cs, a, b
}

// The first lock session of a seed, on a replica that observed the sweeper's list, costs two API
// calls (take and release) like its later ones: three without the list (TestLockSessionAPICalls).
func TestObservedListFirstSessionCostsTwoCalls(t *testing.T) {
	for _, tc := range []struct {
		name      string
		prepare   func(t *testing.T, cs *fake.Clientset, a, b *kube.LeaseLocker)
		namespace string // what the list is said to be of
		want      string
		wantGen   int64
	}{
		{
			name: "free Lease in the list: updated without a Get",
			prepare: func(t *testing.T, cs *fake.Clientset, _, b *kube.LeaseLocker) {
				session(t, cs, b, observeKey, true) // replica-b created it and wrote once
			},
			namespace: observeNS, want: "update,update", wantGen: 1,
		},
		{
			name: "Lease absent from the list: created without a Get",
			prepare: func(t *testing.T, cs *fake.Clientset, _, b *kube.LeaseLocker) {
				session(t, cs, b, otherKey, true) // another seed's Lease only
			},
			namespace: observeNS, want: "create,update", wantGen: 0,
		},
		{
			name:      "empty list: created without a Get",
			prepare:   func(*testing.T, *fake.Clientset, *kube.LeaseLocker, *kube.LeaseLocker) {},
			namespace: observeNS, want: "create,update", wantGen: 0,
		},
		{
			name: "list of another namespace: ignored",
			prepare: func(t *testing.T, cs *fake.Clientset, _, b *kube.LeaseLocker) {
				session(t, cs, b, observeKey, true)
			},
			namespace: "elsewhere", want: "get,update,update", wantGen: 1,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cs, a, b := newObserveFixture()
			tc.prepare(t, cs, a, b)
			a.Observe(tc.namespace, listLeases(t, cs))
			before := len(cs.Actions())
			calls, gen := session(t, cs, a, observeKey, false)
			if calls != tc.want || gen != tc.wantGen {
				t.Errorf("first session: calls %s, generation %d; want %s at %d", calls, gen, tc.want, tc.wantGen)
			}
			if sessions, n := a.Stats(); sessions != 1 || n != int64(len(cs.Actions())-before) {
				t.Errorf("Stats() = %d sessions, %d calls; want 1 and %d", sessions, n, len(cs.Actions())-before)
			}
			if calls, _ := session(t, cs, a, observeKey, false); calls != "update,update" {
				t.Errorf("second session: calls %s, want update,update", calls)
			}
		})
	}
}

// A list is stale by the time it is observed: a Lease updated or created by another replica
// since costs the Get the list saved (Conflict or AlreadyExists, then Get), and the session
// still takes the Lease at its current generation. A Lease the list shows held is read again.
func TestObservedListStale(t *testing.T) {
	t.Run("Lease updated since the list", func(t *testing.T) {
		cs, a, b := newObserveFixture()
		session(t, cs, b, observeKey, false)
		list := listLeases(t, cs)
		session(t, cs, b, observeKey, true) // generation 1, at a newer resourceVersion
		a.Observe(observeNS, list)
		if calls, gen := session(t, cs, a, observeKey, false); calls != "update,get,update,update" || gen != 1 {
			t.Errorf("calls %s, generation %d; want update,get,update,update at 1 (the stale update conflicts)", calls, gen)
		}
	})
	t.Run("Lease created since the list", func(t *testing.T) {
		cs, a, b := newObserveFixture()
		list := listLeases(t, cs)
		session(t, cs, b, observeKey, true)
		a.Observe(observeNS, list)
		if calls, gen := session(t, cs, a, observeKey, false); calls != "create,get,update,update" || gen != 1 {
			t.Errorf("calls %s, generation %d; want create,get,update,update at 1 (the create finds it, the Get reads it)", calls, gen)
		}
		if calls, _ := session(t, cs, a, observeKey, false); calls != "update,update" {
			t.Errorf("next session: calls %s, want update,update", calls)
		}
	})
	t.Run("Lease held by another replica in the list", func(t *testing.T) {
		cs, a, b := newObserveFixture()
		unlockB, _, err := b.Lock(context.Background(), observeKey)
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Bump(context.Background(), observeKey); err != nil {
			t.Fatal(err)
		}
		a.Observe(observeNS, listLeases(t, cs))
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		if unlock, _, err := a.Lock(ctx, observeKey); err == nil {
			unlock()
			t.Fatal("replica-a took a Lease replica-b holds")
		}
		lease, err := cs.CoordinationV1().Leases(observeNS).Get(context.Background(), kube.LeaseName(observeKey), metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if h := lease.Spec.HolderIdentity; h == nil || *h != "replica-b" {
			t.Fatalf("holder %v, want replica-b", h)
		}
		unlockB()
		if calls, gen := session(t, cs, a, observeKey, false); !strings.HasPrefix(calls, "get,") || gen != 1 {
			t.Errorf("after the release: calls %s, generation %d; want a Get first, at 1", calls, gen)
		}
	})
}

// What this replica wrote or read itself is at least as new as a list it is handed later:
// Observe neither replaces it nor presumes its key absent.
func TestObserveKeepsWhatTheLockerSaw(t *testing.T) {
	t.Run("Lease written since the list", func(t *testing.T) {
		cs, a, b := newObserveFixture()
		session(t, cs, b, observeKey, false)
		list := listLeases(t, cs)
		session(t, cs, a, observeKey, true) // a's memory is newer than the list
		a.Observe(observeNS, list)
		if calls, gen := session(t, cs, a, observeKey, false); calls != "update,update" || gen != 1 {
			t.Errorf("calls %s, generation %d; want update,update at 1 (replacing the memory would conflict)", calls, gen)
		}
	})
	t.Run("Lease created since the list", func(t *testing.T) {
		cs, a, _ := newObserveFixture()
		list := listLeases(t, cs)
		session(t, cs, a, observeKey, false)
		a.Observe(observeNS, list)
		if calls, _ := session(t, cs, a, observeKey, false); calls != "update,update" {
			t.Errorf("calls %s, want update,update (a presumed absence would create)", calls)
		}
	})
	t.Run("Lease held while the list is observed", func(t *testing.T) {
		cs, a, b := newObserveFixture()
		session(t, cs, b, observeKey, false)
		list := listLeases(t, cs) // free, before a takes it
		unlock, _, err := a.Lock(context.Background(), observeKey)
		if err != nil {
			t.Fatal(err)
		}
		a.Observe(observeNS, list)
		before := len(cs.Actions())
		unlock()
		if n := len(cs.Actions()) - before; n != 1 {
			t.Errorf("release: %d calls, want 1 (the update from what the take wrote)", n)
		}
		if calls, _ := session(t, cs, a, observeKey, false); calls != "update,update" {
			t.Errorf("next session: calls %s, want update,update", calls)
		}
	})
}

// Lists come in order (the sweeper leader's full collections): what a newer list shows replaces
// what an older one did, and a Lease it lacks (the sweeper deleted it) is forgotten.
func TestObserveNewerListReplacesOlder(t *testing.T) {
	t.Run("Lease updated between the lists", func(t *testing.T) {
		cs, a, b := newObserveFixture()
		session(t, cs, b, observeKey, false)
		older := listLeases(t, cs)
		session(t, cs, b, observeKey, true)
		a.Observe(observeNS, older)
		a.Observe(observeNS, listLeases(t, cs))
		if calls, gen := session(t, cs, a, observeKey, false); calls != "update,update" || gen != 1 {
			t.Errorf("calls %s, generation %d; want update,update at 1 (the older list's Lease would conflict)", calls, gen)
		}
	})
	t.Run("Lease deleted between the lists", func(t *testing.T) {
		cs, a, b := newObserveFixture()
		session(t, cs, b, observeKey, false)
		older := listLeases(t, cs)
		if err := cs.CoordinationV1().Leases(observeNS).Delete(context.Background(), kube.LeaseName(observeKey), metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		a.Observe(observeNS, older)
		a.Observe(observeNS, listLeases(t, cs))
		if calls, gen := session(t, cs, a, observeKey, false); calls != "create,update" || gen != 0 {
			t.Errorf("calls %s, generation %d; want create,update at 0 (the older list's Lease is gone)", calls, gen)
		}
	})
}
