package sweeper

import (
	"context"
	"slices"
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
	s := New(kubeadapter.Wrap(cs), Config{Namespace: ns, Identity: "a"}, Deps{SeedLeaseAllowed: allowed, Recorder: record.NewFakeRecorder(10)}, nil)
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
}
