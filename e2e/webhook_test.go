package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/e2e/harness"
	"go.klusters.dev/credential-webhook/testenv/moto"
)

// seedRole creates a KubeStash seed role in moto trusting the cluster's issuer.
func seedRole(t *testing.T, name string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	arn, err := moto.CreateSeedRole(ctx, cluster.AWSConfig(), name, "/", cluster.Issuer)
	if err != nil {
		t.Fatalf("create seed role: %v", err)
	}
	return arn
}

// A ServiceAccount carrying the seed-role annotation, created through the apiserver, is reviewed
// by the webhook: the uid the apiserver generated for the review (seen on the wire) is the uid
// in the webhook's review log line, with the same namespace and name.
func TestServiceAccountPassesThroughWebhook(t *testing.T) {
	ns := cluster.Namespace(t)
	wh := cluster.StartWebhook(t, harness.WebhookOptions{})
	ctx := context.Background()

	operator := operatorClient(t, ns)

	sa := sessionServiceAccount(ns, seedRole(t, "kubestash-selfhost"))
	_, createErr := operator.CoreV1().ServiceAccounts(ns).Create(ctx, sa, metav1.CreateOptions{})

	wire, err := cluster.WaitForReview(10*time.Second, func(r harness.WireReview) bool {
		return r.Namespace == ns && r.Name == sa.Name && r.Kind == "ServiceAccount"
	})
	if err != nil {
		t.Fatalf("the apiserver sent no review for %s/%s (create error: %v)", ns, sa.Name, createErr)
	}
	if wire.Backend != wh.Name || wire.Err != "" {
		t.Fatalf("review answered by %q (transport error %q), want replica %s", wire.Backend, wire.Err, wh.Name)
	}
	if wire.UID == "" || wire.Operation != "CREATE" || wire.DryRun || wire.Path != "/mutate/serviceaccounts" || wire.User != operatorUser {
		t.Errorf("wire review = uid %q op %s dryRun %v path %s user %s; want a uid, CREATE, not dry-run, /mutate/serviceaccounts, %s",
			wire.UID, wire.Operation, wire.DryRun, wire.Path, wire.User, operatorUser)
	}
	if createErr != nil && wire.Allowed {
		t.Errorf("webhook allowed the review but the create failed: %v", createErr)
	}
	if createErr == nil && !wire.Allowed {
		t.Errorf("webhook denied the review (%s) but the create succeeded", wire.Result)
	}

	logged, err := wh.WaitForReviewLog(5*time.Second, func(r harness.ReviewLog) bool { return r.UID == wire.UID })
	if err != nil {
		t.Fatalf("webhook log has no review line with the apiserver's uid %s: %v", wire.UID, err)
	}
	if logged.Namespace != ns || logged.Name != sa.Name || logged.Kind != "ServiceAccount" ||
		logged.Operation != "CREATE" || logged.DryRun {
		t.Errorf("review log line = %+v; want ServiceAccount CREATE %s/%s, dryRun false", logged.Line, ns, sa.Name)
	}
	if logged.Decision == "" || logged.Duration == "" {
		t.Errorf("review log line lacks decision or duration: %v", logged.Line)
	}
}

// A dry-run create reaches the webhook flagged as dry-run (sideEffects NoneOnDryRun) and
// nothing is stored.
func TestDryRunCreateIsReviewedAndNotPersisted(t *testing.T) {
	ns := cluster.Namespace(t)
	wh := cluster.StartWebhook(t, harness.WebhookOptions{})
	ctx := context.Background()

	sa := sessionServiceAccount(ns, seedRole(t, "kubestash-dryrun"))
	_, createErr := cluster.Client.CoreV1().ServiceAccounts(ns).Create(ctx, sa, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})

	wire, err := cluster.WaitForReview(10*time.Second, func(r harness.WireReview) bool {
		return r.Namespace == ns && r.Name == sa.Name
	})
	if err != nil {
		t.Fatalf("the apiserver sent no review for the dry-run create (create error: %v)", createErr)
	}
	if !wire.DryRun {
		t.Errorf("wire review dryRun = false, want true")
	}
	logged, err := wh.WaitForReviewLog(5*time.Second, func(r harness.ReviewLog) bool { return r.UID == wire.UID })
	if err != nil {
		t.Fatal(err)
	}
	if !logged.DryRun || logged.Name != sa.Name || logged.Namespace != ns {
		t.Errorf("review log line = %v; want dryRun true for %s/%s", logged.Line, ns, sa.Name)
	}
	_, err = cluster.Client.CoreV1().ServiceAccounts(ns).Get(ctx, sa.Name, metav1.GetOptions{})
	if !apierrors.IsNotFound(err) {
		t.Errorf("after a dry-run create, get %s/%s: err = %v, want NotFound", ns, sa.Name, err)
	}
}

