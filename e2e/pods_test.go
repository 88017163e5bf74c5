package e2e

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"go.klusters.dev/credential-webhook/e2e/harness"
)

// Issue 17, through the real apiserver, the project's MutatingWebhookConfiguration (manifests/)
// and its admission policy: a tenant opts its own ServiceAccount into the restic sidecar with
// go.klusters.dev/restic-credentials, which survives the guard and the policy (the former key,
// under our prefix, is stripped); its Pods get IRSA and the sidecar, counted in the metrics. A Pod
// labelled eks.amazonaws.com/skip-pod-identity-webhook, whatever the value, never reaches the
// webhook (objectSelector) and is stored as created.
func TestPodResticOptInAndSkipLabel(t *testing.T) {
	ctx := context.Background()
	ns := cluster.Namespace(t)
	wh := cluster.StartWebhook(t, harness.WebhookOptions{Args: []string{
		"--aws-inject-pod-identity", "--aws-region=us-east-1",
		"--sidecar-image=registry.example/credential-webhook:e2e",
		// deny: a Pod created before the cache has the ServiceAccount is refused, and retried below.
		"--pod-missing-serviceaccount=deny",
	}})
	tenant := tenantClient(t, ns)

	const (
		roleARN   = "arn:aws:iam::123456789012:role/tenant-backup"
		resticKey = "go.klusters.dev/restic-credentials"
		legacyKey = "credential-webhook.klusters.dev/restic-credentials"
		skipLabel = "eks.amazonaws.com/skip-pod-identity-webhook"
	)
	sa, err := tenant.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{
		Name: "restic", Namespace: ns,
		Annotations: map[string]string{"eks.amazonaws.com/role-arn": roleARN, resticKey: "true", legacyKey: "true"},
	}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("tenant creates a ServiceAccount opting into the sidecar: %v", err)
	}
	if sa.Annotations[resticKey] != "true" {
		t.Errorf("the tenant's opt-in %s was not kept: %v", resticKey, sa.Annotations)
	}
	if _, ok := sa.Annotations[legacyKey]; ok {
		t.Errorf("the former key %s, ours, was stored for a tenant: %v", legacyKey, sa.Annotations)
	}

	pod := func(name string, labels map[string]string) *corev1.Pod {
		p := plainPod(ns)
		p.GenerateName, p.Name, p.Labels = "", name, labels
		p.Spec.ServiceAccountName = sa.Name
		return p
	}
	var injected *corev1.Pod
	flowPoll(t, 30*time.Second, "a Pod admitted once the cache has its ServiceAccount", func() (bool, error) {
		created, err := tenant.CoreV1().Pods(ns).Create(ctx, pod("injected", nil), metav1.CreateOptions{})
		if err != nil {
			return false, nil // refused until the ServiceAccount cache has it
		}
		injected = created
		return true, nil
	})
	if v, ok := flowEnv(injected.Spec.Containers[0], "AWS_ROLE_ARN"); !ok || v != roleARN {
		t.Errorf("Pod without the label: AWS_ROLE_ARN = %q (present %v), want %s\n%s", v, ok, roleARN, wh.Logs())
	}
	if len(injected.Spec.InitContainers) != 1 || injected.Spec.InitContainers[0].Name != "aws-credentials" {
		t.Errorf("Pod without the label: init containers %+v, want the aws-credentials sidecar", injected.Spec.InitContainers)
	}
	if got := flowMetric(t, wh, "credential_webhook_pods_injected_total", map[string]string{"sidecar": "true"}); got != 1 {
		t.Errorf("credential_webhook_pods_injected_total{sidecar=\"true\"} = %v, want 1", got)
	}

	for _, value := range []string{"true", "false"} {
		name := "skipped-" + value
		created, err := tenant.CoreV1().Pods(ns).Create(ctx, pod(name, map[string]string{skipLabel: value}), metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("create Pod labelled %s=%s: %v", skipLabel, value, err)
		}
		if _, ok := flowEnv(created.Spec.Containers[0], "AWS_ROLE_ARN"); ok || len(created.Spec.InitContainers) != 0 || len(created.Spec.Volumes) > 1 {
			t.Errorf("Pod labelled %s=%s was injected: %+v", skipLabel, value, created.Spec)
		}
		if r, err := cluster.WaitForReview(time.Second, func(r harness.WireReview) bool {
			return r.Kind == "Pod" && r.Namespace == ns && r.Name == name
		}); err == nil {
			t.Errorf("Pod labelled %s=%s reached the webhook (%s): the objectSelector should keep it away", skipLabel, value, r.Backend)
		}
	}
}
