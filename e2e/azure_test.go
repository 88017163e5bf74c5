package e2e

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/e2e/harness"
	"go.klusters.dev/credential-webhook/providers/azure"
	"go.klusters.dev/credential-webhook/testenv/arm"
)

// The Azure tests run the real binary against testenv/arm: ARM's identity reads answered by the
// SDK's own armmsi fake behind a local HTTPS server, the binary's managed-identity credential
// pointed at a local App Service token endpoint (arm.Server.Env: IDENTITY_ENDPOINT,
// IDENTITY_HEADER, SSL_CERT_FILE, nothing that could reach IMDS or Entra ID). RBAC is written
// with the webhook's own ServiceAccount and the ClusterRole from manifests/.
//
// Not covered here: a deleted ServiceAccount leaving the use-mi binding belongs to the sweeper's
// garbage collection and is tested with it.

var azOperatorGroups = []string{"system:serviceaccounts", "system:serviceaccounts:kubestash", "system:authenticated"}

// azSetup starts the ARM server with one identity and a webhook replica serving Azure for it.
func azSetup(t *testing.T) (s *arm.Server, wh *harness.Webhook, id arm.Identity) {
	t.Helper()
	s, id = azIdentity(t)
	wh = cluster.StartWebhook(t, harness.WebhookOptions{
		Args: []string{
			"--allowed-requesters=user:" + operatorUser,
			"--allowed-namespaces=*",
			"--azure-allowed-scopes=/subscriptions/" + arm.DemoSubscriptionID,
			"--azure-arm-endpoint=" + s.URL,
		},
		Env: s.Env(),
	})
	return s, wh, id
}

// azIdentity starts the ARM server with one fresh managed identity in the demo resource group,
// and removes its use-mi objects (cluster-scoped) when the test ends.
func azIdentity(t *testing.T) (*arm.Server, arm.Identity) {
	t.Helper()
	s := arm.Start(t)
	id := arm.Identity{SubscriptionID: arm.DemoSubscriptionID, ResourceGroup: arm.DemoResourceGroup, Name: "kubestash-mi-" + shortID()}
	id.ClientID, id.TenantID = s.AddIdentity(id.SubscriptionID, id.ResourceGroup, id.Name)
	t.Cleanup(func() {
		ctx := context.Background()
		name := azure.RBACNamePrefix + id.ClientID
		_ = cluster.Client.RbacV1().ClusterRoleBindings().Delete(ctx, name, metav1.DeleteOptions{})
		_ = cluster.Client.RbacV1().ClusterRoles().Delete(ctx, name, metav1.DeleteOptions{})
	})
	return s, id
}

func shortID() string { return arm.NewGUID()[:8] }

// azOperator impersonates the KubeStash operator, allowed to create, get and list
// ServiceAccounts in ns; warnings go to warn.
func azOperator(t *testing.T, ns string, warn rest.WarningHandler) kubernetes.Interface {
	t.Helper()
	ctx := context.Background()
	rbac := cluster.Client.RbacV1()
	if _, err := rbac.Roles(ns).Create(ctx, &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: "az-operator"},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"serviceaccounts"}, Verbs: []string{"create", "get", "list"}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create Role: %v", err)
	}
	if _, err := rbac.RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "az-operator"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: "az-operator"},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: operatorUser}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create RoleBinding: %v", err)
	}
	cfg := rest.CopyConfig(cluster.Config)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: operatorUser, Groups: azOperatorGroups}
	cfg.WarningHandler = warn
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	azWait(t, 10*time.Second, "the operator may create ServiceAccounts", func() (bool, error) {
		r, err := cs.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authorizationv1.SelfSubjectAccessReview{
			Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authorizationv1.ResourceAttributes{
				Namespace: ns, Verb: "create", Resource: "serviceaccounts"}},
		}, metav1.CreateOptions{})
		return err == nil && r.Status.Allowed, err
	})
	return cs
}

