package sweeper

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"

	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/kube/kubeadapter"
)

// slowChecker is an STS under faults: its check answers "ready" only after `takes`, unless its
// context ends first. It records the deadline it was given.
type slowChecker struct {
	takes time.Duration

	mu       sync.Mutex
	calls    int
	deadline time.Time
	cutShort bool
}

func (c *slowChecker) Check(ctx context.Context, _ *corev1.ServiceAccount) (bool, string, error) {
	c.mu.Lock()
	c.calls++
	c.deadline, _ = ctx.Deadline()
	c.mu.Unlock()
	select {
	case <-ctx.Done():
		c.mu.Lock()
		c.cutShort = true
		c.mu.Unlock()
		return false, "", ctx.Err()
	case <-time.After(c.takes):
		return true, "sts:AssumeRoleWithWebIdentity succeeded", nil
	}
}

// maxHoldTerm is a leadership term over one held Job and its ServiceAccount, served from
// listers (no informers) and a fake clientset that takes the release patch.
func maxHoldTerm(t *testing.T, job *batchv1.Job, sa *corev1.ServiceAccount, checker Checker, maxHold time.Duration) (*fake.Clientset, *Sweeper, *term, *record.FakeRecorder) {
	t.Helper()
	cs := fake.NewClientset(job.DeepCopy(), sa.DeepCopy())
	recorder := record.NewFakeRecorder(10)
	s := New(kubeadapter.Wrap(cs), Config{MaxHold: maxHold, CheckTimeout: 30 * time.Second}, Deps{AWS: checker, Recorder: recorder}, nil)
	tm := newTerm(s)
	t.Cleanup(func() { tm.jobQ.ShutDown(); tm.finishQ.ShutDown() })
	jobs := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	sas := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	stripped, _ := NewStripper().Job(job.DeepCopy()) // as the informer caches it
	if err := jobs.Add(stripped); err != nil {
		t.Fatal(err)
	}
	if err := sas.Add(sa); err != nil {
		t.Fatal(err)
	}
	tm.jobs, tm.saLister = jobs, corelisters.NewServiceAccountLister(sas)
	return cs, s, tm, recorder
}

// refusingChecker is STS refusing the token, as while a trust policy has not propagated.
type refusingChecker struct{ calls int }

func (c *refusingChecker) Check(context.Context, *corev1.ServiceAccount) (bool, string, error) {
	c.calls++
	return false, "sts:AssumeRoleWithWebIdentity on arn:aws:iam::748392615204:role/kubestash-selfhost-0 refused: AccessDenied", nil
}

// A Job released at max hold without a check (no time left) still tells the operator why its
// credentials did not work: the reason of the last completed check.
func TestMaxHoldReleaseReportsLastFailedCheck(t *testing.T) {
	const maxHold = 10 * time.Minute
	heldSince := time.Date(2026, 5, 6, 12, 0, 0, 0, time.UTC)
	job := newHeldJob(func(j *batchv1.Job) {
		j.Annotations[annotations.HeldSince] = heldSince.Format(time.RFC3339Nano)
		j.Spec.Template.Spec.ServiceAccountName = "app-backup"
		j.ResourceVersion = "7"
	})
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: job.Namespace, Name: "app-backup", UID: "u1",
		Annotations: map[string]string{
			annotations.SeedRole:   "arn:aws:iam::748392615204:role/kubestash-seed",
			annotations.AWSRoleARN: "arn:aws:iam::748392615204:role/kubestash-selfhost-0",
		}}}
	checker := &refusingChecker{}
	_, s, tm, recorder := maxHoldTerm(t, job, sa, checker, maxHold)
	k := key(job.Namespace, job.Name)

	s.now = func() time.Time { return heldSince.Add(time.Minute) }
	tm.processJob(context.Background(), k) // refused: stays held
	s.now = func() time.Time { return heldSince.Add(maxHold + time.Second) }
	tm.processJob(context.Background(), k) // past max hold: released without a check

	if checker.calls != 1 {
		t.Errorf("checker called %d times, want 1 (none after max hold)", checker.calls)
	}
	var last string
	for len(recorder.Events) > 0 {
		last = <-recorder.Events
	}
	for _, want := range []string{"ReleasedWithoutCredentials", "max hold reached", "last completed check: sts:AssumeRoleWithWebIdentity on arn:aws:iam::748392615204:role/kubestash-selfhost-0 refused: AccessDenied"} {
		if !strings.Contains(last, want) {
			t.Errorf("release Event %q does not say %q", last, want)
		}
	}
}

