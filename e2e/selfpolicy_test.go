package e2e

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/e2e/harness"
)

// The chart's self policy (templates/selfpolicy.yaml) in the real apiserver, against the
// server's real identity: the harness runs the webhook as credential-webhook/credential-webhook
// with manifests/' RBAC, which is the chart's rbac.yaml with the Azure identity-binding rules on.
// The chart is rendered as that release, with Azure on, and only its self policy is installed
// (under a name of its own, removed at the end). Each write is made with a real token of the
// server's ServiceAccount. A refusal must come from the policy itself (its name in the message),
// except where the RBAC escalation check refuses first, as noted.
func TestSelfPolicyNarrowsTheServersOwnCredentials(t *testing.T) {
	ctx := context.Background()
	ns := cluster.Namespace(t) // a namespace the server serves (allowedNamespaces "*")
	release := harness.WebhookNamespace
	// allowedRequesters: the chart refuses a cloud without one (issue 17).
	objs := helmRender(t, "credential-webhook", release, `
allowedRequesters: ["`+operatorUser+`"]
allowedNamespaces: ["*"]
azure:
  allowedScopes: [/subscriptions/00000000-0000-0000-0000-000000000000]
rbac:
  azureIdentityBinding: true
selfPolicy:
  tokenAudiences: [sts.amazonaws.com]
  maxTokenExpirationSeconds: 3600
`)

	// The identity's RBAC in the cluster is the chart's: same rules as rendered.
	for _, o := range objs {
		if o.GetKind() != "ClusterRole" {
			continue
		}
		var rendered rbacv1.ClusterRole
		helmConvert(t, o, &rendered)
		stored, err := cluster.Client.RbacV1().ClusterRoles().Get(ctx, rendered.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatalf("the harness's ClusterRole %s: %v", rendered.Name, err)
		}
		if !reflect.DeepEqual(stored.Rules, rendered.Rules) {
			t.Fatalf("the server's ClusterRole in the cluster is not the chart's:\nstored   %+v\nrendered %+v", stored.Rules, rendered.Rules)
		}
	}

	// The harness installs manifests/, self policy included (type-checked without a warning
	// before any test runs), so every e2e test runs the server under it. Here: the installed
	// policy carries the chart's rules for these values, expression for expression.
	const policyName = "credential-webhook-self"
	vapGVR := admissionv1.SchemeGroupVersion.WithResource("validatingadmissionpolicies")
	installed, err := cluster.Dynamic.Resource(vapGVR).Get(ctx, policyName, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("the self policy of manifests/: %v", err)
	}
	var rendered *unstructured.Unstructured
	for _, o := range objs {
		if o.GetKind() == "ValidatingAdmissionPolicy" && o.GetName() == policyName {
			rendered = o
		}
	}
	if rendered == nil {
		t.Fatalf("the chart rendered no ValidatingAdmissionPolicy %s", policyName)
	}
	expressions := func(o *unstructured.Unstructured) []string {
		var out []string
		for _, field := range [][]string{{"spec", "matchConditions"}, {"spec", "variables"}, {"spec", "validations"}} {
			list, _, _ := unstructured.NestedSlice(o.Object, field...)
			for _, e := range list {
				m, _ := e.(map[string]any)
				out = append(out, fmt.Sprint(m["name"], m["expression"], m["messageExpression"]))
			}
		}
		return out
	}
	if got, want := expressions(installed), expressions(rendered); len(want) == 0 || !reflect.DeepEqual(got, want) {
		t.Fatalf("the installed self policy is not the chart's for these values:\ninstalled %q\nrendered  %q", got, want)
	}

	cfg, err := cluster.ServiceAccountConfig(ctx, harness.WebhookNamespace, harness.WebhookServiceAccount)
	if err != nil {
		t.Fatal(err)
	}
	self, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}

	// ServiceAccounts and Jobs live in the release namespace, which no webhook of the harness
	// sees (no replica runs here); the harness's admission policy lets the server write ours.
	suffix := shortName(ns)
	sa, err := cluster.Client.CoreV1().ServiceAccounts(release).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{
		Name: "selfpolicy-" + suffix, Labels: map[string]string{"app.kubernetes.io/managed-by": "kubestash.com"},
		Annotations: map[string]string{"note": "kept"},
	}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cluster.Client.CoreV1().ServiceAccounts(release).Delete(context.Background(), sa.Name, metav1.DeleteOptions{})
	})

	// The apiserver enforces the policy once its informers have it: a dry-run label change by the
	// server is refused by this policy.
	labelPatch := []byte(`{"metadata":{"labels":{"team":"x"}}}`)
	flowPoll(t, 30*time.Second, "the self policy to be enforced", func() (bool, error) {
		_, err := self.CoreV1().ServiceAccounts(release).Patch(ctx, sa.Name, types.MergePatchType, labelPatch, metav1.PatchOptions{DryRun: []string{metav1.DryRunAll}})
		return err != nil && strings.Contains(err.Error(), "ValidatingAdmissionPolicy '"+policyName+"'"), nil
	})

	refused := func(what string, err error, want string) {
		t.Helper()
		switch {
		case err == nil:
			t.Errorf("%s: allowed; want the self policy's refusal (%q)", what, want)
		case !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "ValidatingAdmissionPolicy '"+policyName+"'"):
			t.Errorf("%s: %v; want the self policy's refusal", what, err)
		case !strings.Contains(err.Error(), want):
			t.Errorf("%s: refusal %q does not say %q", what, err, want)
		}
	}
	allowed := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Errorf("%s: %v; want it allowed", what, err)
		}
	}

	// --- TokenRequests.
	token := func(namespace, name string, exp int64, audiences ...string) (string, error) {
		tr, err := self.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, name, &authenticationv1.TokenRequest{
			Spec: authenticationv1.TokenRequestSpec{Audiences: audiences, ExpirationSeconds: ptr.To(exp)},
		}, metav1.CreateOptions{})
		if err != nil {
			return "", err
		}
		return tr.Status.Token, nil
	}
	_, err = token("kube-system", "default", 600, "sts.amazonaws.com")
	refused("token for kube-system/default", err, "never mints tokens for ServiceAccounts of kube-system")
	_, err = token(release, harness.WebhookServiceAccount, 600, "sts.amazonaws.com")
	refused("token for the server's own ServiceAccount", err, "refused: "+release+"/"+harness.WebhookServiceAccount)
	_, err = token(ns, "default", 600, "vault")
	refused("token with the user's audience", err, "exactly one audience out of sts.amazonaws.com")
	_, err = token(ns, "default", 600)
	refused("token with the API server's audience (defaulted)", err, "exactly one audience")
	_, err = token(ns, "default", 86400, "sts.amazonaws.com")
	refused("day-long token", err, "valid for at most 3600 seconds")
	tok, err := token(ns, "default", 600, "sts.amazonaws.com")
	allowed("the readiness check's token", err)
	if err == nil && tok == "" {
		t.Error("the readiness check's token is empty")
	}

	// --- ClusterRoles and ClusterRoleBindings (Azure identity binding).
	clientID := randomGUID(t)
	name := "use-mi-" + clientID
	managed := map[string]string{annotations.Prefix + "managed": "true"}
	exactRule := rbacv1.PolicyRule{APIGroups: []string{"cid.wi.aks.azure.com"}, Resources: []string{clientID}, Verbs: []string{"use-managed-identity"}}
	deleteRBAC := func(names ...string) {
		for _, n := range names {
			_ = cluster.Client.RbacV1().ClusterRoleBindings().Delete(context.Background(), n, metav1.DeleteOptions{})
			_ = cluster.Client.RbacV1().ClusterRoles().Delete(context.Background(), n, metav1.DeleteOptions{})
		}
	}
	t.Cleanup(func() { deleteRBAC(name, "selfpolicy-"+suffix) })
	roles, bindings := self.RbacV1().ClusterRoles(), self.RbacV1().ClusterRoleBindings()

	// An extra rule the server holds itself (so the RBAC escalation check lets it through):
	// anyone bound to the role could mint tokens.
	_, err = roles.Create(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: managed},
		Rules: []rbacv1.PolicyRule{exactRule, {APIGroups: []string{""}, Resources: []string{"serviceaccounts/token"}, Verbs: []string{"create"}}}}, metav1.CreateOptions{})
	refused("ClusterRole with an extra rule", err, "holds exactly one rule")
	_, err = roles.Create(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: name,
		Labels: map[string]string{annotations.Prefix + "managed": "true", "rbac.authorization.k8s.io/aggregate-to-admin": "true"}},
		Rules: []rbacv1.PolicyRule{exactRule}}, metav1.CreateOptions{})
	refused("ClusterRole aggregated into admin", err, "carries exactly the label")
	// An aggregationRule needs cluster-admin: the RBAC escalation check refuses it before
	// admission (the policy refuses it too, see the CEL tests).
	_, err = roles.Create(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: managed},
		AggregationRule: &rbacv1.AggregationRule{ClusterRoleSelectors: []metav1.LabelSelector{{MatchLabels: map[string]string{"rbac.authorization.k8s.io/aggregate-to-admin": "true"}}}},
		Rules:           []rbacv1.PolicyRule{exactRule}}, metav1.CreateOptions{})
	if !apierrors.IsForbidden(err) {
		t.Errorf("ClusterRole with an aggregationRule: %v; want Forbidden", err)
	}
	_, err = roles.Create(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "selfpolicy-" + suffix, Labels: managed},
		Rules: []rbacv1.PolicyRule{exactRule}}, metav1.CreateOptions{})
	refused("ClusterRole of another name", err, "named use-mi-<client ID>")
	_, err = roles.Create(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: managed}, Rules: []rbacv1.PolicyRule{exactRule}}, metav1.CreateOptions{})
	allowed("the identity's exact ClusterRole", err)

	subject := rbacv1.Subject{Kind: rbacv1.ServiceAccountKind, Namespace: ns, Name: "default"}
	roleRef := func(role string) rbacv1.RoleRef {
		return rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role}
	}
	// cluster-admin: the RBAC escalation check refuses it before admission.
	_, err = bindings.Create(ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "selfpolicy-" + suffix, Labels: managed},
		RoleRef: roleRef("cluster-admin"), Subjects: []rbacv1.Subject{subject}}, metav1.CreateOptions{})
	if !apierrors.IsForbidden(err) {
		t.Errorf("ClusterRoleBinding to cluster-admin: %v; want Forbidden", err)
	}
	// The server's own ClusterRole, which it holds entirely (the escalation check passes):
	// handing its powers to another ServiceAccount is the policy's to refuse.
	_, err = bindings.Create(ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "selfpolicy-" + suffix, Labels: managed},
		RoleRef: roleRef(harness.WebhookServiceAccount), Subjects: []rbacv1.Subject{subject}}, metav1.CreateOptions{})
	refused("ClusterRoleBinding to the server's own role", err, "named use-mi-<client ID>")
	_, err = bindings.Create(ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: managed},
		RoleRef: roleRef(harness.WebhookServiceAccount), Subjects: []rbacv1.Subject{subject}}, metav1.CreateOptions{})
	refused("ClusterRoleBinding use-mi-* to the server's own role", err, "refers to the ClusterRole of the same name")
	_, err = bindings.Create(ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: managed},
		RoleRef: roleRef(name), Subjects: []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: "kube-system", Name: "default"}}}, metav1.CreateOptions{})
	refused("ClusterRoleBinding for a kube-system ServiceAccount", err, "binds only ServiceAccounts of the namespaces it serves")
	b, err := bindings.Create(ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: managed},
		RoleRef: roleRef(name), Subjects: []rbacv1.Subject{subject}}, metav1.CreateOptions{})
	allowed("the identity's exact ClusterRoleBinding", err)
	if err == nil {
		withUser := b.DeepCopy()
		withUser.Subjects = append(withUser.Subjects, rbacv1.Subject{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: "mallory"})
		_, err = bindings.Update(ctx, withUser, metav1.UpdateOptions{})
		refused("a user added to the binding", err, "binds only ServiceAccounts")
		more := b.DeepCopy()
		more.Subjects = append(more.Subjects, rbacv1.Subject{Kind: rbacv1.ServiceAccountKind, Namespace: ns, Name: "other"})
		b, err = bindings.Update(ctx, more, metav1.UpdateOptions{})
		allowed("a ServiceAccount added to the binding", err)
		if err == nil {
			allowed("the emptied binding deleted", bindings.Delete(ctx, name, metav1.DeleteOptions{
				Preconditions: &metav1.Preconditions{ResourceVersion: &b.ResourceVersion, UID: &b.UID}}))
		}
	}

	// --- ServiceAccount patches: the output annotations and ours, nothing else.
	saPatch := func(patch string) error {
		_, err := self.CoreV1().ServiceAccounts(release).Patch(ctx, sa.Name, types.MergePatchType, []byte(patch), metav1.PatchOptions{})
		return err
	}
	refused("label added to a ServiceAccount", saPatch(string(labelPatch)), "refused changes to: metadata.labels")
	refused("foreign annotation on a ServiceAccount", saPatch(`{"metadata":{"annotations":{"example.com/x":"y"}}}`), "refused: example.com/x")
	refused("audience annotation on a ServiceAccount", saPatch(`{"metadata":{"annotations":{"eks.amazonaws.com/audience":"vault"}}}`), "refused: eks.amazonaws.com/audience")
	refused("automountServiceAccountToken", saPatch(`{"automountServiceAccountToken":true}`), "refused changes to: automountServiceAccountToken")
	refused("imagePullSecrets", saPatch(`{"imagePullSecrets":[{"name":"pull"}]}`), "refused changes to: imagePullSecrets")
	allowed("role ARN and our marker written", saPatch(fmt.Sprintf(`{"metadata":{"annotations":{%q:%q,%q:%q}}}`,
		annotations.AWSRoleARN, "arn:aws:iam::123456789012:role/kubestash-0", annotations.Granted, string(sa.UID)+" aws:e2e")))

	// --- Job updates: resume a Job we held and remove our annotations, nothing else.
	job, err := cluster.Client.BatchV1().Jobs(release).Create(ctx, selfPolicyJob("selfpolicy-"+suffix, sa.Name), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cluster.Client.BatchV1().Jobs(release).Delete(context.Background(), job.Name, metav1.DeleteOptions{PropagationPolicy: ptr.To(metav1.DeletePropagationBackground)})
	})
	jobPatch := func(ops ...map[string]any) error {
		b, err := json.Marshal(ops)
		if err != nil {
			t.Fatal(err)
		}
		_, err = self.BatchV1().Jobs(release).Patch(ctx, job.Name, types.JSONPatchType, b, metav1.PatchOptions{})
		return err
	}
	op := func(kind, path string, value any) map[string]any {
		m := map[string]any{"op": kind, "path": path}
		if kind != "remove" {
			m["value"] = value
		}
		return m
	}
	// The containers of a Job are immutable in 1.37 (validation refuses before admission); the
	// scheduling directives of a suspended Job that never started are not, and are the pod
	// template too: the policy refuses those.
	if err := jobPatch(op("replace", "/spec/template/spec/containers/0/image", "registry.example/evil:1")); err == nil ||
		!(apierrors.IsInvalid(err) && strings.Contains(err.Error(), "field is immutable")) && !strings.Contains(err.Error(), "ValidatingAdmissionPolicy '"+policyName+"'") {
		t.Errorf("containers changed: %v; want refused (immutable, or by the self policy)", err)
	}
	refused("pod template's nodeSelector changed", jobPatch(op("add", "/spec/template/spec/nodeSelector", map[string]string{"kubernetes.io/hostname": "node-x"})), "refused changes to: spec.template")
	refused("parallelism changed", jobPatch(op("replace", "/spec/parallelism", 5)), "refused changes to: spec.parallelism")
	refused("Job label added", jobPatch(op("add", "/metadata/labels/team", "x")), "refused changes to: metadata.labels")
	refused("hold changed", jobPatch(op("replace", "/metadata/annotations/"+strings.ReplaceAll(annotations.HoldReason, "/", "~1"), "other")), "refused: "+annotations.HoldReason)
	// The sweeper's release patch (hold.ReleasePatch).
	allowed("the Job released", jobPatch(
		op("test", "/metadata/annotations/"+strings.ReplaceAll(annotations.HeldSince, "/", "~1"), job.Annotations[annotations.HeldSince]),
		op("replace", "/spec/suspend", false),
		op("remove", "/metadata/annotations/"+strings.ReplaceAll(annotations.HoldReason, "/", "~1"), nil),
		op("remove", "/metadata/annotations/"+strings.ReplaceAll(annotations.HeldSince, "/", "~1"), nil)))
	refused("a running Job suspended", jobPatch(op("replace", "/spec/suspend", true)), "never suspend one")
}

// selfPolicyJob is a KubeStash-like Job that admission held (suspended, our hold annotations),
// compliant with Pod Security restricted.
func selfPolicyJob(name, sa string) *batchv1.Job {
	return &batchv1.Job{
		ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: map[string]string{
			annotations.HoldReason: "aws-identity-pending", annotations.HeldSince: time.Now().UTC().Format(time.RFC3339),
		}},
		Spec: batchv1.JobSpec{Suspend: ptr.To(true), Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
			ServiceAccountName: sa, RestartPolicy: corev1.RestartPolicyNever,
			SecurityContext: &corev1.PodSecurityContext{RunAsNonRoot: ptr.To(true), RunAsUser: ptr.To(int64(65532)),
				SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}},
			Containers: []corev1.Container{{Name: "backup", Image: "registry.example/restic:1",
				SecurityContext: &corev1.SecurityContext{AllowPrivilegeEscalation: ptr.To(false),
					Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}}}}},
		}}},
	}
}

func randomGUID(t *testing.T) string {
	t.Helper()
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
