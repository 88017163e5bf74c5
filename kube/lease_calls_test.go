package kube_test

import (
	"context"
	"strings"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
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

// Renew extends the hold with one update: the Lease keeps its holder and gets a new RenewTime,
// Held measures from the renewal, the renewal counts as a session in Stats, and the bumps of
// the whole hold reach the generation at the release. A Lease another replica took (ours
// expired) cannot be renewed, and neither can one this replica does not hold.
func TestRenewExtendsTheHold(t *testing.T) {
	cs := fake.NewClientset()
	l := kube.NewLeaseLocker(kubeadapter.Wrap(cs), "ns", "replica-a", 2*time.Second, nil)
	ctx := context.Background()
	const key = "arn:aws:iam::123456789012:role/seed"
	if _, err := l.Renew(ctx, key); err == nil || len(cs.Actions()) != 0 {
		t.Fatalf("Renew of a lock not held: error %v after %d calls; want an error and no call", err, len(cs.Actions()))
	}
	unlock, gen, err := l.Lock(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Bump(ctx, key); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second) // two thirds of the way to Held's 3/4 of the 2 s Lease
	before := len(cs.Actions())
	at, err := l.Renew(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	var verbs []string
	for _, a := range cs.Actions()[before:] {
		verbs = append(verbs, a.GetVerb())
	}
	if got := strings.Join(verbs, ","); got != "update" {
		t.Errorf("Renew made calls %s, want one update", got)
	}
	lease, err := cs.CoordinationV1().Leases("ns").Get(ctx, kube.LeaseName(key), metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if h := lease.Spec.HolderIdentity; h == nil || *h != "replica-a" || lease.Spec.RenewTime == nil || lease.Spec.RenewTime.Sub(at).Abs() >= time.Microsecond {
		t.Errorf("after Renew the Lease is held by %v, renewed at %v; want replica-a at %v", h, lease.Spec.RenewTime, at)
	}
	time.Sleep(time.Second) // 2 s after the take, past 3/4 of the Lease; 1 s after the renewal
	if err := l.Held(key); err != nil {
		t.Errorf("Held 1 s after a renewal (2 s after the take) refused: %v", err)
	}
	if err := l.Bump(ctx, key); err != nil {
		t.Fatal(err)
	}
	unlock()
	if sessions, _ := l.Stats(); sessions != 2 {
		t.Errorf("Stats() = %d sessions; want 2, the take and the renewal", sessions)
	}
	unlock2, gen2, err := l.Lock(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if gen2 != gen+2 {
		t.Errorf("generation %d after a hold that bumped before and after its renewal; want %d", gen2, gen+2)
	}
	// Another replica takes the Lease over (ours "expired"): the renewal must not take it back.
	lease, err = cs.CoordinationV1().Leases("ns").Get(ctx, kube.LeaseName(key), metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	other := "replica-b"
	lease.Spec.HolderIdentity = &other
	if _, err := cs.CoordinationV1().Leases("ns").Update(ctx, lease, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	// The replica's memory of the Lease is stale now. The fake does not check resourceVersion:
	// answer an update that would take the Lease from replica-b with the conflict the apiserver
	// gives a stale update; the renewal must then read the Lease and refuse.
	cs.PrependReactor("update", "leases", func(a k8stesting.Action) (bool, runtime.Object, error) {
		upd := a.(k8stesting.UpdateAction).GetObject().(*coordinationv1.Lease)
		cur, err := cs.Tracker().Get(coordinationv1.SchemeGroupVersion.WithResource("leases"), "ns", upd.Name)
		if err == nil {
			if h := cur.(*coordinationv1.Lease).Spec.HolderIdentity; h != nil && *h == other && (upd.Spec.HolderIdentity == nil || *upd.Spec.HolderIdentity != other) {
				return true, nil, apierrors.NewConflict(schema.GroupResource{Group: "coordination.k8s.io", Resource: "leases"}, upd.Name, nil)
			}
		}
		return false, nil, nil
	})
	if _, err := l.Renew(ctx, key); err == nil {
		t.Error("Renew succeeded on a Lease replica-b holds")
	}
	lease, _ = cs.CoordinationV1().Leases("ns").Get(ctx, kube.LeaseName(key), metav1.GetOptions{})
	if h := lease.Spec.HolderIdentity; h == nil || *h != other {
		t.Errorf("after the refused renewal the Lease is held by %v, want replica-b", h)
	}
	unlock2()
}
