package azure

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/kube"
	"go.klusters.dev/credential-webhook/kube/kubeadapter"
)

const rbacName = RBACNamePrefix + testClientID

// fakeCluster is client-go's fake clientset plus what its object tracker lacks: it neither sets
// metadata.resourceVersion nor checks it on update, nor honours delete preconditions, so
// concurrent read-modify-write would silently lose updates there (last write wins) where a real
// apiserver answers 409 Conflict. The reactors below add exactly the apiserver's optimistic
// concurrency (resourceVersion and UID checks); they run under the fake's lock, so check-and-
// write is atomic like in etcd. Everything else is the stock fake.
type fakeCluster struct {
	*fake.Clientset
	rv        atomic.Int64
	conflicts atomic.Int64
}

func newFakeCluster(objs ...runtime.Object) *fakeCluster {
	c := &fakeCluster{Clientset: fake.NewClientset()}
	tracker := c.Tracker()
	for _, o := range objs {
		m, _ := meta.Accessor(o)
		c.stamp(m)
		if err := tracker.Add(o); err != nil {
			panic(err)
		}
	}
	c.PrependReactor("delete", "*", func(a k8stesting.Action) (bool, runtime.Object, error) {
		d := a.(k8stesting.DeleteAction)
		pre := d.GetDeleteOptions().Preconditions
		if pre == nil {
			return false, nil, nil
		}
		cur, err := tracker.Get(a.GetResource(), a.GetNamespace(), d.GetName())
		if err != nil {
			return false, nil, nil
		}
		m, _ := meta.Accessor(cur)
		if pre.ResourceVersion != nil && *pre.ResourceVersion != m.GetResourceVersion() ||
			pre.UID != nil && *pre.UID != m.GetUID() {
			c.conflicts.Add(1)
			return true, nil, apierrors.NewConflict(a.GetResource().GroupResource(), d.GetName(), errors.New("precondition failed"))
		}
		return false, nil, nil
	})
	c.PrependReactor("update", "*", func(a k8stesting.Action) (bool, runtime.Object, error) {
		obj := a.(k8stesting.UpdateAction).GetObject()
		m, _ := meta.Accessor(obj)
		cur, err := tracker.Get(a.GetResource(), a.GetNamespace(), m.GetName())
		if err != nil {
			return false, nil, nil // the tracker answers NotFound
		}
		cm, _ := meta.Accessor(cur)
		if m.GetResourceVersion() != "" && m.GetResourceVersion() != cm.GetResourceVersion() {
			c.conflicts.Add(1)
			return true, nil, apierrors.NewConflict(a.GetResource().GroupResource(), m.GetName(), errors.New("the object has been modified"))
		}
		m.SetUID(cm.GetUID())
		m.SetResourceVersion(strconv.FormatInt(c.rv.Add(1), 10))
		return false, nil, nil
	})
	c.PrependReactor("create", "*", func(a k8stesting.Action) (bool, runtime.Object, error) {
		m, _ := meta.Accessor(a.(k8stesting.CreateAction).GetObject())
		c.stamp(m)
		return false, nil, nil
	})
	return c
}

// The server's packages take a kube.Client; fakeCluster is one, through package kubeadapter.
func (c *fakeCluster) CoreV1() kube.CoreV1Client   { return kubeadapter.Wrap(c.Clientset).CoreV1() }
func (c *fakeCluster) BatchV1() kube.BatchV1Client { return kubeadapter.Wrap(c.Clientset).BatchV1() }
func (c *fakeCluster) CoordinationV1() kube.CoordinationV1Client {
	return kubeadapter.Wrap(c.Clientset).CoordinationV1()
}
func (c *fakeCluster) RbacV1() kube.RbacV1Client { return kubeadapter.Wrap(c.Clientset).RbacV1() }

func (c *fakeCluster) stamp(m metav1.Object) {
	n := c.rv.Add(1)
	m.SetResourceVersion(strconv.FormatInt(n, 10))
	m.SetUID(types.UID(fmt.Sprintf("uid-%d", n)))
}

