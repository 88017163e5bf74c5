package sweeper

import (
	"encoding/json"
	"testing"
	"time"

	jsonpatchapply "gopkg.in/evanphx/json-patch.v4"
	batchv1 "k8s.io/api/batch/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"go.klusters.dev/credential-webhook/annotations"
)

// newHeldJob is a KubeStash Job as admission holds it (hold's tests have the same helper).
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

// applyJSON applies patch to obj's JSON and returns the result as a map.
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
