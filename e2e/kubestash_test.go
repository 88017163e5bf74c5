package e2e

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/sweeper"
)

// KubeStash (v2026.4.27 and later) resumes a suspended backup Job by itself as soon as its
// ServiceAccount carries eks.amazonaws.com/role-arn. Admission writes that ARN when it plans,
// before the trust policy has reached STS, so the two controllers must agree on who releases:
// the one who holds. A stand-in does what the operator does (resume every suspended backup Job
// of a ServiceAccount that has a role ARN, again and again); the Jobs webhook turns each resume
// back with a warning, the Job's Pod does not start, and the sweeper releases the Job once the
// credentials work (reason ready, after the propagation delay).
func TestFlowOperatorResumeWaitsForTheHolder(t *testing.T) {
	const propagation = 8 * time.Second
	w := flowSetup(t, "kubestash-resume")
	wh := w.replica(t, "a")
	flowWaitLeader(t, wh.Name)
	cluster.IAM.SetPropagationDelay(propagation)
	t.Cleanup(func() { cluster.IAM.SetPropagationDelay(0) })

	createStart := time.Now()
	sa := w.serviceAccount(t)
	if sa.Annotations[annotations.AWSRoleARN] == "" {
		t.Fatalf("ServiceAccount admitted without a role ARN: %v", sa.Annotations)
	}
	job, _ := w.job(t, flowJob(w.ns, sa.Name, sa.Name))
	if !flowHeld(job) {
		t.Fatalf("Job not held at creation: suspend %v annotations %v", job.Spec.Suspend, job.Annotations)
	}

	// The stand-in operator: resume the Job whenever it is suspended and its ServiceAccount has
	// a role ARN, as KubeStash does, until the test ends.
	var resumes, turnedBack atomic.Int32
	var warnings atomic.Value
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			j, err := w.op.BatchV1().Jobs(w.ns).Get(ctx, job.Name, metav1.GetOptions{})
			if err == nil && j.Spec.Suspend != nil && *j.Spec.Suspend {
				w.warn.Take()
				out, err := w.op.BatchV1().Jobs(w.ns).Patch(ctx, job.Name, types.MergePatchType, []byte(`{"spec":{"suspend":false}}`), metav1.PatchOptions{})
				if err == nil {
					resumes.Add(1)
					if out.Spec.Suspend != nil && *out.Spec.Suspend {
						turnedBack.Add(1)
						warnings.Store(strings.Join(w.warn.Take(), "; "))
					}
				}
			}
			select {
			case <-ctx.Done():
			case <-time.After(300 * time.Millisecond):
			}
		}
	}()
	t.Cleanup(func() { stop(); <-done })

	var released *batchv1.Job
	var reason string
	flowPoll(t, 90*time.Second, "the Job released by the sweeper", func() (bool, error) {
		at, r, ok := flowReleaseTime(wh, w.ns, job.Name)
		if !ok {
			// Until then the Job must stay suspended with our hold, whatever the operator does.
			j := flowGetJob(t, w.ns, job.Name)
			if !flowHeld(j) && !flowReleased(j) {
				return false, fmt.Errorf("Job neither held nor released by us: suspend %v annotations %v", ptr.Deref(j.Spec.Suspend, false), j.Annotations)
			}
			return false, nil
		}
		reason = r
		if at.Before(createStart.Add(propagation)) {
			return false, fmt.Errorf("released at %s, before the trust policy could have propagated", at.Format(time.StampMilli))
		}
		released = flowGetJob(t, w.ns, job.Name)
		return flowReleased(released), nil
	})
	stop()
	<-done
	if reason != sweeper.ReleaseReady {
		t.Errorf("released with reason %q, want %q", reason, sweeper.ReleaseReady)
	}
	if turnedBack.Load() == 0 {
		t.Fatalf("the stand-in operator resumed %d times, none turned back: the test did not exercise the race", resumes.Load())
	}
	if w, _ := warnings.Load().(string); !strings.Contains(w, "holds this Job") {
		t.Errorf("the operator's resume got no warning saying who releases: %q", w)
	}
	flowWaitPod(t, w.ns, job.Name)
	t.Logf("figures: propagation %s; the stand-in operator resumed %d times, %d turned back by admission; released with reason %s",
		propagation, resumes.Load(), turnedBack.Load(), reason)
}
