package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/iam"
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
	"go.klusters.dev/credential-webhook/providers/azure"
	"go.klusters.dev/credential-webhook/testenv/arm"
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
	granted := waitGranted(t, ns, []string{sa.Name}, 30*time.Second)[sa.Name]
	role := granted.Annotations[annotations.AWSRoleARN]
	subject := flowSubject(ns, sa.Name)
	trusted := func() bool {
		subs, err := flowTrustedSubjects(ctx, iam.NewFromConfig(cluster.AWSConfig()), role)
		if err != nil {
			t.Fatal(err)
		}
		return slices.Contains(subs, subject)
	}
	if !trusted() {
		t.Fatalf("%s does not list the operator's granted ServiceAccount %s", role, subject)
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
	// Without the seed the policy lets the name be re-created, right away (within --gc-grace):
	// the subject is bound to the deleted object's UID and claim, so garbage collection takes it
	// away although a ServiceAccount of that name exists.
	if _, err := tenant.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa.Name}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("tenant re-creates the deleted name without annotations: %v", err)
	}
	flowPoll(t, time.Minute, "the re-created name's subject collected from "+role, func() (bool, error) { return !trusted(), nil })

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

// Someone on the pod network posts AdmissionReviews straight to the webhook's port, claiming to
// be the KubeStash operator, for a ServiceAccount that does not exist, asking for an allowed seed
// and an allowed managed identity. The webhook answers with its plan (a review proves nothing,
// and planning costs nothing) but writes neither IAM nor RBAC: after the writer's handoff and a
// garbage collection interval, no derived role exists and no binding lists the name, also once
// the attacker creates a ServiceAccount of that name itself. The operator's own ServiceAccount,
// created through the apiserver alongside, gets both: the machinery works in this very setup.
func TestForgedReviewWritesNothing(t *testing.T) {
	ns := cluster.Namespace(t)
	seed := seedRole(t, "kubestash-forged-"+shortName(ns))
	s, id := azIdentity(t)
	rbacName := azure.RBACNamePrefix + id.ClientID
	cluster.StartWebhook(t, harness.WebhookOptions{
		Args: []string{
			"--aws-seed-roles=" + seed, "--allowed-requesters=user:" + operatorUser, "--allowed-namespaces=*",
			"--azure-allowed-scopes=/subscriptions/" + arm.DemoSubscriptionID, "--azure-arm-endpoint=" + s.URL,
			"--lease-namespace=" + harness.WebhookNamespace, "--writer-handoff=1s", "--gc-interval=3s", "--gc-grace=10s",
		},
		Env: s.Env(),
	})
	ctx := context.Background()
	wantAnn := map[string]string{
		annotations.SeedRole:            seed,
		annotations.AzureSubscriptionID: id.SubscriptionID, annotations.AzureRGName: id.ResourceGroup, annotations.AzureMIName: id.Name,
	}

	// The forged reviews: CREATE and UPDATE, as the operator, for a name nobody created.
	pool, err := cluster.WebhookCAPool()
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
	const forged = "sample-backup-daemon-demo-session-forged"
	post := func(uid, op string) {
		t.Helper()
		obj := map[string]any{"apiVersion": "v1", "kind": "ServiceAccount",
			"metadata": map[string]any{"name": forged, "namespace": ns, "annotations": wantAnn}}
		req := map[string]any{"uid": uid, "kind": map[string]string{"group": "", "version": "v1", "kind": "ServiceAccount"},
			"resource":  map[string]string{"group": "", "version": "v1", "resource": "serviceaccounts"},
			"namespace": ns, "name": forged, "operation": op, "object": obj,
			"userInfo": map[string]any{"username": operatorUser, "groups": flowOperatorGroups}}
		if op == "UPDATE" {
			req["oldObject"] = obj
		}
		body, _ := json.Marshal(map[string]any{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": req})
		resp, err := client.Post(cluster.WebhookURL+"/mutate/serviceaccounts?timeout=10s", "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatalf("forged %s review: %v", op, err)
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		var out struct {
			Response struct {
				Allowed bool
				Patch   string
			}
		}
		if resp.StatusCode != http.StatusOK || json.Unmarshal(raw, &out) != nil || !out.Response.Allowed {
			t.Fatalf("forged %s review: HTTP %d %s", op, resp.StatusCode, raw)
		}
		patch, _ := base64.StdEncoding.DecodeString(out.Response.Patch)
		// The answer is a plan: the role and IDs it would get, and the claim.
		if !strings.Contains(string(patch), "eks.amazonaws.com~1role-arn") || !strings.Contains(string(patch), "pending") {
			t.Errorf("forged %s review answered with patch %s; want the plan", op, patch)
		}
	}
	before := cluster.IAM.Calls()
	post("f0000000-0000-4000-8000-000000000001", "CREATE")
	post("f0000000-0000-4000-8000-000000000002", "UPDATE")

	// The control: the operator's own ServiceAccount through the apiserver.
	op := operatorClient(t, ns)
	real := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "sample-backup-daemon-demo-session-real", Annotations: wantAnn}}
	if _, err := op.CoreV1().ServiceAccounts(ns).Create(ctx, real, metav1.CreateOptions{}); err != nil {
		t.Fatalf("operator: create ServiceAccount: %v", err)
	}
	granted := waitGranted(t, ns, []string{real.Name}, time.Minute)[real.Name]
	role := granted.Annotations[annotations.AWSRoleARN]

	check := func(when string) {
		t.Helper()
		subs, err := flowTrustedSubjects(ctx, iam.NewFromConfig(cluster.AWSConfig()), role)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(subs, flowSubject(ns, real.Name)) {
			t.Errorf("%s: the operator's ServiceAccount is not trusted by %s: %v", when, role, subs)
		}
		if slices.Contains(subs, flowSubject(ns, forged)) {
			t.Errorf("%s: %s trusts the forged name: %v", when, role, subs)
		}
		b, err := cluster.Client.RbacV1().ClusterRoleBindings().Get(ctx, rbacName, metav1.GetOptions{})
		if err != nil {
			t.Fatalf("%s: binding %s: %v", when, rbacName, err)
		}
		var names []string
		for _, s := range b.Subjects {
			names = append(names, s.Namespace+"/"+s.Name)
		}
		if !slices.Contains(names, ns+"/"+real.Name) || slices.Contains(names, ns+"/"+forged) {
			t.Errorf("%s: binding %s lists %v; want %s/%s and not the forged name", when, rbacName, names, ns, real.Name)
		}
	}
	// Past the handoff (1 s) and more than one garbage collection interval (3 s).
	time.Sleep(8 * time.Second)
	check("after the writer's handoff and a GC interval")
	for action, n := range flowCallsSince(before) {
		if strings.HasPrefix(action, "iam:CreateRole") && n != 1 {
			t.Errorf("%s called %d times; want once, for the operator's ServiceAccount", action, n)
		}
	}

	// The attacker now creates the name for real (a tenant may create plain ServiceAccounts).
	tenant := tenantClient(t, ns)
	if _, err := tenant.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: forged}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("tenant: create %s: %v", forged, err)
	}
	time.Sleep(5 * time.Second)
	check("after the attacker created the name")
	sa, err := cluster.Client.CoreV1().ServiceAccounts(ns).Get(ctx, forged, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{annotations.Pending, annotations.Granted, annotations.AWSRoleARN, annotations.AzureClientID} {
		if v, ok := sa.Annotations[k]; ok {
			t.Errorf("the attacker's ServiceAccount carries %s=%q", k, v)
		}
	}
	t.Logf("forged CREATE and UPDATE answered with a plan; IAM calls meanwhile: %s", flowFormatCalls(flowCallsSince(before)))
}