func (c *fakeCluster) binding(t *testing.T) *rbacv1.ClusterRoleBinding {
	t.Helper()
	b, err := c.RbacV1().ClusterRoleBindings().Get(context.Background(), rbacName, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get binding: %v", err)
	}
	return b
}

// writes counts create/update/delete actions (what a real apiserver would have to persist).
func (c *fakeCluster) writes() int {
	n := 0
	for _, a := range c.Actions() {
		switch a.GetVerb() {
		case "create", "update", "delete", "patch":
			n++
		}
	}
	return n
}

func saSubject(ns, name string) rbacv1.Subject {
	return rbacv1.Subject{Kind: rbacv1.ServiceAccountKind, Namespace: ns, Name: name}
}

func TestEnsureBindingCreates(t *testing.T) {
	c := newFakeCluster()
	ctx := context.Background()
	// Upper-case client ID: names and the resource are lower-cased.
	if err := EnsureBinding(ctx, c, strings.ToUpper(testClientID), "demo", "sample-backup-daemon-demo-session-1778072138"); err != nil {
		t.Fatal(err)
	}
	role, err := c.RbacV1().ClusterRoles().Get(ctx, rbacName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	wantRules := []rbacv1.PolicyRule{{APIGroups: []string{"cid.wi.aks.azure.com"}, Resources: []string{testClientID}, Verbs: []string{"use-managed-identity"}}}
	if fmt.Sprint(role.Rules) != fmt.Sprint(wantRules) {
		t.Errorf("role rules %+v", role.Rules)
	}
	if role.Labels[annotations.ManagedLabel] != "true" {
		t.Errorf("role labels %v", role.Labels)
	}
	b := c.binding(t)
	if b.Labels[annotations.ManagedLabel] != "true" {
		t.Errorf("binding labels %v", b.Labels)
	}
	if b.RoleRef != (rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: rbacName}) {
		t.Errorf("roleRef %+v", b.RoleRef)
	}
	if want := []rbacv1.Subject{saSubject("demo", "sample-backup-daemon-demo-session-1778072138")}; !slices.Equal(b.Subjects, want) {
		t.Errorf("subjects %+v", b.Subjects)
	}
}

func TestEnsureBindingIdempotentAndAdditive(t *testing.T) {
	c := newFakeCluster()
	ctx := context.Background()
	if err := EnsureBinding(ctx, c, testClientID, "demo", "sa-1"); err != nil {
		t.Fatal(err)
	}
	before := c.writes()
	if err := EnsureBinding(ctx, c, testClientID, "demo", "sa-1"); err != nil {
		t.Fatal(err)
	}
	if w := c.writes() - before; w != 0 {
		t.Fatalf("re-ensuring an existing subject wrote %d times", w)
	}
	if err := EnsureBinding(ctx, c, testClientID, "other", "sa-1"); err != nil {
		t.Fatal(err)
	}
	want := []rbacv1.Subject{saSubject("demo", "sa-1"), saSubject("other", "sa-1")}
	if got := c.binding(t).Subjects; !slices.Equal(got, want) {
		t.Fatalf("subjects %+v, want %+v", got, want)
	}
}

func TestEnsureBindingRefusesBadInput(t *testing.T) {
	tests := []struct{ clientID, ns, name, errHas string }{
		{"", "demo", "sa", "not a GUID"},
		{"../../etc", "demo", "sa", "not a GUID"},
		{testClientID + "x", "demo", "sa", "not a GUID"},
		{"use-mi-" + testClientID, "demo", "sa", "not a GUID"},
		{testClientID, "", "sa", "namespace"},
		{testClientID, "Demo", "sa", "namespace"},
		{testClientID, "demo", "", "name"},
		{testClientID, "demo", "sa\nx", "name"},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%q/%q/%q", tc.clientID, tc.ns, tc.name), func(t *testing.T) {
			c := newFakeCluster()
			err := EnsureBinding(context.Background(), c, tc.clientID, tc.ns, tc.name)
			if err == nil || !strings.Contains(err.Error(), tc.errHas) {
				t.Fatalf("err = %v, want one mentioning %q", err, tc.errHas)
			}
			if n := len(c.Actions()); n != 0 {
				t.Fatalf("%d API calls made for invalid input", n)
			}
		})
	}
}