func azWait(t *testing.T, timeout time.Duration, what string, cond func() (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var lastErr error
	for {
		ok, err := cond()
		if ok {
			return
		}
		lastErr = err
		if time.Now().After(deadline) {
			t.Fatalf("after %s: not true that %s (last error: %v)", timeout, what, lastErr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// azServiceAccount is a KubeStash session ServiceAccount naming the identity.
func azServiceAccount(ns, name string, id arm.Identity) *corev1.ServiceAccount {
	return &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{
		Name: name, Namespace: ns,
		Labels: map[string]string{annotations.ManagedByLabel: annotations.ManagedByValue},
		Annotations: map[string]string{
			annotations.AzureSubscriptionID: id.SubscriptionID,
			annotations.AzureRGName:         id.ResourceGroup,
			annotations.AzureMIName:         id.Name,
		},
	}}
}

// mayUse asks the real RBAC authoriser, as the AKS token proxy does, whether the ServiceAccount
// may use the managed identity with this client ID.
func mayUse(t *testing.T, ns, name, clientID string) bool {
	t.Helper()
	r, err := cluster.Client.AuthorizationV1().SubjectAccessReviews().Create(context.Background(), &authorizationv1.SubjectAccessReview{
		Spec: authorizationv1.SubjectAccessReviewSpec{
			User:   "system:serviceaccount:" + ns + ":" + name,
			Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"},
			ResourceAttributes: &authorizationv1.ResourceAttributes{
				Verb: azure.UseManagedIdentityVerb, Group: azure.IdentityBindingAPIGroup, Resource: clientID,
			},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("SubjectAccessReview: %v", err)
	}
	return r.Status.Allowed
}

func subjectsIn(b *rbacv1.ClusterRoleBinding, ns string) map[string]int {
	out := map[string]int{}
	for _, s := range b.Subjects {
		if s.Kind == rbacv1.ServiceAccountKind && s.Namespace == ns {
			out[s.Name]++
		}
	}
	return out
}

func TestAzureServiceAccountGetsIdentityAndBinding(t *testing.T) {
	ns := cluster.Namespace(t)
	s, _, id := azSetup(t)
	warn := &harness.Warnings{}
	operator := azOperator(t, ns, warn)
	ctx := context.Background()

	const name = "sample-backup-daemon-demo-session-1778072138"
	got, err := operator.CoreV1().ServiceAccounts(ns).Create(ctx, azServiceAccount(ns, name, id), metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	if got.Annotations[annotations.AzureClientID] != id.ClientID || got.Annotations[annotations.AzureTenantID] != id.TenantID {
		t.Fatalf("stored annotations %v; want client-id %s, tenant-id %s", got.Annotations, id.ClientID, id.TenantID)
	}
	// Admission resolved the identity (an ARM read) and only planned the binding.
	if p := got.Annotations[annotations.Pending]; !strings.HasPrefix(p, "azure:") {
		t.Fatalf("pending marker %q (warnings %q): want the Azure claim", p, warn.All())
	}
	if w := warn.All(); len(w) != 0 {
		t.Errorf("warnings %q", w)
	}
	stored := waitGranted(t, ns, []string{name}, 30*time.Second)[name]
	if g := stored.Annotations[annotations.Granted]; g != string(stored.UID)+" "+got.Annotations[annotations.Pending] {
		t.Errorf("granted marker %q; want the claim %q granted to %s", g, got.Annotations[annotations.Pending], stored.UID)
	}

	rbacName := azure.RBACNamePrefix + id.ClientID
	role, err := cluster.Client.RbacV1().ClusterRoles().Get(ctx, rbacName, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("ClusterRole %s: %v", rbacName, err)
	}
	wantRule := rbacv1.PolicyRule{APIGroups: []string{azure.IdentityBindingAPIGroup}, Resources: []string{id.ClientID}, Verbs: []string{azure.UseManagedIdentityVerb}}
	if len(role.Rules) != 1 || fmt.Sprint(role.Rules[0]) != fmt.Sprint(wantRule) || role.Labels[annotations.ManagedLabel] != "true" {
		t.Errorf("ClusterRole %s: rules %+v labels %v", rbacName, role.Rules, role.Labels)
	}
	binding, err := cluster.Client.RbacV1().ClusterRoleBindings().Get(ctx, rbacName, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("ClusterRoleBinding %s: %v", rbacName, err)
	}
	if binding.RoleRef.Kind != "ClusterRole" || binding.RoleRef.Name != rbacName || len(binding.Subjects) != 1 ||
		binding.Subjects[0] != (rbacv1.Subject{Kind: rbacv1.ServiceAccountKind, Namespace: ns, Name: name}) {
		t.Fatalf("ClusterRoleBinding %s: roleRef %+v subjects %+v", rbacName, binding.RoleRef, binding.Subjects)
	}

	// What the AKS token proxy asks: this ServiceAccount may use the identity; another one in
	// the same namespace may not, nor may this one use another identity.
	if _, err := cluster.Client.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "other"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	azWait(t, 10*time.Second, "the authoriser lets "+name+" use "+id.ClientID, func() (bool, error) { return mayUse(t, ns, name, id.ClientID), nil })
	if mayUse(t, ns, "other", id.ClientID) {
		t.Error("a ServiceAccount outside the binding may use the identity")
	}
	if mayUse(t, ns, name, arm.NewGUID()) {
		t.Error("the ServiceAccount may use an identity it was not bound to")
	}

	if c := s.Calls(); c.Gets != 1 || c.Unauthorized != 0 || c.Tokens < 1 {
		t.Errorf("ARM calls %+v; want one identity read with a token from the managed-identity endpoint", c)
	}
}

// 100 KubeStash ServiceAccounts for one identity, all at once: every one ends up in the binding
// exactly once, and ARM is read once (the cache and the shared in-flight call).
func TestAzureConcurrentServiceAccountsShareOneBinding(t *testing.T) {
	const total = 100
	ns := cluster.Namespace(t)
	s, _, id := azSetup(t)
	warn := &harness.Warnings{}
	operator := azOperator(t, ns, warn)
	ctx := context.Background()
	s.ResetCalls()

	type result struct {
		clientID, pending string
		err               error
		latency           time.Duration
	}
	results := make([]result, total)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range total {
		wg.Go(func() {
			name := fmt.Sprintf("sample-backup-daemon-demo-session-%d", 1778072138+i)
			t0 := time.Now()
			got, err := operator.CoreV1().ServiceAccounts(ns).Create(ctx, azServiceAccount(ns, name, id), metav1.CreateOptions{})
			r := result{err: err, latency: time.Since(t0)}
			if err == nil {
				r.clientID, r.pending = got.Annotations[annotations.AzureClientID], got.Annotations[annotations.Pending]
			}
			results[i] = r
		})
	}
	wg.Wait()
	wall := time.Since(start)

	pending := 0
	for i, r := range results {
		if r.err != nil {
			t.Fatalf("create %d: %v", i, r.err)
		}
		if r.clientID != id.ClientID {
			t.Errorf("ServiceAccount %d: client-id %q", i, r.clientID)
		}
		if r.pending != "" {
			pending++
		}
	}
	admissionCalls := s.Calls()

	// Every ServiceAccount is in the binding exactly once. Admission normally does it all; any
	// it left pending (its time budget ran out under contention) the sweeper finishes.
	rbacName := azure.RBACNamePrefix + id.ClientID
	var subjects map[string]int
	azWait(t, 90*time.Second, fmt.Sprintf("all %d ServiceAccounts are in %s", total, rbacName), func() (bool, error) {
		b, err := cluster.Client.RbacV1().ClusterRoleBindings().Get(ctx, rbacName, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		subjects = subjectsIn(b, ns)
		return len(subjects) == total, nil
	})
	for name, n := range subjects {
		if n != 1 {
			t.Errorf("%s listed %d times", name, n)
		}
	}
	for i := range total {
		if name := fmt.Sprintf("sample-backup-daemon-demo-session-%d", 1778072138+i); subjects[name] != 1 {
			t.Errorf("%s missing from the binding", name)
		}
	}
	final := s.Calls()
	lat := make([]time.Duration, 0, total)
	for _, r := range results {
		lat = append(lat, r.latency.Round(time.Millisecond))
	}
	slices.Sort(lat)
	t.Logf("FIGURES azure: %d ServiceAccounts on one identity created at once in %v (create round trip p50 %v, p90 %v, max %v); "+
		"left pending by admission %d (finished by the sweeper); ARM identity reads %d at admission, %d in total; "+
		"ARM HTTP requests %d; managed-identity tokens %d",
		total, wall.Round(time.Millisecond), lat[total/2], lat[total*9/10], lat[total-1], pending,
		admissionCalls.Gets, final.Gets, final.ARM, final.Tokens)
	if w := warn.All(); len(w) > 0 {
		t.Logf("first of %d admission warnings: %s", len(w), w[0])
	}
	if admissionCalls.Gets != 1 || final.Gets != 1 || final.Faults != 0 || final.Unauthorized != 0 {
		t.Errorf("ARM calls %+v; want exactly one identity read for %d ServiceAccounts", final, total)
	}
}

func TestAzureDryRunCreatesNoRBAC(t *testing.T) {
	ns := cluster.Namespace(t)
	s, _, id := azSetup(t)
	warn := &harness.Warnings{}
	operator := azOperator(t, ns, warn)
	ctx := context.Background()

	const name = "retention-policy-sample-backup-daemon-demo-session-1778072402"
	got, err := operator.CoreV1().ServiceAccounts(ns).Create(ctx, azServiceAccount(ns, name, id), metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
	if err != nil {
		t.Fatalf("dry-run create: %v", err)
	}
	// The dry-run answer shows what a real create would store...
	if got.Annotations[annotations.AzureClientID] != id.ClientID || got.Annotations[annotations.AzureTenantID] != id.TenantID {
		t.Fatalf("dry-run annotations %v", got.Annotations)
	}
	if _, ok := got.Annotations[annotations.Pending]; ok {
		t.Errorf("dry run left a pending marker (warnings %q)", warn.All())
	}
	// ...and nothing was written: no ServiceAccount, no RBAC.
	rbacName := azure.RBACNamePrefix + id.ClientID
	if _, err := cluster.Client.CoreV1().ServiceAccounts(ns).Get(ctx, name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("ServiceAccount after a dry run: %v", err)
	}
	if _, err := cluster.Client.RbacV1().ClusterRoles().Get(ctx, rbacName, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("ClusterRole %s after a dry run: err = %v, want NotFound", rbacName, err)
	}
	if _, err := cluster.Client.RbacV1().ClusterRoleBindings().Get(ctx, rbacName, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("ClusterRoleBinding %s after a dry run: err = %v, want NotFound", rbacName, err)
	}
	if mayUse(t, ns, name, id.ClientID) {
		t.Error("a dry run granted the identity")
	}
	if n := s.GetsFor(id.SubscriptionID, id.ResourceGroup, id.Name); n != 1 {
		t.Errorf("ARM reads %d, want 1 (a dry run may read, never write)", n)
	}
}
