package azure

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"

	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/markers"
)

// persisted is a ServiceAccount as the writer and the sweeper see it: read back from the
// apiserver, with a UID.
func persisted(ns, name string, uid types.UID, ann map[string]string) *corev1.ServiceAccount {
	return &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: uid, Annotations: ann}}
}

func withAnn(m map[string]string, kv ...string) map[string]string {
	out := map[string]string{}
	for k, v := range m {
		out[k] = v
	}
	for i := 0; i+1 < len(kv); i += 2 {
		out[kv[i]] = kv[i+1]
	}
	return out
}

func TestCloudFinish(t *testing.T) {
	newCloud := func(t *testing.T) (Cloud, *fakeARM, *fakeCluster, *countingBinder) {
		f := newFakeARM()
		r, _ := newTestResolver(t, f, ResolverConfig{})
		c := newFakeCluster()
		b := &countingBinder{next: &BindingBatcher{CS: c}}
		scopes, err := ParseScopes("/subscriptions/" + testSub)
		if err != nil {
			t.Fatal(err)
		}
		return Cloud{Resolver: r, Binder: b, Scopes: scopes}, f, c, b
	}
	pending := withAnn(azAnn(testSub, testRG, testMI), annotations.Pending, ClaimOf(testIdentity).String())

	t.Run("binds and returns the IDs", func(t *testing.T) {
		cloud, f, c, b := newCloud(t)
		if cloud.Name() != markers.Azure || !slices.Equal(cloud.Outputs(), []string{annotations.AzureClientID, annotations.AzureTenantID}) {
			t.Fatalf("Name %q, Outputs %v", cloud.Name(), cloud.Outputs())
		}
		if got, ok := cloud.Claim(pending); !ok || got != ClaimOf(testIdentity) {
			t.Fatalf("Claim = %v, %v", got, ok)
		}
		set, err := cloud.Finish(context.Background(), persisted(saNS, saName, "uid-1", pending))
		if err != nil {
			t.Fatal(err)
		}
		if len(set) != 2 || set[annotations.AzureClientID] != testClientID || set[annotations.AzureTenantID] != testTenant {
			t.Fatalf("Finish set %v", set)
		}
		if ok, err := BindingLists(context.Background(), c, testClientID, saNS, saName); err != nil || !ok {
			t.Fatalf("not bound: %v, %v", ok, err)
		}
		// Retried after a failed patch, or raced by another replica: idempotent.
		before := c.writes()
		if _, err := cloud.Finish(context.Background(), persisted(saNS, saName, "uid-1", pending)); err != nil {
			t.Fatal(err)
		}
		if w := c.writes() - before; w != 0 {
			t.Fatalf("second Finish wrote %d times", w)
		}
		if f.gets.Load() != 1 || b.calls.Load() != 2 {
			t.Fatalf("ARM gets %d (want the cached answer), binder calls %d", f.gets.Load(), b.calls.Load())
		}
	})

	// Permanent refusals wrap markers.ErrRefused (the claim is dropped with an Event) and write
	// nothing.
	const otherSub = "0b7f2d6e-1a3c-4e5f-9d8b-7c6a5e4d3c2b"
	for _, tc := range []struct {
		name    string
		ann     map[string]string
		wantARM bool
	}{
		{"scope no longer allowed", azAnn(otherSub, testRG, testMI), false},
		{"identity annotations removed", map[string]string{}, false},
		{"no annotations", nil, false},
		{"identity annotations invalid", azAnn("not-a-guid", testRG, testMI), false},
		{"identity incomplete", azAnn("", "", testMI), false},
		{"identity does not exist", azAnn(testSub, testRG, "missing-mi"), true},
	} {
		t.Run("refused: "+tc.name, func(t *testing.T) {
			cloud, f, c, b := newCloud(t)
			set, err := cloud.Finish(context.Background(), persisted(saNS, saName, "uid-1", tc.ann))
			if !errors.Is(err, markers.ErrRefused) || set != nil {
				t.Fatalf("Finish = %v, %v; want ErrRefused", set, err)
			}
			// The message becomes a Warning Event on the ServiceAccount.
			if strings.Contains(err.Error(), "<nil>") || strings.Contains(err.Error(), "%!") {
				t.Errorf("refusal message %q", err)
			}
			if got := f.gets.Load() > 0; got != tc.wantARM {
				t.Errorf("ARM called = %v, want %v", got, tc.wantARM)
			}
			if b.calls.Load() != 0 || c.writes() != 0 {
				t.Errorf("a refusal wrote RBAC: binder calls %d, writes %d", b.calls.Load(), c.writes())
			}
		})
	}

	// Failures worth retrying must not be mistaken for refusals (that would drop the claim).
	t.Run("ARM throttled: retryable", func(t *testing.T) {
		cloud, f, c, _ := newCloud(t)
		f.failNext(http.StatusTooManyRequests, http.StatusTooManyRequests, http.StatusTooManyRequests)
		set, err := cloud.Finish(context.Background(), persisted(saNS, saName, "uid-1", pending))
		if err == nil || errors.Is(err, markers.ErrRefused) || set != nil {
			t.Fatalf("Finish = %v, %v; want a retryable error", set, err)
		}
		if c.writes() != 0 {
			t.Error("RBAC written without a client ID")
		}
	})
	t.Run("binder fails: retryable", func(t *testing.T) {
		cloud, _, _, b := newCloud(t)
		b.err = apierrors.NewForbidden(schema.GroupResource{Group: "rbac.authorization.k8s.io", Resource: "clusterrolebindings"}, RBACNamePrefix+testClientID, errors.New("no RBAC"))
		set, err := cloud.Finish(context.Background(), persisted(saNS, saName, "uid-1", pending))
		if err == nil || errors.Is(err, markers.ErrRefused) || set != nil {
			t.Fatalf("Finish = %v, %v; want a retryable error", set, err)
		}
	})
}

