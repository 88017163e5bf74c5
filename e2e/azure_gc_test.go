package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/e2e/harness"
	"go.klusters.dev/credential-webhook/providers/azure"
	"go.klusters.dev/credential-webhook/testenv/arm"
)

// Garbage collection of identity bindings through the real binary: the sweeper (leader by Lease,
// on by default) removes the subjects of deleted ServiceAccounts from use-mi-<clientID> once they
// have been missing for the grace period, keeps the living ones, and deletes the binding with its
// last subject (RemoveSubjects); the ClusterRole stays (it grants nothing without a binding).
func TestAzureGarbageCollectsDeletedServiceAccounts(t *testing.T) {
	// The grace period is flowGCGrace; a deletion triggers a collection after a 2 s debounce,
	// which comes back when the grace period is over.
	const gcTimeout = flowGCGrace + time.Minute
	ctx := context.Background()
	ns := cluster.Namespace(t)
	s := arm.Start(t)
	// An identity of its own: no other test's ServiceAccounts land in this binding.
	id := arm.Identity{SubscriptionID: arm.DemoSubscriptionID, ResourceGroup: arm.DemoResourceGroup, Name: "kubestash-gc-mi-" + shortID()}
	id.ClientID, id.TenantID = s.AddIdentity(id.SubscriptionID, id.ResourceGroup, id.Name)
	rbacName := azure.RBACNamePrefix + id.ClientID
	t.Cleanup(func() {
		_ = cluster.Client.RbacV1().ClusterRoleBindings().Delete(context.Background(), rbacName, metav1.DeleteOptions{})
		_ = cluster.Client.RbacV1().ClusterRoles().Delete(context.Background(), rbacName, metav1.DeleteOptions{})
	})

	name := "azgc-" + shortID()
	wh := cluster.StartWebhook(t, harness.WebhookOptions{
		Name: name,
		Args: []string{
			"--allowed-requesters=user:" + operatorUser,
			"--allowed-namespaces=*",
			"--azure-allowed-scopes=/subscriptions/" + arm.DemoSubscriptionID,
			"--azure-arm-endpoint=" + s.URL,
			"--lease-namespace=" + harness.WebhookNamespace,
			"--identity=" + name,
			"--gc-grace=" + flowGCGrace.String(),
		},
		Env: s.Env(),
	})
	// SIGTERM, so the replica releases the sweeper Lease for the next test (registered after
	// StartWebhook's cleanup, so it runs first; the harness's SIGKILL then finds nothing to do).
	t.Cleanup(func() {
		if err := wh.Stop(); err != nil {
			t.Errorf("stop %s: %v", wh.Name, err)
		}
	})
	flowWaitLeader(t, wh.Name)

	operator := azOperator(t, ns, &harness.Warnings{})
	sas := []string{
		"sample-backup-daemon-demo-session-1778072138",
		"sample-backup-daemon-demo-session-1778072139",
		"sample-backup-daemon-demo-session-1778072140",
	}
	for _, n := range sas {
		got, err := operator.CoreV1().ServiceAccounts(ns).Create(ctx, azServiceAccount(ns, n, id), metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("create %s: %v", n, err)
		}
		if got.Annotations[annotations.AzureClientID] != id.ClientID {
			t.Fatalf("ServiceAccount %s: annotations %v, want client-id %s", n, got.Annotations, id.ClientID)
		}
	}
	bound := func() (map[string]int, error) {
		b, err := cluster.Client.RbacV1().ClusterRoleBindings().Get(ctx, rbacName, metav1.GetOptions{})
		if err != nil {
			return nil, err
		}
		return subjectsIn(b, ns), nil
	}
	var subjects map[string]int
	flowPoll(t, 30*time.Second, "all three ServiceAccounts in "+rbacName, func() (bool, error) {
		var err error
		subjects, err = bound()
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		return len(subjects) == len(sas), err
	})

	collectedBefore := flowMetric(t, wh, "credential_webhook_subjects_collected_total", nil)
	deleteSA := func(n string) {
		t.Helper()
		if err := cluster.Client.CoreV1().ServiceAccounts(ns).Delete(ctx, n, metav1.DeleteOptions{}); err != nil {
			t.Fatalf("delete %s: %v", n, err)
		}
	}
	start := time.Now()
	deleteSA(sas[0])
	deleteSA(sas[1])
	flowPoll(t, gcTimeout, "only "+sas[2]+" left in "+rbacName, func() (bool, error) {
		var err error
		subjects, err = bound()
		return err == nil && len(subjects) == 1 && subjects[sas[2]] == 1, err
	})
	firstTook := time.Since(start)
	if firstTook < flowGCGrace {
		t.Errorf("subjects collected %s after the deletes, before the grace period %s", firstTook, flowGCGrace)
	}
	// The whole binding, not only this namespace's subjects: nothing else was in it.
	b, err := cluster.Client.RbacV1().ClusterRoleBindings().Get(ctx, rbacName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(b.Subjects) != 1 || b.Subjects[0].Name != sas[2] || b.Subjects[0].Namespace != ns {
		t.Errorf("binding subjects %+v, want only %s/%s", b.Subjects, ns, sas[2])
	}
	if got := flowMetric(t, wh, "credential_webhook_subjects_collected_total", nil) - collectedBefore; got != 2 {
		t.Errorf("subjects_collected_total grew by %v, want 2", got)
	}
	azWait(t, 10*time.Second, "the authoriser refuses the deleted ServiceAccounts and still allows "+sas[2], func() (bool, error) {
		return !mayUse(t, ns, sas[0], id.ClientID) && !mayUse(t, ns, sas[1], id.ClientID) && mayUse(t, ns, sas[2], id.ClientID), nil
	})

	start = time.Now()
	deleteSA(sas[2])
	flowPoll(t, gcTimeout, rbacName+" deleted with its last subject", func() (bool, error) {
		subjects, err := bound()
		if apierrors.IsNotFound(err) {
			return true, nil
		}
		if err != nil {
			return false, err
		}
		if len(subjects) == 0 {
			return false, fmt.Errorf("binding left empty instead of deleted: %+v", subjects)
		}
		return false, nil
	})
	lastTook := time.Since(start)
	if got := flowMetric(t, wh, "credential_webhook_subjects_collected_total", nil) - collectedBefore; got != 3 {
		t.Errorf("subjects_collected_total grew by %v, want 3", got)
	}
	// RemoveSubjects keeps the ClusterRole: deleting it could race with an EnsureBinding.
	if _, err := cluster.Client.RbacV1().ClusterRoles().Get(ctx, rbacName, metav1.GetOptions{}); err != nil {
		t.Errorf("ClusterRole %s after its binding was collected: %v", rbacName, err)
	}
	if c := s.Calls(); c.Gets != 1 {
		t.Errorf("ARM calls %+v; want one identity read (collection needs no ARM call)", c)
	}
	t.Logf("figures: %d ServiceAccounts bound to %s; 2 deleted, collected in %s; last deleted, binding gone in %s (grace %s, debounce 2s)",
		len(sas), rbacName, firstTook.Round(time.Second), lastTook.Round(time.Second), flowGCGrace)
}
