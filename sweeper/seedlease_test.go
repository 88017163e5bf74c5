package sweeper

import (
	"context"
	"slices"
	"strings"
	"testing"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/record"
	"k8s.io/utils/ptr"

	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/kube"
	"go.klusters.dev/credential-webhook/kube/kubeadapter"
)

// Issue 16: the leader deletes the lock Leases this server created for seeds no longer
// configured, and nothing else.
func TestPruneSeedLeases(t *testing.T) {
	const ns = "cw"
	configured := "arn:aws:iam::123456789012:role/kubestash/keep"
	gone := "arn:aws:iam::123456789012:role/kubestash/gone"
	busy := "arn:aws:iam::123456789012:role/kubestash/busy"
	lease := func(name, key string, held bool) *coordinationv1.Lease {
		l := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{annotations.ManagedLabel: "true"}}}
		if key != "" {
			l.Annotations = map[string]string{seedLeaseKeyAnnotation: key}
		}
		if held {
			now := metav1.NowMicro()
			l.Spec = coordinationv1.LeaseSpec{HolderIdentity: ptr.To("replica-b"), RenewTime: &now, LeaseDurationSeconds: ptr.To[int32](30)}
		}
		return l
	}
	objs := []runtime.Object{
		lease(kube.LeaseName(configured), configured, false),
		lease(kube.LeaseName(gone), gone, false),
		lease(kube.LeaseName(busy), busy, true),
		lease(DefaultLeaseName, "", true),   // the sweeper's own Lease
		lease("someone-elses", gone, false), // a name not derived from its key
	}
	unlabelled := lease(kube.LeaseName(gone+"x"), gone+"x", false)
	unlabelled.Labels = nil
	objs = append(objs, unlabelled)
	cs := fake.NewClientset(objs...)
	allowed := func(k string) bool { return k == configured }
	var shared []string // what the locker is handed: the list minus the Lease deleted
	listed := func(namespace string, leases []coordinationv1.Lease) {
		if namespace != ns {
			t.Errorf("list handed over as of namespace %q, want %q", namespace, ns)
		}
		for _, l := range leases {
			shared = append(shared, l.Name)
		}
	}
	s := New(kubeadapter.Wrap(cs), Config{Namespace: ns, Identity: "a"}, Deps{SeedLeaseAllowed: allowed, SeedLeasesListed: listed, Recorder: record.NewFakeRecorder(10)}, nil)
	newTerm(s).pruneSeedLeases(context.Background())
	list, err := cs.CoordinationV1().Leases(ns).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range list.Items {
		names = append(names, l.Name)
	}
	want := []string{kube.LeaseName(configured), kube.LeaseName(busy), DefaultLeaseName, "someone-elses", kube.LeaseName(gone + "x")}
	slices.Sort(names)
	slices.Sort(want)
	if !slices.Equal(names, want) {
		t.Fatalf("Leases left %v, want %v", names, want)
	}
	// The unlabelled Lease is left too, but not listed: the list selects the managed label.
	want = []string{kube.LeaseName(configured), kube.LeaseName(busy), DefaultLeaseName, "someone-elses"}
	slices.Sort(shared)
	slices.Sort(want)
	if !slices.Equal(shared, want) {
		t.Errorf("Leases handed to SeedLeasesListed %v, want %v", shared, want)
	}
}

// The leader's list primes its own lock (kube.LeaseLocker.Observe): its first session of a
// configured seed updates the listed Lease without a Get, and of a seed whose Lease the pruning
// deleted, creates it without one; were the deleted Lease handed over, that session would
// update it first (NotFound), then read and create it.
func TestPruneSeedLeasesPrimesTheLocker(t *testing.T) {
	const ns = "cw"
	configured := "arn:aws:iam::123456789012:role/kubestash/keep"
	gone := "arn:aws:iam::123456789012:role/kubestash/gone"
	cs := fake.NewClientset()
	ctx := context.Background()
	other := kube.NewLeaseLocker(kubeadapter.Wrap(cs), ns, "replica-b", 0, nil)
	for _, key := range []string{configured, gone} {
		unlock, _, err := other.Lock(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		unlock()
	}
	locker := kube.NewLeaseLocker(kubeadapter.Wrap(cs), ns, "replica-a", 0, nil)
	for _, tc := range []struct {
		name    string
		allowed func(string) bool
	}{
		{"without pruning", nil}, // the list is shared all the same
		{"with pruning", func(k string) bool { return k == configured }},
	} {
		s := New(kubeadapter.Wrap(cs), Config{Namespace: ns, Identity: "replica-a"},
			Deps{SeedLeaseAllowed: tc.allowed, SeedLeasesListed: locker.Observe, Recorder: record.NewFakeRecorder(10)}, nil)
		newTerm(s).pruneSeedLeases(ctx)
		if tc.allowed == nil {
			if _, err := cs.CoordinationV1().Leases(ns).Get(ctx, kube.LeaseName(gone), metav1.GetOptions{}); err != nil {
				t.Fatalf("%s: the Lease of %s: %v", tc.name, gone, err)
			}
		}
	}
	for key, want := range map[string]string{configured: "update,update", gone: "create,update"} {
		before := len(cs.Actions())
		unlock, _, err := locker.Lock(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		unlock()
		var verbs []string
		for _, a := range cs.Actions()[before:] {
			verbs = append(verbs, a.GetVerb())
		}
		if got := strings.Join(verbs, ","); got != want {
			t.Errorf("first session of %s: calls %s, want %s", key, got, want)
		}
	}
}
