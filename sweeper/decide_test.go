package sweeper

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	jsonpatchapply "gopkg.in/evanphx/json-patch.v4"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"go.klusters.dev/credential-webhook/annotations"
)

func TestBackoff(t *testing.T) {
	for _, tc := range []struct {
		attempt int
		want    time.Duration
	}{
		{0, time.Second}, {1, 2 * time.Second}, {2, 4 * time.Second}, {3, 8 * time.Second},
		{4, 16 * time.Second}, {5, 30 * time.Second}, {6, 30 * time.Second}, {1000, 30 * time.Second},
	} {
		if got := Backoff(tc.attempt, time.Second, 30*time.Second); got != tc.want {
			t.Errorf("Backoff(%d) = %s, want %s", tc.attempt, got, tc.want)
		}
	}
}

func TestPlan(t *testing.T) {
	cfg := Config{BackoffInitial: time.Second, BackoffMax: 30 * time.Second}.WithDefaults() // max hold 10m, backoff 1s..30s
	held := time.Date(2026, 5, 6, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name    string
		age     time.Duration
		ready   bool
		attempt int
		want    Step
	}{
		{"ready at once", 0, true, 0, Step{Action: Release}},
		{"ready after max hold is a normal release", 20 * time.Minute, true, 9, Step{Action: Release}},
		{"first retry", 2 * time.Second, false, 0, Step{Action: Wait, After: time.Second}},
		{"backoff grows", 10 * time.Second, false, 3, Step{Action: Wait, After: 8 * time.Second}},
		{"backoff capped", time.Minute, false, 12, Step{Action: Wait, After: 30 * time.Second}},
		{"next check lands on the deadline", 10*time.Minute - 5*time.Second, false, 12, Step{Action: Wait, After: 5 * time.Second}},
		{"max hold reached", 10 * time.Minute, false, 30, Step{Action: ReleaseWithoutCredentials}},
		{"long past max hold (leader was down)", 3 * time.Hour, false, 0, Step{Action: ReleaseWithoutCredentials}},
		{"held-since in the future (clock skew) waits", -time.Minute, false, 0, Step{Action: Wait, After: time.Second}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Plan(held, tc.ready, tc.attempt, held.Add(tc.age), cfg); got != tc.want {
				t.Errorf("Plan = %v after %s, want %v after %s", got.Action, got.After, tc.want.Action, tc.want.After)
			}
		})
	}
}

func TestGone(t *testing.T) {
	now := time.Date(2026, 5, 6, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		first time.Time
		want  bool
	}{
		{time.Time{}, false},
		{now, false},
		{now.Add(-59 * time.Second), false},
		{now.Add(-time.Minute), true},
		{now.Add(-time.Hour), true},
	} {
		if got := Gone(tc.first, now, time.Minute); got != tc.want {
			t.Errorf("Gone(first %v) = %v, want %v", tc.first, got, tc.want)
		}
	}
}

func newHeldJob(mut ...func(*batchv1.Job)) *batchv1.Job {
	j := &batchv1.Job{
		TypeMeta: metav1.TypeMeta{APIVersion: "batch/v1", Kind: "Job"},
		ObjectMeta: metav1.ObjectMeta{Name: "trigger-sample-backup-1778072138", Namespace: "demo",
			CreationTimestamp: metav1.NewTime(time.Date(2026, 5, 6, 11, 0, 0, 0, time.UTC)),
			Labels:            map[string]string{annotations.ManagedByLabel: annotations.ManagedByValue},
			Annotations: map[string]string{
				annotations.HeldSince: "2026-05-06T12:55:38Z", annotations.HoldReason: "IdentityPending",
				"kubestash.com/backup-session": "demo-session",
			}},
		Spec: batchv1.JobSpec{Suspend: ptr.To(true)},
	}
	for _, m := range mut {
		m(j)
	}
	return j
}