// With every replica down the apiserver applies the documented failurePolicy: ServiceAccounts
// carrying our input annotations and KubeStash Jobs are refused (Fail); ServiceAccounts without
// them never reach the webhook (matchConditions), other Jobs neither (objectSelector); Pods are
// admitted (Ignore).
func TestWebhookDownFailurePolicy(t *testing.T) {
	ns := cluster.Namespace(t)
	wh := cluster.StartWebhook(t, harness.WebhookOptions{})
	if err := wh.Stop(); err != nil {
		t.Fatalf("stop webhook: %v", err)
	}
	if wh.Running() {
		t.Fatal("webhook still running after Stop")
	}
	ctx := context.Background()
	core := cluster.Client.CoreV1()

	t.Run("annotated ServiceAccount is refused", func(t *testing.T) {
		sa := sessionServiceAccount(ns, "arn:aws:iam::123456789012:role/kubestash-selfhost")
		_, err := core.ServiceAccounts(ns).Create(ctx, sa, metav1.CreateOptions{})
		assertWebhookCallFailed(t, err, "serviceaccounts.credential-webhook.klusters.dev")
		if _, err := core.ServiceAccounts(ns).Get(ctx, sa.Name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("refused ServiceAccount exists anyway (get err = %v)", err)
		}
	})

	t.Run("ServiceAccount with only our own annotation is refused", func(t *testing.T) {
		sa := sessionServiceAccount(ns, "")
		sa.Annotations = map[string]string{annotations.Pending: "forged"}
		_, err := core.ServiceAccounts(ns).Create(ctx, sa, metav1.CreateOptions{})
		assertWebhookCallFailed(t, err, "serviceaccounts.credential-webhook.klusters.dev")
	})

	t.Run("plain ServiceAccount is admitted without a call", func(t *testing.T) {
		sa := sessionServiceAccount(ns, "")
		sa.Annotations = map[string]string{"example.com/other": "x"}
		if _, err := core.ServiceAccounts(ns).Create(ctx, sa, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create: %v", err)
		}
		for _, r := range cluster.Reviews() {
			if r.Namespace == ns && r.Name == sa.Name {
				t.Errorf("apiserver called the webhook for a ServiceAccount without our annotations: %+v", r)
			}
		}
	})

	t.Run("KubeStash Job is refused", func(t *testing.T) {
		_, err := cluster.Client.BatchV1().Jobs(ns).Create(ctx, backupJob(ns, "default"), metav1.CreateOptions{})
		assertWebhookCallFailed(t, err, "jobs.credential-webhook.klusters.dev")
	})

	t.Run("other Job is admitted", func(t *testing.T) {
		job := backupJob(ns, "default")
		delete(job.Labels, annotations.ManagedByLabel)
		job.Spec.Suspend = ptr.To(true)
		if _, err := cluster.Client.BatchV1().Jobs(ns).Create(ctx, job, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create: %v", err)
		}
	})

	t.Run("Pod is admitted, failing open", func(t *testing.T) {
		if _, err := core.Pods(ns).Create(ctx, plainPod(ns), metav1.CreateOptions{}); err != nil {
			t.Fatalf("create Pod with the webhook down: %v", err)
		}
		// The apiserver did call (and fail) the webhook, rather than not matching the Pod: the
		// frontend saw the call, and the audit event records the fail-open.
		wire, err := cluster.WaitForReview(5*time.Second, func(r harness.WireReview) bool {
			return r.Namespace == ns && r.Kind == "Pod"
		})
		if err != nil || wire.Err == "" {
			t.Errorf("want one Pod review on the wire that no replica answered; got %+v (%v)", wire, err)
		}
		if !auditFailedOpen(ns) {
			t.Errorf("no audit event records the Pod webhook failing open in %s", ns)
		}
	})
}

func assertWebhookCallFailed(t *testing.T, err error, webhook string) {
	t.Helper()
	if err == nil {
		t.Fatalf("create succeeded with the webhook down; want failurePolicy Fail of %s to refuse it", webhook)
	}
	if msg := err.Error(); !strings.Contains(msg, "failed calling webhook") || !strings.Contains(msg, webhook) {
		t.Errorf("error = %q; want the apiserver's failed calling webhook %q", msg, webhook)
	}
}

// auditFailedOpen reports whether the audit log has a Pod create in ns with the apiserver's
// failed-open annotation naming our Pod webhook.
func auditFailedOpen(ns string) bool {
	for _, e := range cluster.AuditEvents(ns) {
		if e.Verb != "create" || e.ObjectRef == nil || e.ObjectRef.Resource != "pods" || e.Stage != "ResponseComplete" {
			continue
		}
		for k, v := range e.Annotations {
			if strings.HasPrefix(k, "failed-open.mutation.webhook.admission.k8s.io/") && strings.Contains(v, "pods.credential-webhook.klusters.dev") {
				return true
			}
		}
	}
	return false
}
