package kube_test

import (
	"context"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"go.klusters.dev/credential-webhook/kube"
	"go.klusters.dev/credential-webhook/kube/kubeadapter"
)

// A burst on one replica locks the same seed again and again: after the first session, each
// costs two API calls (take, release), bumped or not, and the generation still counts every
// session that wrote. The Lease's conflicts and expiry are tested against a real apiserver
// (e2e TestLeaseLocker); this counts calls.
func TestLockSessionAPICalls(t *testing.T) {
	cs := fake.NewClientset()
	l := kube.NewLeaseLocker(kubeadapter.Wrap(cs), "ns", "replica-a", 0, nil)
	ctx := context.Background()
	const key = "arn:aws:iam::123456789012:role/seed"
	session := func(write bool) (calls []string, gen int64) {
		before := len(cs.Actions())
		unlock, gen, err := l.Lock(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		if write {
			if err := l.Bump(ctx, key); err != nil {
				t.Fatal(err)
			}
		}
		unlock()
		for _, a := range cs.Actions()[before:] {
			calls = append(calls, a.GetVerb())
		}
		return calls, gen
	}
	if calls, gen := session(true); strings.Join(calls, ",") != "get,create,update" || gen != 0 {
		t.Errorf("first session: calls %v, generation %d; want get,create,update at 0", calls, gen)
	}
	for i := 1; i <= 3; i++ {
		calls, gen := session(i != 2)
		if got := strings.Join(calls, ","); got != "update,update" {
			t.Errorf("session %d: calls %v, want update,update", i+1, calls)
		}
		want := map[int]int64{1: 1, 2: 2, 3: 2}[i] // session 3 did not write
		if gen != want {
			t.Errorf("session %d: generation %d, want %d", i+1, gen, want)
		}
	}
	if err := l.Bump(ctx, key); err == nil {
		t.Error("Bump outside a session succeeded")
	}
	// The metrics count the same: 4 sessions, 3 + 2*3 calls.
	if sessions, calls := l.Stats(); sessions != 4 || calls != int64(len(cs.Actions())) || calls != 9 {
		t.Errorf("Stats() = %d sessions, %d calls; want 4 and 9 (the fake saw %d)", sessions, calls, len(cs.Actions()))
	}
}

// A Lease changed by someone else since this replica last saw it (here: at the release) costs
// the Get the memory saved, and the update then succeeds.
func TestLockAfterAnotherReplicaReadsAgain(t *testing.T) {
	cs := fake.NewClientset()
	// The fake tracker does not check resourceVersion: answer a stale update with a conflict as
	// the apiserver does once another replica has written.
	stale := true
	cs.PrependReactor("update", "leases", func(k8stesting.Action) (bool, runtime.Object, error) {
		if stale {
			stale = false
			return true, nil, apierrors.NewConflict(schema.GroupResource{Group: "coordination.k8s.io", Resource: "leases"}, "l", nil)
		}
		return false, nil, nil
	})
	l := kube.NewLeaseLocker(kubeadapter.Wrap(cs), "ns", "replica-a", 0, nil)
	ctx := context.Background()
	const key = "arn:aws:iam::123456789012:role/seed"
	// Seed the replica's memory with a first session (its release meets the conflict and reads again).
	unlock, _, err := l.Lock(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	unlock()
	var verbs []string
	for _, a := range cs.Actions() {
		verbs = append(verbs, a.GetVerb())
	}
	if got := strings.Join(verbs, ","); got != "get,create,update,get,update" {
		t.Errorf("calls %s, want get,create,update,get,update (the conflicting release reads the Lease again)", got)
	}
}

// A session that outlives three quarters of its Lease stops writing: Bump and Held refuse, by
// the local clock, measured from the take (not from when the replica started waiting).
func TestHeldRefusesNearExpiry(t *testing.T) {
	l := kube.NewLeaseLocker(kubeadapter.Wrap(fake.NewClientset()), "ns", "replica-a", time.Second, nil)
	ctx := context.Background()
	const key = "arn:aws:iam::123456789012:role/seed"
	unlock, _, err := l.Lock(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	if err := l.Held(key); err != nil {
		t.Fatalf("Held right after the take: %v", err)
	}
	if err := l.Bump(ctx, key); err != nil {
		t.Fatalf("Bump right after the take: %v", err)
	}
	time.Sleep(800 * time.Millisecond) // past 3/4 of the 1 s Lease
	if err := l.Held(key); err == nil {
		t.Error("Held 0.8 s into a 1 s Lease succeeded")
	}
	if err := l.Bump(ctx, key); err == nil {
		t.Error("Bump 0.8 s into a 1 s Lease succeeded")
	}
}