func TestEnsureBindingExistingObjects(t *testing.T) {
	ctx := context.Background()
	t.Run("role not granting is an error and left alone", func(t *testing.T) {
		c := newFakeCluster(&rbacv1.ClusterRole{
			ObjectMeta: metav1.ObjectMeta{Name: rbacName},
			Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get"}}},
		})
		err := EnsureBinding(ctx, c, testClientID, "demo", "sa")
		if err == nil || !strings.Contains(err.Error(), "refusing to bind") {
			t.Fatalf("err = %v", err)
		}
		if c.writes() != 0 {
			t.Fatalf("wrote despite the foreign role: %v", c.Actions())
		}
	})
	// Binding to a role hands over everything it grants, so only the exact desired role is
	// reused; anything broader, whoever made it, is refused without a write.
	broader := map[string]*rbacv1.ClusterRole{
		"wildcard resources and verbs": {Rules: []rbacv1.PolicyRule{{APIGroups: []string{"cid.wi.aks.azure.com"}, Resources: []string{"*"}, Verbs: []string{"*"}}}},
		"wildcard group":               {Rules: []rbacv1.PolicyRule{{APIGroups: []string{"*"}, Resources: []string{testClientID}, Verbs: []string{"use-managed-identity"}}}},
		"extra rule": {Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{"cid.wi.aks.azure.com"}, Resources: []string{testClientID}, Verbs: []string{"use-managed-identity"}},
			{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: []string{"get"}},
		}},
		"extra verb": {Rules: []rbacv1.PolicyRule{{APIGroups: []string{"cid.wi.aks.azure.com"}, Resources: []string{testClientID}, Verbs: []string{"use-managed-identity", "escalate"}}}},
		"aggregation": {
			AggregationRule: &rbacv1.AggregationRule{ClusterRoleSelectors: []metav1.LabelSelector{{MatchLabels: map[string]string{"x": "y"}}}},
			Rules:           []rbacv1.PolicyRule{{APIGroups: []string{"cid.wi.aks.azure.com"}, Resources: []string{testClientID}, Verbs: []string{"use-managed-identity"}}},
		},
		"non-resource URL": {Rules: []rbacv1.PolicyRule{{APIGroups: []string{"cid.wi.aks.azure.com"}, Resources: []string{testClientID}, Verbs: []string{"use-managed-identity"}, NonResourceURLs: []string{"/metrics"}}}},
	}
	for name, role := range broader {
		t.Run("refused: "+name, func(t *testing.T) {
			role.Name = rbacName
			c := newFakeCluster(role)
			err := EnsureBinding(ctx, c, testClientID, "demo", "sa")
			if err == nil || !strings.Contains(err.Error(), "refusing to bind") {
				t.Fatalf("err = %v", err)
			}
			if c.writes() != 0 {
				t.Fatalf("wrote despite the broader role: %v", c.Actions())
			}
		})
	}
	t.Run("exact role made by an admin is reused", func(t *testing.T) {
		c := newFakeCluster(&rbacv1.ClusterRole{
			ObjectMeta: metav1.ObjectMeta{Name: rbacName},
			Rules:      []rbacv1.PolicyRule{{APIGroups: []string{"cid.wi.aks.azure.com"}, Resources: []string{testClientID}, Verbs: []string{"use-managed-identity"}}},
		})
		if err := EnsureBinding(ctx, c, testClientID, "demo", "sa"); err != nil {
			t.Fatal(err)
		}
		if ok, err := BindingLists(ctx, c, testClientID, "demo", "sa"); !ok || err != nil {
			t.Fatalf("BindingLists = %v, %v", ok, err)
		}
	})
	t.Run("role restricted by resourceNames does not count", func(t *testing.T) {
		c := newFakeCluster(&rbacv1.ClusterRole{
			ObjectMeta: metav1.ObjectMeta{Name: rbacName},
			Rules:      []rbacv1.PolicyRule{{APIGroups: []string{"cid.wi.aks.azure.com"}, Resources: []string{testClientID}, Verbs: []string{"use-managed-identity"}, ResourceNames: []string{"x"}}},
		})
		if err := EnsureBinding(ctx, c, testClientID, "demo", "sa"); err == nil {
			t.Fatal("accepted a role that grants only a named instance")
		}
	})
	t.Run("binding to another role is an error", func(t *testing.T) {
		c := newFakeCluster(&rbacv1.ClusterRoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: rbacName},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "cluster-admin"},
		})
		err := EnsureBinding(ctx, c, testClientID, "demo", "sa")
		if err == nil || !strings.Contains(err.Error(), "cluster-admin") {
			t.Fatalf("err = %v", err)
		}
		if got := c.binding(t).Subjects; len(got) != 0 {
			t.Fatalf("subject added to a cluster-admin binding: %+v", got)
		}
	})
	t.Run("admin's binding gets the subject but is not adopted", func(t *testing.T) {
		group := rbacv1.Subject{Kind: rbacv1.GroupKind, APIGroup: rbacv1.GroupName, Name: "backup-admins"}
		c := newFakeCluster(&rbacv1.ClusterRoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: rbacName},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: rbacName},
			Subjects:   []rbacv1.Subject{group},
		})
		if err := EnsureBinding(ctx, c, testClientID, "demo", "sa"); err != nil {
			t.Fatal(err)
		}
		b := c.binding(t)
		if !slices.Equal(b.Subjects, []rbacv1.Subject{group, saSubject("demo", "sa")}) || b.Labels[annotations.ManagedLabel] != "" {
			t.Fatalf("binding %+v", b)
		}
		n, err := RemoveSubjects(ctx, c, testClientID, func(string, string) bool { return false })
		if err != nil || n != 0 || len(c.binding(t).Subjects) != 2 {
			t.Fatalf("RemoveSubjects touched an admin's binding: n=%d err=%v", n, err)
		}
	})
}