func TestIsHeldAndHeldSince(t *testing.T) {
	for _, tc := range []struct {
		name  string
		job   *batchv1.Job
		held  bool
		since time.Time
	}{
		{"ours", newHeldJob(), true, time.Date(2026, 5, 6, 12, 55, 38, 0, time.UTC)},
		{"kueue-suspended, no annotation", newHeldJob(func(j *batchv1.Job) { j.Annotations = nil }), false, time.Time{}},
		{"annotation but not kubestash", newHeldJob(func(j *batchv1.Job) { j.Labels = nil }), false, time.Time{}},
		{"empty annotation", newHeldJob(func(j *batchv1.Job) { j.Annotations[annotations.HeldSince] = "" }), false, time.Time{}},
		{"unparseable held-since falls back to creation", newHeldJob(func(j *batchv1.Job) { j.Annotations[annotations.HeldSince] = "yesterday" }),
			true, time.Date(2026, 5, 6, 11, 0, 0, 0, time.UTC)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := IsHeld(tc.job); got != tc.held {
				t.Errorf("IsHeld = %v, want %v", got, tc.held)
			}
			if tc.held {
				if got := HeldSince(tc.job); !got.Equal(tc.since) {
					t.Errorf("HeldSince = %v, want %v", got, tc.since)
				}
			}
		})
	}
}

func applyJSON(t *testing.T, obj any, patch []byte) (map[string]any, error) {
	t.Helper()
	raw, err := json.Marshal(obj)
	if err != nil {
		t.Fatal(err)
	}
	p, err := jsonpatchapply.DecodePatch(patch)
	if err != nil {
		t.Fatalf("decode patch: %v", err)
	}
	out, err := p.Apply(raw)
	if err != nil {
		return nil, err
	}
	var m map[string]any
	if err := json.Unmarshal(out, &m); err != nil {
		t.Fatal(err)
	}
	return m, nil
}

func TestReleasePatch(t *testing.T) {
	for _, tc := range []struct {
		name        string
		job         *batchv1.Job
		wantSuspend any // value of spec.suspend after the patch
	}{
		{"held and suspended", newHeldJob(), false},
		{"resumed by someone else: only annotations go", newHeldJob(func(j *batchv1.Job) { j.Spec.Suspend = ptr.To(false) }), false},
		{"no hold reason", newHeldJob(func(j *batchv1.Job) { delete(j.Annotations, annotations.HoldReason) }), false},
		// Another controller owns spec.suspend: it stays suspended, only our annotations go.
		{"spec.managedBy another controller", newHeldJob(func(j *batchv1.Job) { j.Spec.ManagedBy = ptr.To("kueue.x-k8s.io/multikueue") }), true},
		{"in a Kueue queue", newHeldJob(func(j *batchv1.Job) { j.Labels["kueue.x-k8s.io/queue-name"] = "team-a" }), true},
		{"managedBy the built-in controller", newHeldJob(func(j *batchv1.Job) { j.Spec.ManagedBy = ptr.To("kubernetes.io/job-controller") }), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			patch, err := ReleasePatch(tc.job)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(string(patch), `[{"op":"test","path":"/metadata/annotations/credential-webhook.klusters.dev~1held-since"`) {
				t.Errorf("patch does not start by testing held-since: %s", patch)
			}
			m, err := applyJSON(t, tc.job, patch)
			if err != nil {
				t.Fatalf("apply: %v", err)
			}
			if got := m["spec"].(map[string]any)["suspend"]; got != tc.wantSuspend {
				t.Errorf("spec.suspend = %v, want %v", got, tc.wantSuspend)
			}
			ann := m["metadata"].(map[string]any)["annotations"].(map[string]any)
			if _, ok := ann[annotations.HeldSince]; ok {
				t.Error("held-since left")
			}
			if _, ok := ann[annotations.HoldReason]; ok {
				t.Error("hold-reason left")
			}
			if ann["kubestash.com/backup-session"] != "demo-session" {
				t.Error("someone else's annotation removed")
			}
		})
	}

	// The patch was built from a stale copy: someone changed held-since since. It must fail.
	t.Run("concurrent change fails the test op", func(t *testing.T) {
		patch, err := ReleasePatch(newHeldJob())
		if err != nil {
			t.Fatal(err)
		}
		now := newHeldJob(func(j *batchv1.Job) { j.Annotations[annotations.HeldSince] = "2026-05-06T13:00:00Z" })
		if _, err := applyJSON(t, now, patch); err == nil {
			t.Error("patch applied over a changed held-since")
		}
		if _, err := applyJSON(t, newHeldJob(func(j *batchv1.Job) { delete(j.Annotations, annotations.HeldSince) }), patch); err == nil {
			t.Error("patch applied to a Job already released")
		}
	})
	if _, err := ReleasePatch(newHeldJob(func(j *batchv1.Job) { j.Annotations = nil })); err == nil {
		t.Error("ReleasePatch of a Job that is not held did not fail")
	}
}

