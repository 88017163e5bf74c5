package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"go.klusters.dev/credential-webhook/e2e/harness"
)

// The webhook's kubeconfig is its own ServiceAccount, and the RBAC from manifests/ grants it
// exactly what the design needs, checked by the real authoriser.
func TestWebhookIdentityIsLeastPrivilege(t *testing.T) {
	cfg, err := clientcmd.BuildConfigFromFlags("", cluster.WebhookKubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	who, err := client.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("SelfSubjectReview: %v", err)
	}
	if got, want := who.Status.UserInfo.Username, "system:serviceaccount:credential-webhook:credential-webhook"; got != want {
		t.Fatalf("webhook authenticates as %q, want %q", got, want)
	}

	tests := []struct {
		verb, group, resource, subresource, namespace string
		allowed                                       bool
	}{
		{"get", "", "serviceaccounts", "", "team-a", true},
		{"watch", "", "serviceaccounts", "", "", true},
		{"patch", "", "serviceaccounts", "", "team-a", true},
		{"create", "", "serviceaccounts", "token", "team-a", true},
		{"list", "batch", "jobs", "", "", true},
		{"update", "batch", "jobs", "", "team-a", true},
		{"create", "", "events", "", "team-a", true},
		{"create", "events.k8s.io", "events", "", "team-a", true},
		{"create", "coordination.k8s.io", "leases", "", "credential-webhook", true},
		{"update", "coordination.k8s.io", "leases", "", "credential-webhook", true},

		{"create", "coordination.k8s.io", "leases", "", "team-a", false},
		{"create", "", "serviceaccounts", "", "team-a", false},
		{"delete", "", "serviceaccounts", "", "team-a", false},
		{"update", "", "serviceaccounts", "", "team-a", false},
		{"create", "batch", "jobs", "", "team-a", false},
		{"delete", "batch", "jobs", "", "team-a", false},
		{"get", "", "secrets", "", "team-a", false},
		{"list", "", "secrets", "", "", false},
		{"create", "", "pods", "", "team-a", false},
		{"update", "admissionregistration.k8s.io", "mutatingwebhookconfigurations", "", "", false},
		{"escalate", "rbac.authorization.k8s.io", "clusterroles", "", "", false},
		{"bind", "rbac.authorization.k8s.io", "clusterroles", "", "", false},
		{"update", "rbac.authorization.k8s.io", "clusterroles", "", "", false},
		{"create", "rbac.authorization.k8s.io", "rolebindings", "", "team-a", false},
		{"create", "rbac.authorization.k8s.io", "clusterroles", "", "", true},
		{"update", "rbac.authorization.k8s.io", "clusterrolebindings", "", "", true},
		{"use-managed-identity", "cid.wi.aks.azure.com", "00000000-0000-0000-0000-000000000001", "", "", true},
		{"impersonate", "", "serviceaccounts", "", "team-a", false},
	}
	for _, tc := range tests {
		name := tc.verb + " " + tc.group + "/" + tc.resource + "/" + tc.subresource + " in " + tc.namespace
		t.Run(name, func(t *testing.T) {
			r, err := client.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authorizationv1.SelfSubjectAccessReview{
				Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authorizationv1.ResourceAttributes{
					Verb: tc.verb, Group: tc.group, Resource: tc.resource, Subresource: tc.subresource, Namespace: tc.namespace,
				}},
			}, metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if r.Status.Allowed != tc.allowed {
				t.Errorf("allowed = %v, want %v (%s)", r.Status.Allowed, tc.allowed, r.Status.Reason)
			}
		})
	}

	// And a real request, not only the authoriser's opinion.
	if _, err := client.CoreV1().Secrets("kube-system").List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("webhook listing secrets: err = %v, want Forbidden", err)
	}
}

