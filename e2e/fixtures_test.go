package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/e2e/harness"
)

// sessionServiceAccount is what the KubeStash operator creates per backup session: a name with
// a Unix timestamp, the seed role copied from its own role-arn annotation, and the buckets.
func sessionServiceAccount(namespace, seedARN string) *corev1.ServiceAccount {
	return &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{
		Name:      fmt.Sprintf("sample-backup-daemon-demo-session-%d", time.Now().UnixNano()/1e3),
		Namespace: namespace,
		Annotations: map[string]string{
			annotations.SeedRole:    seedARN,
			annotations.BucketNames: harness.BucketNames,
		},
	}}
}

// backupJob is a KubeStash backup Job running as serviceAccount.
func backupJob(namespace, serviceAccount string) *batchv1.Job {
	labels := map[string]string{
		annotations.ManagedByLabel:        annotations.ManagedByValue,
		"app.kubernetes.io/component":     "kubestash-backup",
		"kubestash.com/invoker-name":      "sample-backup",
		"kubestash.com/invoker-namespace": namespace,
		"kubestash.com/invoker-kind":      "BackupConfiguration",
		"kubestash.com/session-name":      "demo-session",
	}
	return &batchv1.Job{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "sample-backup-", Namespace: namespace, Labels: labels},
		Spec: batchv1.JobSpec{
			BackoffLimit: ptr.To(int32(0)),
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app.kubernetes.io/component": "kubestash-backup"}},
				Spec: corev1.PodSpec{
					ServiceAccountName: serviceAccount,
					RestartPolicy:      corev1.RestartPolicyNever,
					Containers:         []corev1.Container{{Name: "backup", Image: "ghcr.io/kubestash/restic:0.14"}},
				},
			},
		},
	}
}

func plainPod(namespace string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "plain-", Namespace: namespace},
		Spec: corev1.PodSpec{
			RestartPolicy: corev1.RestartPolicyNever,
			Containers:    []corev1.Container{{Name: "c", Image: "busybox"}},
		},
	}
}

// operatorUser is the KubeStash operator's ServiceAccount, the requester of every session
// ServiceAccount and Job in production.
const operatorUser = harness.OperatorUser

// operatorClient acts as the KubeStash operator (impersonated), allowed to edit namespace ns.
func operatorClient(t testing.TB, ns string) kubernetes.Interface {
	t.Helper()
	ctx := context.Background()
	_, err := cluster.Client.RbacV1().RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "kubestash-operator"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "edit"},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: "kubestash", Name: "kubestash-kubestash-operator"}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("bind the operator: %v", err)
	}
	client, err := cluster.ClientAs(operatorUser, "system:serviceaccounts", "system:serviceaccounts:kubestash", "system:authenticated")
	if err != nil {
		t.Fatal(err)
	}
	// The authoriser sees a new binding (and the aggregated edit role) through informers.
	deadline := time.Now().Add(10 * time.Second)
	for {
		r, err := client.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authorizationv1.SelfSubjectAccessReview{
			Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authorizationv1.ResourceAttributes{
				Namespace: ns, Verb: "create", Resource: "serviceaccounts"}},
		}, metav1.CreateOptions{})
		if err == nil && r.Status.Allowed {
			return client
		}
		if time.Now().After(deadline) {
			t.Fatalf("the operator is still not allowed to create ServiceAccounts in %s (%v)", ns, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitGranted waits until the writer (or the sweeper) has finished every named ServiceAccount in
// ns: no pending marker and a granted marker naming its own UID. Admission only plans, so a
// ServiceAccount is trusted in IAM or RBAC only from then on. It returns the objects as stored.
func waitGranted(t testing.TB, ns string, names []string, timeout time.Duration) map[string]corev1.ServiceAccount {
	t.Helper()
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	out := map[string]corev1.ServiceAccount{}
	flowPoll(t, timeout, fmt.Sprintf("%d ServiceAccounts granted", len(names)), func() (bool, error) {
		list, err := cluster.Client.CoreV1().ServiceAccounts(ns).List(context.Background(), metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		for _, sa := range list.Items {
			if !want[sa.Name] {
				continue
			}
			_, pending := sa.Annotations[annotations.Pending]
			if pending || !strings.HasPrefix(sa.Annotations[annotations.Granted], string(sa.UID)+" ") {
				continue
			}
			out[sa.Name] = sa
		}
		return len(out) == len(want), nil
	})
	return out
}