func TestReadyCache(t *testing.T) {
	now := time.Date(2026, 5, 6, 12, 0, 0, 0, time.UTC)
	c := NewReadyCache(10 * time.Minute)
	c.now = func() time.Time { return now }
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "app-restore-restore", UID: "u1",
		Annotations: map[string]string{annotations.AWSRoleARN: "arn:aws:iam::748392615204:role/kubestash-selfhost-0"}}}
	if c.Ready("demo", "app-restore-restore") {
		t.Fatal("ready before anything was proven")
	}
	c.MarkReady(sa)
	if !c.Ready("demo", "app-restore-restore") || c.Ready("other", "app-restore-restore") {
		t.Fatal("MarkReady did not mark exactly this ServiceAccount")
	}
	c.Observe(sa.DeepCopy()) // unchanged: kept
	if !c.Ready("demo", "app-restore-restore") {
		t.Error("an unchanged ServiceAccount lost its entry")
	}
	for name, mut := range map[string]func(*corev1.ServiceAccount){
		"role changed":     func(s *corev1.ServiceAccount) { s.Annotations[annotations.AWSRoleARN] += "x" },
		"recreated":        func(s *corev1.ServiceAccount) { s.UID = "u2" },
		"marked pending":   func(s *corev1.ServiceAccount) { s.Annotations[annotations.Pending] = "x" },
		"azure id changed": func(s *corev1.ServiceAccount) { s.Annotations[annotations.AzureClientID] = "x" },
	} {
		c.MarkReady(sa)
		changed := sa.DeepCopy()
		mut(changed)
		c.Observe(changed)
		if c.Ready("demo", "app-restore-restore") {
			t.Errorf("%s: still ready", name)
		}
	}
	c.MarkReady(sa)
	c.Forget("demo", "app-restore-restore")
	if c.Ready("demo", "app-restore-restore") {
		t.Error("ready after Forget")
	}
	c.MarkReady(sa)
	now = now.Add(10 * time.Minute)
	if c.Ready("demo", "app-restore-restore") {
		t.Error("ready after its TTL")
	}
	var nilCache *ReadyCache
	if nilCache.Ready("demo", "x") {
		t.Error("nil cache says ready")
	}
}

type bindingFunc func(ctx context.Context, clientID, ns, name string) (bool, error)

func (f bindingFunc) BindingLists(ctx context.Context, clientID, ns, name string) (bool, error) {
	return f(ctx, clientID, ns, name)
}

func TestAzureChecker(t *testing.T) {
	const clientID = "3c4d5e6f-7a8b-4c9d-8e0f-1a2b3c4d5e6f"
	bound := bindingFunc(func(_ context.Context, id, ns, name string) (bool, error) {
		return id == clientID && ns == "demo" && name == "app-restore-restore", nil
	})
	broken := bindingFunc(func(context.Context, string, string, string) (bool, error) { return false, errors.New("forbidden") })
	sa := func(name string, ann map[string]string) *corev1.ServiceAccount {
		return &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: name, Annotations: ann}}
	}
	full := map[string]string{annotations.AzureClientID: clientID, annotations.AzureTenantID: "9f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a"}
	for _, tc := range []struct {
		name    string
		c       AzureChecker
		sa      *corev1.ServiceAccount
		ready   bool
		reason  string
		wantErr bool
	}{
		{"bound", AzureChecker{bound}, sa("app-restore-restore", full), true, "lists the ServiceAccount", false},
		{"not bound yet", AzureChecker{bound}, sa("other", full), false, "does not list ServiceAccount demo/other", false},
		{"no client id", AzureChecker{bound}, sa("app-restore-restore", map[string]string{annotations.AzureTenantID: "t"}), false, "client-id", false},
		{"no tenant id", AzureChecker{bound}, sa("app-restore-restore", map[string]string{annotations.AzureClientID: clientID}), false, "tenant-id", false},
		{"binding unreadable", AzureChecker{broken}, sa("app-restore-restore", full), false, "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ready, reason, err := tc.c.Check(context.Background(), tc.sa)
			if (err != nil) != tc.wantErr || ready != tc.ready || !strings.Contains(reason, tc.reason) {
				t.Errorf("Check = %v %q %v; want %v, %q, error %v", ready, reason, err, tc.ready, tc.reason, tc.wantErr)
			}
		})
	}
}