// cert-manager's CRDs are installed, so the project's Issuers and Certificates were validated
// against the real schema when the harness applied manifests/, and a broken one is refused.
func TestCertManagerSchema(t *testing.T) {
	ctx := context.Background()
	certs := schema.GroupVersionResource{Group: "cert-manager.io", Version: "v1", Resource: "certificates"}
	issuers := schema.GroupVersionResource{Group: "cert-manager.io", Version: "v1", Resource: "issuers"}
	for _, c := range []struct {
		gvr  schema.GroupVersionResource
		name string
	}{
		{issuers, "credential-webhook-selfsigned"}, {issuers, "credential-webhook-ca"},
		{certs, "credential-webhook-ca"}, {certs, "credential-webhook-tls"},
	} {
		if _, err := cluster.Dynamic.Resource(c.gvr).Namespace(harness.WebhookNamespace).Get(ctx, c.name, metav1.GetOptions{}); err != nil {
			t.Errorf("%s %s from manifests/: %v", c.gvr.Resource, c.name, err)
		}
	}
	tls, err := cluster.Dynamic.Resource(certs).Namespace(harness.WebhookNamespace).Get(ctx, "credential-webhook-tls", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	dns, _, _ := unstructured.NestedStringSlice(tls.Object, "spec", "dnsNames")
	if len(dns) == 0 || dns[0] != "credential-webhook.credential-webhook.svc" {
		t.Errorf("serving Certificate dnsNames = %v, want service.namespace.svc first", dns)
	}

	ns := cluster.Namespace(t)
	broken := `apiVersion: cert-manager.io/v1
kind: Certificate
metadata:
  name: broken
  namespace: ` + ns + `
spec:
  dnsNames: [a.example]
  privateKey:
    algorithm: DSA
`
	_, err = cluster.Apply(ctx, []byte(broken))
	if err == nil || !strings.Contains(err.Error(), "issuerRef") || !strings.Contains(err.Error(), "privateKey.algorithm") {
		t.Errorf("applying a Certificate without issuerRef and with algorithm DSA: err = %v; want the CRD schema to refuse both", err)
	}
}

// The registered MutatingWebhookConfiguration is manifests/' own with only clientConfig
// rewritten, and keeps the documented failure policies.
func TestRegisteredWebhookConfiguration(t *testing.T) {
	mwc, err := cluster.Client.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(context.Background(), harness.WebhookConfigurationName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]struct {
		policy  string
		timeout int32
		path    string
	}{
		"serviceaccounts.credential-webhook.klusters.dev": {"Fail", 10, "/mutate/serviceaccounts"},
		"jobs.credential-webhook.klusters.dev":            {"Fail", 5, "/mutate/jobs"},
		"pods.credential-webhook.klusters.dev":            {"Ignore", 5, "/mutate/pods"},
	}
	if len(mwc.Webhooks) != len(want) {
		t.Fatalf("%d webhooks registered, want %d", len(mwc.Webhooks), len(want))
	}
	for _, h := range mwc.Webhooks {
		w, ok := want[h.Name]
		if !ok {
			t.Errorf("unexpected webhook %s", h.Name)
			continue
		}
		if string(*h.FailurePolicy) != w.policy || *h.TimeoutSeconds != w.timeout {
			t.Errorf("%s: failurePolicy %s timeout %d, want %s %d", h.Name, *h.FailurePolicy, *h.TimeoutSeconds, w.policy, w.timeout)
		}
		if h.ClientConfig.URL == nil || *h.ClientConfig.URL != cluster.WebhookURL+w.path || len(h.ClientConfig.CABundle) == 0 {
			t.Errorf("%s: clientConfig not pointed at the frontend %s%s with the dev CA", h.Name, cluster.WebhookURL, w.path)
		}
		if string(*h.SideEffects) != "NoneOnDryRun" || string(*h.MatchPolicy) != "Equivalent" {
			t.Errorf("%s: sideEffects %s matchPolicy %s", h.Name, *h.SideEffects, *h.MatchPolicy)
		}
	}
}

// Jobs really run their controller: an unsuspended Job gets a Pod (which stays Pending: there
// is no kubelet), and the Pod passes the Pod webhook path.
func TestJobControllerCreatesPods(t *testing.T) {
	ns := cluster.Namespace(t)
	ctx := context.Background()
	job := backupJob(ns, "default")
	job.Labels = map[string]string{"app": "not-kubestash"}
	created, err := cluster.Client.BatchV1().Jobs(ns).Create(ctx, job, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		pods, err := cluster.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "batch.kubernetes.io/job-name=" + created.Name})
		if err != nil {
			t.Fatal(err)
		}
		if len(pods.Items) > 0 {
			if sa := pods.Items[0].Spec.ServiceAccountName; sa != "default" {
				t.Errorf("Pod runs as %q, want the Job's ServiceAccount", sa)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("job controller created no Pod for %s/%s in 30s", ns, created.Name)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// Two replicas share the reviews round-robin; killing one mid-run loses no review, as with a
// Service whose endpoint went away.
func TestReplicasShareReviews(t *testing.T) {
	ns := cluster.Namespace(t)
	a := cluster.StartWebhook(t, harness.WebhookOptions{})
	b := cluster.StartWebhook(t, harness.WebhookOptions{})
	ctx := context.Background()
	create := func(i int) {
		t.Helper()
		sa := sessionServiceAccount(ns, "arn:aws:iam::123456789012:role/kubestash-selfhost")
		if _, err := cluster.Client.CoreV1().ServiceAccounts(ns).Create(ctx, sa, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}); err != nil && strings.Contains(err.Error(), "failed calling webhook") {
			t.Fatalf("create %d: %v", i, err)
		}
	}
	for i := range 6 {
		create(i)
	}
	count := func() map[string]int {
		n := map[string]int{}
		for _, r := range cluster.Reviews() {
			if r.Namespace == ns {
				n[r.Backend]++
			}
		}
		return n
	}
	if n := count(); n[a.Name] == 0 || n[b.Name] == 0 || n[""] != 0 {
		t.Fatalf("reviews per replica = %v, want both replicas used and none unanswered", n)
	}
	if err := a.Kill(); err != nil {
		t.Fatal(err)
	}
	before := count()[b.Name]
	for i := range 4 {
		create(10 + i)
	}
	if got := count()[b.Name] - before; got != 4 {
		t.Errorf("after killing %s, %s answered %d of 4 reviews", a.Name, b.Name, got)
	}
	if a.Running() || a.ExitErr() == nil || !strings.Contains(a.ExitErr().Error(), "killed") {
		t.Errorf("killed replica: running %v, exit %v", a.Running(), a.ExitErr())
	}
	a.Restart(t)
	if !a.Running() {
		t.Error("replica not running after Restart")
	}
}
