package hold

import (
	"errors"
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"go.klusters.dev/credential-webhook/annotations"
)

const (
	seedARN = "arn:aws:iam::748392615204:role/kubestash-selfhost"
	saName  = "sample-backup-daemon-demo-session-1778072138"
)

func kubestashJob(mut ...func(*batchv1.Job)) *batchv1.Job {
	j := &batchv1.Job{ObjectMeta: metav1.ObjectMeta{Name: "trigger-sample-backup-1778072138", Namespace: "demo", Labels: map[string]string{
		annotations.ManagedByLabel: annotations.ManagedByValue, "app.kubernetes.io/component": "kubestash-backup",
	}}}
	j.Spec.Template.Spec.ServiceAccountName = saName
	for _, m := range mut {
		m(j)
	}
	return j
}

func serviceAccount(ann map[string]string) *corev1.ServiceAccount {
	return &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: saName, Namespace: "demo", Annotations: ann}}
}

func TestDecide(t *testing.T) {
	now := time.Date(2026, 5, 6, 12, 55, 38, 123, time.FixedZone("CEST", 2*3600))
	awsSeed := map[string]string{annotations.SeedRole: seedARN}
	awsDone := map[string]string{annotations.SeedRole: seedARN, annotations.AWSRoleARN: seedARN + "-3"}
	azSeed := map[string]string{annotations.AzureMIName: "kubestash-backup"}
	azDone := map[string]string{annotations.AzureMIName: "kubestash-backup", annotations.AzureClientID: "3c4d5e6f-7a8b-4c9d-8e0f-1a2b3c4d5e6f",
		annotations.AzureTenantID: "00000000-0000-0000-0000-0000000000bb"}
	azClientOnly := map[string]string{annotations.AzureMIName: "kubestash-backup", annotations.AzureClientID: "3c4d5e6f-7a8b-4c9d-8e0f-1a2b3c4d5e6f"}
	with := func(m map[string]string, kv ...string) map[string]string {
		out := map[string]string{}
		for k, v := range m {
			out[k] = v
		}
		for i := 0; i < len(kv); i += 2 {
			out[kv[i]] = kv[i+1]
		}
		return out
	}
	for _, tc := range []struct {
		name       string
		job        *batchv1.Job
		sa         *corev1.ServiceAccount
		knownReady bool
		hold       bool
		reason     string
	}{
		{"aws seed, no role yet", kubestashJob(), serviceAccount(awsSeed), false, true, ReasonIdentityPending},
		{"aws role assigned, unverified", kubestashJob(), serviceAccount(awsDone), false, true, ReasonCredentialsUnverified},
		{"aws role assigned, known ready", kubestashJob(), serviceAccount(awsDone), true, false, ReasonCredentialsReady},
		{"aws role assigned but pending marker", kubestashJob(), serviceAccount(with(awsDone, annotations.Pending, "budget")), true, true, ReasonIdentityPending},
		{"azure, no client id", kubestashJob(), serviceAccount(azSeed), false, true, ReasonIdentityPending},
		{"azure assigned, unverified", kubestashJob(), serviceAccount(azDone), false, true, ReasonCredentialsUnverified},
		{"azure assigned, known ready", kubestashJob(), serviceAccount(azDone), true, false, ReasonCredentialsReady},
		{"azure client ID without tenant ID, even known ready", kubestashJob(), serviceAccount(azClientOnly), true, true, ReasonIdentityPending},
		{"aws done, azure missing", kubestashJob(), serviceAccount(with(awsDone, annotations.AzureMIName, "mi")), true, true, ReasonIdentityPending},
		{"serviceaccount missing", kubestashJob(), nil, false, true, ReasonServiceAccountMissing},
		{"serviceaccount missing though a stale ready entry", kubestashJob(), nil, true, true, ReasonServiceAccountMissing},
		{"no cloud annotation", kubestashJob(), serviceAccount(map[string]string{"x": "y"}), false, false, ReasonNoCloudIdentity},
		{"plain IRSA role without seed is not ours", kubestashJob(), serviceAccount(map[string]string{annotations.AWSRoleARN: seedARN}), false, false, ReasonNoCloudIdentity},
		{"pending marker alone requests nothing", kubestashJob(), serviceAccount(map[string]string{annotations.Pending: "x"}), false, false, ReasonNoCloudIdentity},
		{"not kubestash", kubestashJob(func(j *batchv1.Job) { j.Labels[annotations.ManagedByLabel] = "helm" }), serviceAccount(awsSeed), false, false, ReasonNotKubeStash},
		{"no labels", kubestashJob(func(j *batchv1.Job) { j.Labels = nil }), serviceAccount(awsSeed), false, false, ReasonNotKubeStash},
		{"suspended by kueue", kubestashJob(func(j *batchv1.Job) { j.Spec.Suspend = ptr.To(true) }), serviceAccount(awsSeed), false, false, ReasonSuspendedByOther},
		// Another controller owns spec.suspend, even while the Job is not suspended yet.
		{"in a Kueue queue, not suspended", kubestashJob(func(j *batchv1.Job) { j.Labels[KueueQueueLabel] = "team-a" }), serviceAccount(awsSeed), false, false, ReasonManagedElsewhere},
		{"spec.managedBy another controller", kubestashJob(func(j *batchv1.Job) { j.Spec.ManagedBy = ptr.To("example.com/batch") }), serviceAccount(awsSeed), false, false, ReasonManagedElsewhere},
		{"spec.managedBy the built-in controller", kubestashJob(func(j *batchv1.Job) { j.Spec.ManagedBy = ptr.To("kubernetes.io/job-controller") }), serviceAccount(awsSeed), false, true, ReasonIdentityPending},
		{"suspended with copied hold annotations", kubestashJob(func(j *batchv1.Job) {
			j.Spec.Suspend = ptr.To(true)
			j.Annotations = map[string]string{annotations.HeldSince: "2026-01-01T00:00:00Z", annotations.HoldReason: ReasonIdentityPending}
		}), serviceAccount(awsSeed), false, false, ReasonSuspendedByOther},
		{"suspend false is held", kubestashJob(func(j *batchv1.Job) { j.Spec.Suspend = ptr.To(false) }), serviceAccount(awsSeed), false, true, ReasonIdentityPending},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := Decide(tc.job, tc.sa, tc.knownReady, now)
			if d.Hold != tc.hold || d.Reason != tc.reason {
				t.Fatalf("Decide = hold %v reason %s (%s); want hold %v reason %s", d.Hold, d.Reason, d.Detail, tc.hold, tc.reason)
			}
			if d.Hold {
				if d.HeldSince != "2026-05-06T10:55:38Z" {
					t.Errorf("HeldSince = %q, want UTC seconds 2026-05-06T10:55:38Z", d.HeldSince)
				}
				if d.Detail == "" {
					t.Error("a hold without a detail for the warning")
				}
			} else if d.HeldSince != "" {
				t.Errorf("HeldSince %q on a Job that is not held", d.HeldSince)
			}
		})
	}
}

func TestUnreadableHolds(t *testing.T) {
	d := Unreadable(kubestashJob(), errors.New("connection refused"), time.Unix(0, 0))
	if !d.Hold || d.Reason != ReasonServiceAccountUnreadable || d.HeldSince != "1970-01-01T00:00:00Z" {
		t.Errorf("Unreadable = %+v", d)
	}
}
