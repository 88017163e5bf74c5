package e2e

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"go.klusters.dev/credential-webhook/annotations"
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

// Pods created right after their ServiceAccounts, in a burst answered by two replicas, get the
// role their ServiceAccount was finally granted, not the plan admission answered with: two
// replicas plan one burst into the same room, the writer puts the surplus elsewhere and corrects
// the annotation, and a Pod's environment cannot be corrected. The Pod's review waits for the
// grant (--pod-grant-wait). How many plans missed is logged: the test asserts what every Pod got.
func TestPodsOfABurstGetTheGrantedRole(t *testing.T) {
	ctx := context.Background()
	ns, op, _, seed, replicas := twoReplicas(t, "podburst", "--aws-inject-pod-identity", "--aws-region=us-east-1", "--pod-missing-serviceaccount=deny")

	const n, clients = 90, 12
	var mu sync.Mutex
	planned := map[string]string{}  // ServiceAccount -> the role ARN admission answered with
	injected := map[string]string{} // ServiceAccount -> AWS_ROLE_ARN of its Pod
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range clients {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				name := fmt.Sprintf("session-%d", i)
				sa, err := op.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name,
					Annotations: map[string]string{annotations.SeedRole: seed}}}, metav1.CreateOptions{})
				if err != nil {
					errs <- fmt.Errorf("ServiceAccount %s: %w", name, err)
					return
				}
				p := plainPod(ns)
				p.Spec.ServiceAccountName = name
				var created *corev1.Pod
				// deny: a Pod whose ServiceAccount the replica's cache has not seen yet, or that is
				// still not granted after the wait, is refused and created again, as its controller
				// would, for up to 30 s.
				for attempt := 0; ; attempt++ {
					created, err = cluster.Client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
					if err == nil || attempt == 300 {
						break
					}
					time.Sleep(100 * time.Millisecond)
				}
				if err != nil {
					errs <- fmt.Errorf("Pod of %s: %w", name, err)
					return
				}
				arn := ""
				for _, e := range created.Spec.Containers[0].Env {
					if e.Name == "AWS_ROLE_ARN" {
						arn = e.Value
					}
				}
				mu.Lock()
				planned[name], injected[name] = sa.Annotations[annotations.AWSRoleARN], arn
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	final := map[string]string{}
	flowPoll(t, 2*time.Minute, "every ServiceAccount granted", func() (bool, error) {
		list, err := cluster.Client.CoreV1().ServiceAccounts(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		for _, sa := range list.Items {
			if _, ok := planned[sa.Name]; !ok {
				continue
			}
			if _, pending := sa.Annotations[annotations.Pending]; pending {
				return false, nil
			}
			final[sa.Name] = sa.Annotations[annotations.AWSRoleARN]
		}
		return len(final) == n, nil
	})
	missed := 0
	for name, arn := range final {
		if planned[name] != arn {
			missed++
		}
		if injected[name] != arn {
			t.Errorf("the Pod of %s has AWS_ROLE_ARN %q; the ServiceAccount was granted %s (planned %s)", name, injected[name], arn, planned[name])
		}
	}
	// The Pods came while their ServiceAccounts were pending, so the path under test ran.
	waited := 0.0
	for _, w := range replicas {
		waited += flowMetric(t, w, "credential_webhook_pods_grant_waits_total", map[string]string{"outcome": "granted"})
	}
	if waited == 0 {
		t.Errorf("no Pod review waited for a grant: every ServiceAccount was granted before its Pod came, so this test showed nothing")
	}
	t.Logf("%d ServiceAccounts from %d clients over two replicas: %d plans missed, %.0f Pod reviews waited for the grant; every Pod checked against the granted role", n, clients, missed, waited)
}