// A deterministic lost-update scenario: another writer adds a subject between our Get and our
// Update. The apiserver (here the reactor) answers Conflict; the retry must keep both.
func TestEnsureBindingKeepsConcurrentAddition(t *testing.T) {
	c := newFakeCluster()
	ctx := context.Background()
	if err := EnsureBinding(ctx, c, testClientID, "demo", "first"); err != nil {
		t.Fatal(err)
	}
	// Another replica's write, injected at the tracker level because a reactor runs under the
	// fake's lock and cannot call the clientset.
	injected := false
	c.PrependReactor("update", "clusterrolebindings", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if injected {
			return false, nil, nil
		}
		injected = true
		gvr := a.GetResource()
		cur, err := c.Tracker().Get(gvr, "", rbacName)
		if err != nil {
			return true, nil, err
		}
		other := cur.(*rbacv1.ClusterRoleBinding).DeepCopy()
		other.Subjects = append(other.Subjects, saSubject("demo", "concurrent"))
		other.ResourceVersion = strconv.FormatInt(c.rv.Add(1), 10)
		if err := c.Tracker().Update(gvr, other, ""); err != nil {
			return true, nil, err
		}
		return false, nil, nil // our update continues to the RV check, which now fails
	})
	if err := EnsureBinding(ctx, c, testClientID, "demo", "second"); err != nil {
		t.Fatal(err)
	}
	want := []rbacv1.Subject{saSubject("demo", "first"), saSubject("demo", "concurrent"), saSubject("demo", "second")}
	if got := c.binding(t).Subjects; !slices.Equal(got, want) {
		t.Fatalf("subjects %+v, want %+v", got, want)
	}
	if c.conflicts.Load() != 1 {
		t.Fatalf("%d conflicts, want 1", c.conflicts.Load())
	}
}