// A held Job is released by its max-hold deadline even when the credential check would take
// longer than the time left (slow STS): the check's context ends at the deadline and the Job is
// released without credentials (ReleaseMaxHold), not as "ready" after the check returned. Past
// the deadline no cloud call is made at all, but what is known without one still counts.
func TestProcessJobReleasesAtMaxHold(t *testing.T) {
	const maxHold = 10 * time.Minute
	for _, tc := range []struct {
		name       string
		left       time.Duration // until the max-hold deadline when the worker picks the Job up
		checkTakes time.Duration
		proven     bool // in the ReadyCache already
		wantReason string
		wantCalls  int
		wantEvent  string
	}{
		{"check slower than the time left", 300 * time.Millisecond, 5 * time.Second, false, ReleaseMaxHold, 1, "without working cloud credentials: aws check did not finish before max hold"},
		{"max hold passed: no cloud call", -time.Minute, 0, false, ReleaseMaxHold, 0, "without working cloud credentials: max hold reached before the credentials"},
		{"max hold passed but proven earlier", -time.Minute, 0, true, ReleaseReady, 0, "credentials proven earlier"},
		{"time to spare: a quick check releases it ready", time.Hour, 0, false, ReleaseReady, 1, "sts:AssumeRoleWithWebIdentity succeeded"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			heldSince := time.Now().Add(tc.left - maxHold)
			job := newHeldJob(func(j *batchv1.Job) {
				j.Annotations[annotations.HeldSince] = heldSince.UTC().Format(time.RFC3339Nano)
				j.Spec.Template.Spec.ServiceAccountName = "app-backup"
				j.ResourceVersion = "7"
			})
			sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: job.Namespace, Name: "app-backup", UID: "u1",
				Annotations: map[string]string{
					annotations.SeedRole:   "arn:aws:iam::748392615204:role/kubestash-seed",
					annotations.AWSRoleARN: "arn:aws:iam::748392615204:role/kubestash-selfhost-0",
				}}}
			checker := &slowChecker{takes: tc.checkTakes}
			cs, s, tm, recorder := maxHoldTerm(t, job, sa, checker, maxHold)
			if tc.proven {
				s.ready.MarkReady(sa)
			}

			tm.processJob(context.Background(), key(job.Namespace, job.Name))
			released := time.Now()

			for _, reason := range []string{ReleaseReady, ReleaseMaxHold} {
				want := 0.0
				if reason == tc.wantReason {
					want = 1
				}
				if got := testutil.ToFloat64(s.m.releases.WithLabelValues(reason)); got != want {
					t.Errorf("releases{reason=%q} = %v, want %v", reason, got, want)
				}
			}
			got, err := cs.BatchV1().Jobs(job.Namespace).Get(context.Background(), job.Name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if got.Spec.Suspend == nil || *got.Spec.Suspend || got.Annotations[annotations.HeldSince] != "" {
				t.Errorf("Job not released: suspend %v, annotations %v", got.Spec.Suspend, got.Annotations)
			}
			var last string // the release Event comes after the "Held" one
			for len(recorder.Events) > 0 {
				last = <-recorder.Events
			}
			if !strings.Contains(last, tc.wantEvent) {
				t.Errorf("release Event %q does not say %q", last, tc.wantEvent)
			}

			checker.mu.Lock()
			defer checker.mu.Unlock()
			if checker.calls != tc.wantCalls {
				t.Fatalf("checker called %d times, want %d", checker.calls, tc.wantCalls)
			}
			deadline := heldSince.Add(maxHold)
			switch {
			case tc.wantCalls == 0:
			case tc.left < 30*time.Second:
				// The check may not run past the max-hold deadline, whatever CheckTimeout says.
				if !checker.deadline.Equal(deadline) || !checker.cutShort {
					t.Errorf("check deadline %s (cut short %v), want the max-hold deadline %s", checker.deadline, checker.cutShort, deadline)
				}
				t.Logf("released %s after the max-hold deadline", released.Sub(deadline).Round(time.Millisecond))
			default:
				if !checker.deadline.Before(deadline) {
					t.Errorf("check deadline %s, want CheckTimeout's, before the max-hold deadline %s", checker.deadline, deadline)
				}
			}
		})
	}
}
