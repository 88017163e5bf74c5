package hold

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	jsonpatchapply "gopkg.in/evanphx/json-patch.v4"
	batchv1 "k8s.io/api/batch/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"go.klusters.dev/credential-webhook/annotations"
)

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

// Only a Job we suspended ourselves and whose spec.suspend no other controller owns is resumed;
// every other release only removes our annotations. The release never writes anything but
// spec.suspend and our two annotations (the self policy refuses anything else).
func TestResumedElsewhere(t *testing.T) {
	for _, tc := range []struct {
		name string
		job  *batchv1.Job
		want bool
	}{
		{"held and suspended", newHeldJob(), false},
		{"suspend false", newHeldJob(func(j *batchv1.Job) { j.Spec.Suspend = ptr.To(false) }), true},
		{"suspend unset", newHeldJob(func(j *batchv1.Job) { j.Spec.Suspend = nil }), true},
		{"in a Kueue queue", newHeldJob(func(j *batchv1.Job) { j.Labels[KueueQueueLabel] = "q" }), true},
		{"spec.managedBy another controller", newHeldJob(func(j *batchv1.Job) { j.Spec.ManagedBy = ptr.To("example.com/batch") }), true},
		{"spec.managedBy the built-in controller", newHeldJob(func(j *batchv1.Job) { j.Spec.ManagedBy = ptr.To("kubernetes.io/job-controller") }), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := ResumedElsewhere(tc.job); got != tc.want {
				t.Errorf("ResumedElsewhere = %v, want %v", got, tc.want)
			}
			patch, err := ReleasePatch(tc.job)
			if err != nil {
				t.Fatal(err)
			}
			var ops []struct{ Op, Path string }
			if err := json.Unmarshal(patch, &ops); err != nil {
				t.Fatal(err)
			}
			resumes := false
			for _, op := range ops {
				switch {
				case op.Op == "replace" && op.Path == "/spec/suspend":
					resumes = true
				case op.Path == "/metadata/annotations/credential-webhook.klusters.dev~1held-since",
					op.Path == "/metadata/annotations/credential-webhook.klusters.dev~1hold-reason":
				default:
					t.Errorf("release patch writes %s %s", op.Op, op.Path)
				}
			}
			if resumes == tc.want {
				t.Errorf("release patch resumes = %v with ResumedElsewhere = %v: %s", resumes, tc.want, patch)
			}
		})
	}
}

// Only the holder releases: a resume of a Job this server holds, by anyone else, is turned back.
func TestKeepHeld(t *testing.T) {
	resumed := func(j *batchv1.Job) { j.Spec.Suspend = ptr.To(false) }
	for _, tc := range []struct {
		name     string
		old, cur *batchv1.Job
		want     bool
	}{
		{"held Job resumed", newHeldJob(), newHeldJob(resumed), true},
		{"held Job resumed by dropping suspend", newHeldJob(), newHeldJob(func(j *batchv1.Job) { j.Spec.Suspend = nil }), true},
		{"held Job resumed and our annotations removed in the same update", newHeldJob(),
			newHeldJob(resumed, func(j *batchv1.Job) { j.Annotations = nil }), true},
		{"held Job, other change, still suspended", newHeldJob(), newHeldJob(func(j *batchv1.Job) { j.Labels["x"] = "y" }), false},
		{"not ours: no held-since", newHeldJob(func(j *batchv1.Job) { delete(j.Annotations, annotations.HeldSince) }), newHeldJob(resumed), false},
		{"not KubeStash's", newHeldJob(func(j *batchv1.Job) { j.Labels = nil }), newHeldJob(resumed), false},
		{"held but already running", newHeldJob(resumed), newHeldJob(resumed), false},
		{"in a Kueue queue: Kueue resumes it", newHeldJob(func(j *batchv1.Job) { j.Labels[KueueQueueLabel] = "q" }), newHeldJob(resumed), false},
		{"spec.managedBy another controller", newHeldJob(func(j *batchv1.Job) { j.Spec.ManagedBy = ptr.To("example.com/batch") }), newHeldJob(resumed), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := KeepHeld(tc.old, tc.cur); got != tc.want {
				t.Errorf("KeepHeld = %v, want %v", got, tc.want)
			}
		})
	}
	if w := KeepHeldWarning(newHeldJob()); !strings.Contains(w, "2026-05-06T12:55:38Z") || !strings.Contains(w, "spec.suspend stays true") {
		t.Errorf("warning %q", w)
	}
}