// Two replicas create the role at once: the loser's Create gets AlreadyExists and accepts the
// winner's role.
func TestEnsureBindingRoleCreateRace(t *testing.T) {
	c := newFakeCluster()
	raced := false
	c.PrependReactor("create", "clusterroles", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if raced {
			return false, nil, nil
		}
		raced = true
		winner := desiredRole(rbacName, testClientID)
		c.stamp(winner)
		if err := c.Tracker().Add(winner); err != nil {
			return true, nil, err
		}
		return true, nil, apierrors.NewAlreadyExists(a.GetResource().GroupResource(), rbacName)
	})
	if err := EnsureBinding(context.Background(), c, testClientID, "demo", "sa"); err != nil {
		t.Fatal(err)
	}
	if !raced || !hasSubject(c.binding(t), "demo", "sa") {
		t.Fatal("binding not written after the role race")
	}
}

func TestEnsureBindingConcurrent(t *testing.T) {
	for _, tc := range []struct {
		name     string
		routines int
		distinct int
	}{
		{"100 distinct ServiceAccounts", 100, 100},
		{"100 goroutines, 25 ServiceAccounts", 100, 25},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newFakeCluster()
			ctx := context.Background()
			var wg sync.WaitGroup
			errs := make([]error, tc.routines)
			for i := range tc.routines {
				wg.Go(func() {
					errs[i] = EnsureBinding(ctx, c, testClientID, "demo", fmt.Sprintf("session-%d", i%tc.distinct))
				})
			}
			wg.Wait()
			if err := errors.Join(errs...); err != nil {
				t.Fatal(err)
			}
			seen := map[string]int{}
			for _, s := range c.binding(t).Subjects {
				seen[s.Namespace+"/"+s.Name]++
			}
			if len(seen) != tc.distinct {
				t.Fatalf("%d distinct subjects, want %d", len(seen), tc.distinct)
			}
			for k, n := range seen {
				if n != 1 {
					t.Fatalf("subject %s listed %d times", k, n)
				}
			}
			t.Logf("%d conflicts retried", c.conflicts.Load())
		})
	}
}