func TestCollector(t *testing.T) {
	const (
		secondClient = "0d9c8b7a-6f5e-4d3c-2b1a-0f9e8d7c6b5a"
		thirdClient  = "5e4d3c2b-1a09-4f8e-8d7c-6b5a49382716"
		adminClient  = "9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d"
	)
	ctx := context.Background()
	second := Identity{SubscriptionID: testSub, ResourceGroup: testRG, Name: "second-mi"}
	claim, claim2 := ClaimOf(testIdentity), ClaimOf(second)
	// done is what the writer leaves on a ServiceAccount it finished for identity id.
	done := func(id Identity, clientID string, uid types.UID) map[string]string {
		return withAnn(azAnn(id.SubscriptionID, id.ResourceGroup, id.Name), annotations.AzureClientID, clientID,
			annotations.AzureTenantID, testTenant, annotations.Granted, markers.FormatGranted(uid, markers.Claims{ClaimOf(id)}))
	}
	adminBinding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: RBACNamePrefix + adminClient}, // no managed label: an admin's
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: RBACNamePrefix + adminClient},
		Subjects:   []rbacv1.Subject{saSubject(saNS, "gone")},
	}
	notOurs := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: RBACNamePrefix + "not-a-guid", Labels: map[string]string{annotations.ManagedLabel: "true"}},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "view"},
		Subjects:   []rbacv1.Subject{saSubject(saNS, "gone")},
	}
	c := newFakeCluster(adminBinding, notOurs)
	bind := func(clientID string, names ...string) {
		t.Helper()
		for _, n := range names {
			if err := EnsureBinding(ctx, c, clientID, saNS, n); err != nil {
				t.Fatal(err)
			}
		}
	}
	bind(testClientID, "granted", "recreated", "pending", "other-client", "reidentified", "forged", "gone", "unknown")
	bind(secondClient, "granted-second", "gone")
	bind(thirdClient, "gone")

	live := map[string]*corev1.ServiceAccount{
		"granted": persisted(saNS, "granted", "uid-a", done(testIdentity, testClientID, "uid-a")),
		// Deleted and created again under the same name by someone else.
		"recreated": persisted(saNS, "recreated", "uid-new", done(testIdentity, testClientID, "uid-old")),
		// Admitted and planned, the writer has not finished yet.
		"pending": persisted(saNS, "pending", "uid-p", withAnn(azAnn(testSub, testRG, testMI), annotations.AzureClientID, testClientID, annotations.Pending, claim.String())),
		// Its client ID names another identity than the binding's.
		"other-client": persisted(saNS, "other-client", "uid-o", done(testIdentity, secondClient, "uid-o")),
		// Moved to another identity; the client ID annotation not updated (yet).
		"reidentified": persisted(saNS, "reidentified", "uid-r", withAnn(done(testIdentity, testClientID, "uid-r"), annotations.AzureMIName, "second-mi")),
		// IDs written by the requester themselves: no marker, no standing.
		"forged":         persisted(saNS, "forged", "uid-f", withAnn(azAnn(testSub, testRG, testMI), annotations.AzureClientID, testClientID)),
		"granted-second": persisted(saNS, "granted-second", "uid-s", done(second, secondClient, "uid-s")),
	}
	lookup := func(ns, name string) (*corev1.ServiceAccount, bool) {
		if ns != saNS {
			return nil, false
		}
		if name == "unknown" { // may exist, not known yet: everything it holds stays
			return nil, true
		}
		sa, ok := live[name]
		return sa, ok
	}
	if !markers.Keeps(live["granted-second"], true, ClaimOfAnnotations, claim2) {
		t.Fatal("fixture: granted-second has no standing")
	}

	removed, err := Collector{CS: c}.Collect(ctx, lookup)
	if err != nil {
		t.Fatal(err)
	}
	subjects := func(clientID string) []string {
		t.Helper()
		b, err := c.RbacV1().ClusterRoleBindings().Get(ctx, RBACNamePrefix+clientID, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, s := range b.Subjects {
			out = append(out, s.Name)
		}
		slices.Sort(out)
		return out
	}
	if got, want := subjects(testClientID), []string{"granted", "pending", "unknown"}; !slices.Equal(got, want) {
		t.Errorf("%s subjects %v, want %v", testClientID, got, want)
	}
	if got, want := subjects(secondClient), []string{"granted-second"}; !slices.Equal(got, want) {
		t.Errorf("%s subjects %v, want %v", secondClient, got, want)
	}
	if got := subjects(thirdClient); got != nil {
		t.Errorf("binding left empty was not deleted: %v", got)
	}
	if got := subjects(adminClient); !slices.Equal(got, []string{"gone"}) {
		t.Errorf("an admin's binding was collected: %v", got)
	}
	if b, err := c.RbacV1().ClusterRoleBindings().Get(ctx, RBACNamePrefix+"not-a-guid", metav1.GetOptions{}); err != nil || len(b.Subjects) != 1 {
		t.Errorf("a binding not named for a client ID was touched: %v, %v", b, err)
	}
	if removed != 7 {
		t.Errorf("removed %d, want 7 (recreated, other-client, reidentified, forged, gone ×3)", removed)
	}

	// Nothing left to collect: a second pass writes nothing.
	before := c.writes()
	if n, err := (Collector{CS: c}).Collect(ctx, lookup); err != nil || n != 0 || c.writes() != before {
		t.Fatalf("second Collect = %d, %v, %d writes", n, err, c.writes()-before)
	}
}
