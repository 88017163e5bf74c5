package e2e

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/e2e/harness"
)

// tenantClient is a user bound to the built-in edit ClusterRole in ns only: it can create and
// edit ServiceAccounts and Jobs there, including the ones KubeStash made.
func tenantClient(t *testing.T, ns string) kubernetes.Interface {
	t.Helper()
	ctx := context.Background()
	user := "tenant-" + shortName(ns)
	if _, err := cluster.Client.RbacV1().RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "tenant-edit"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "edit"},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: user}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("bind the tenant: %v", err)
	}
	client, err := cluster.ClientAs(user, "system:authenticated")
	if err != nil {
		t.Fatal(err)
	}
	flowPoll(t, 15*time.Second, "the tenant allowed to update ServiceAccounts", func() (bool, error) {
		r, err := client.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authorizationv1.SelfSubjectAccessReview{
			Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authorizationv1.ResourceAttributes{
				Namespace: ns, Verb: "update", Resource: "serviceaccounts"}},
		}, metav1.CreateOptions{})
		return err == nil && r.Status.Allowed, nil
	})
	return client
}

func mergeAnnotations(t *testing.T, set map[string]any) []byte {
	t.Helper()
	b, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": set}})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A tenant with edit in the namespace is refused by the apiserver itself (the chart's
// ValidatingAdmissionPolicy) when it re-points a KubeStash ServiceAccount at another seed or
// asks for a seed on a ServiceAccount of its own (a deleted per-session name re-created), and
// cannot dress a Job that someone else suspended up as held by us: the change is reverted or
// refused, and the Job stays suspended.
func TestTenantCannotRewriteCredentialAnnotations(t *testing.T) {
	ns := cluster.Namespace(t)
	seed := seedRole(t, "kubestash-tenant-"+shortName(ns))
	other := seedRole(t, "kubestash-tenant-other-"+shortName(ns))
	cluster.StartWebhook(t, harness.WebhookOptions{Args: []string{
		"--aws-seed-roles=" + seed + "," + other, "--allowed-requesters=user:" + operatorUser,
		"--lease-namespace=" + harness.WebhookNamespace, "--gc-grace=10s",
	}})
	ctx := context.Background()
	op := operatorClient(t, ns)
	tenant := tenantClient(t, ns)

	sa, err := op.CoreV1().ServiceAccounts(ns).Create(ctx, sessionServiceAccount(ns, seed), metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("operator: create ServiceAccount: %v", err)
	}

	forbidden := func(what string, err error, wantInMessage string) {
		t.Helper()
		if !apierrors.IsForbidden(err) && !apierrors.IsInvalid(err) {
			t.Fatalf("%s: err = %v, want the admission policy's refusal", what, err)
		}
		if !strings.Contains(err.Error(), wantInMessage) {
			t.Errorf("%s: refusal %q does not name %q", what, err, wantInMessage)
		}
	}

	// Re-point the operator's ServiceAccount at another allowed seed.
	_, err = tenant.CoreV1().ServiceAccounts(ns).Patch(ctx, sa.Name, types.MergePatchType,
		mergeAnnotations(t, map[string]any{annotations.SeedRole: other}), metav1.PatchOptions{})
	forbidden("tenant re-points the seed", err, annotations.SeedRole)

	// Re-create a deleted per-session name asking for the seed.
	if err := op.CoreV1().ServiceAccounts(ns).Delete(ctx, sa.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	again := sessionServiceAccount(ns, seed)
	again.Name = sa.Name
	_, err = tenant.CoreV1().ServiceAccounts(ns).Create(ctx, again, metav1.CreateOptions{})
	forbidden("tenant re-creates a deleted name with the seed", err, annotations.SeedRole)

	// A ServiceAccount of the tenant's own, then our markers forged onto it: the guard strips
	// them or the policy refuses; either way none is stored.
	plain, err := tenant.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "tenant-own"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("tenant: create a plain ServiceAccount: %v", err)
	}
	_, err = tenant.CoreV1().ServiceAccounts(ns).Patch(ctx, plain.Name, types.MergePatchType,
		mergeAnnotations(t, map[string]any{annotations.Pending: "aws:0123456789abcdef"}), metav1.PatchOptions{})
	if err != nil && !apierrors.IsForbidden(err) && !apierrors.IsInvalid(err) {
		t.Fatalf("tenant forges a pending marker: %v", err)
	}
	stored, err := cluster.Client.CoreV1().ServiceAccounts(ns).Get(ctx, plain.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := stored.Annotations[annotations.Pending]; ok {
		t.Errorf("a pending marker forged by the tenant was stored: %v", stored.Annotations)
	}

	// A Job that Kueue suspended (its queue label), not KubeStash's: the tenant adds the
	// KubeStash label and our hold annotations by UPDATE, hoping the sweeper resumes it.
	job := &batchv1.Job{ObjectMeta: metav1.ObjectMeta{Name: "queued", Namespace: ns,
		Labels: map[string]string{"kueue.x-k8s.io/queue-name": "user-queue"}}}
	job.Spec.Suspend = ptr.To(true)
	job.Spec.Template = backupJob(ns, "default").Spec.Template
	if _, err := tenant.BatchV1().Jobs(ns).Create(ctx, job, metav1.CreateOptions{}); err != nil {
		t.Fatalf("tenant: create a suspended Job: %v", err)
	}
	dress := map[string]any{"metadata": map[string]any{
		"labels": map[string]any{annotations.ManagedByLabel: annotations.ManagedByValue},
		"annotations": map[string]any{
			annotations.HeldSince:  time.Now().Add(-time.Hour).UTC().Format(time.RFC3339),
			annotations.HoldReason: "IdentityPending",
		}}}
	b, _ := json.Marshal(dress)
	_, err = tenant.BatchV1().Jobs(ns).Patch(ctx, job.Name, types.MergePatchType, b, metav1.PatchOptions{})
	if err != nil && !apierrors.IsForbidden(err) && !apierrors.IsInvalid(err) {
		t.Fatalf("tenant dresses the Job up as held: %v", err)
	}
	// Long enough for a sweeper that believed it to release it (it acts within a second).
	time.Sleep(5 * time.Second)
	got := flowGetJob(t, ns, job.Name)
	if got.Annotations[annotations.HeldSince] != "" || got.Annotations[annotations.HoldReason] != "" {
		t.Errorf("hold annotations forged by the tenant were stored: %v", got.Annotations)
	}
	if got.Spec.Suspend == nil || !*got.Spec.Suspend {
		t.Errorf("the Job suspended by someone else was resumed")
	}
}