func TestRemoveSubjects(t *testing.T) {
	ctx := context.Background()
	group := rbacv1.Subject{Kind: rbacv1.GroupKind, APIGroup: rbacv1.GroupName, Name: "backup-admins"}
	ours := func(subjects ...rbacv1.Subject) *rbacv1.ClusterRoleBinding {
		return &rbacv1.ClusterRoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: rbacName, Labels: map[string]string{annotations.ManagedLabel: "true"}},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: rbacName},
			Subjects:   subjects,
		}
	}
	keepOnly := func(names ...string) func(ns, name string) bool {
		return func(_, name string) bool { return slices.Contains(names, name) }
	}

	t.Run("removes gone ServiceAccounts, keeps the rest and other kinds", func(t *testing.T) {
		c := newFakeCluster(ours(saSubject("a", "sa-1"), group, saSubject("a", "sa-2"), saSubject("b", "sa-3")))
		n, err := RemoveSubjects(ctx, c, testClientID, keepOnly("sa-2"))
		if err != nil || n != 2 {
			t.Fatalf("n=%d err=%v", n, err)
		}
		if got := c.binding(t).Subjects; !slices.Equal(got, []rbacv1.Subject{group, saSubject("a", "sa-2")}) {
			t.Fatalf("subjects %+v", got)
		}
	})
	t.Run("nothing to remove writes nothing", func(t *testing.T) {
		c := newFakeCluster(ours(saSubject("a", "sa-1")))
		n, err := RemoveSubjects(ctx, c, testClientID, keepOnly("sa-1"))
		if err != nil || n != 0 || c.writes() != 0 {
			t.Fatalf("n=%d err=%v writes=%d", n, err, c.writes())
		}
	})
	t.Run("empty binding is deleted, role kept", func(t *testing.T) {
		c := newFakeCluster(ours(saSubject("a", "sa-1"), saSubject("a", "sa-2")), desiredRole(rbacName, testClientID))
		n, err := RemoveSubjects(ctx, c, testClientID, keepOnly())
		if err != nil || n != 2 {
			t.Fatalf("n=%d err=%v", n, err)
		}
		if _, err := c.RbacV1().ClusterRoleBindings().Get(ctx, rbacName, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Fatalf("binding still there: %v", err)
		}
		if _, err := c.RbacV1().ClusterRoles().Get(ctx, rbacName, metav1.GetOptions{}); err != nil {
			t.Fatalf("role deleted: %v", err)
		}
	})
	t.Run("missing binding", func(t *testing.T) {
		c := newFakeCluster()
		if n, err := RemoveSubjects(ctx, c, testClientID, keepOnly()); err != nil || n != 0 {
			t.Fatalf("n=%d err=%v", n, err)
		}
	})
	t.Run("invalid client ID", func(t *testing.T) {
		c := newFakeCluster()
		if _, err := RemoveSubjects(ctx, c, "*", keepOnly()); err == nil || len(c.Actions()) != 0 {
			t.Fatalf("err=%v actions=%d", err, len(c.Actions()))
		}
	})
	t.Run("subject added during delete survives", func(t *testing.T) {
		c := newFakeCluster(ours(saSubject("a", "gone")))
		injected := false
		c.PrependReactor("delete", "clusterrolebindings", func(a k8stesting.Action) (bool, runtime.Object, error) {
			if injected {
				return false, nil, nil
			}
			injected = true
			// EnsureBinding on another replica adds a subject between our Get and Delete.
			cur, err := c.Tracker().Get(a.GetResource(), "", rbacName)
			if err != nil {
				return true, nil, err
			}
			other := cur.(*rbacv1.ClusterRoleBinding).DeepCopy()
			other.Subjects = append(other.Subjects, saSubject("a", "new"))
			other.ResourceVersion = strconv.FormatInt(c.rv.Add(1), 10)
			if err := c.Tracker().Update(a.GetResource(), other, ""); err != nil {
				return true, nil, err
			}
			return false, nil, nil // the precondition check now fails
		})
		n, err := RemoveSubjects(ctx, c, testClientID, keepOnly("new"))
		if err != nil || n != 1 {
			t.Fatalf("n=%d err=%v", n, err)
		}
		if got := c.binding(t).Subjects; !slices.Equal(got, []rbacv1.Subject{saSubject("a", "new")}) {
			t.Fatalf("subjects %+v", got)
		}
	})
}

func TestBindingLists(t *testing.T) {
	ctx := context.Background()
	c := newFakeCluster()
	check := func(ns, name string, want bool) {
		t.Helper()
		got, err := BindingLists(ctx, c, testClientID, ns, name)
		if err != nil || got != want {
			t.Fatalf("BindingLists(%s/%s) = %v, %v; want %v", ns, name, got, err, want)
		}
	}
	check("demo", "sa", false) // nothing yet
	if err := EnsureBinding(ctx, c, testClientID, "demo", "sa"); err != nil {
		t.Fatal(err)
	}
	check("demo", "sa", true)
	check("demo", "other", false)
	check("other", "sa", false)
	if got, err := BindingLists(ctx, c, strings.ToUpper(testClientID), "demo", "sa"); !got || err != nil {
		t.Fatalf("upper-case client ID: %v, %v", got, err)
	}
	// Without the role the binding grants nothing.
	if err := c.RbacV1().ClusterRoles().Delete(ctx, rbacName, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	check("demo", "sa", false)
	if _, err := BindingLists(ctx, c, "nope", "demo", "sa"); err == nil {
		t.Fatal("invalid client ID accepted")
	}

	wrong := newFakeCluster(&rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: rbacName},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "view"},
		Subjects:   []rbacv1.Subject{saSubject("demo", "sa")},
	})
	if ok, err := BindingLists(ctx, wrong, testClientID, "demo", "sa"); ok || err == nil {
		t.Fatalf("binding to another role: %v, %v", ok, err)
	}
}
