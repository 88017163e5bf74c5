package sweeper

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"gomodules.xyz/jsonpatch/v2"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"

	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/jobs"
	"go.klusters.dev/credential-webhook/markers"
	"go.klusters.dev/credential-webhook/patches"
)

// The pure decisions of the sweeper: which Jobs are ours to release, when to look again, what
// to do with a held Job, and the patches that release a Job or finish a ServiceAccount.

// IsHeld reports whether job is one the sweeper may release: a KubeStash Job carrying our
// held-since annotation. Nothing else is ever released, whatever it looks like.
func IsHeld(job *batchv1.Job) bool {
	return job.Labels[annotations.ManagedByLabel] == annotations.ManagedByValue &&
		job.Annotations[annotations.HeldSince] != ""
}

// HeldSince is when admission held job: our annotation, else (unparseable, which only a bug
// could produce since nobody else may write it) the Job's creation time.
func HeldSince(job *batchv1.Job) time.Time {
	if t, err := time.Parse(time.RFC3339, job.Annotations[annotations.HeldSince]); err == nil {
		return t
	}
	return job.CreationTimestamp.Time
}

// Backoff is the delay before the attempt-th retry (attempt 0 is the first): initial doubled per
// attempt, at most max.
func Backoff(attempt int, initial, max time.Duration) time.Duration {
	d := initial
	for i := 0; i < attempt && d < max; i++ {
		d *= 2
	}
	return min(d, max)
}

// Action is what to do with a held Job after a readiness check.
type Action int

const (
	// Wait: check again after Step.After.
	Wait Action = iota
	// Release: the credentials work; resume the Job.
	Release
	// ReleaseWithoutCredentials: MaxHold has passed; resume it anyway, with a Warning Event, so
	// the backup fails visibly instead of hanging.
	ReleaseWithoutCredentials
)

func (a Action) String() string {
	switch a {
	case Release:
		return "Release"
	case ReleaseWithoutCredentials:
		return "ReleaseWithoutCredentials"
	}
	return "Wait"
}

// Step is the outcome of Plan.
type Step struct {
	Action Action
	// After is the delay before the next check (Wait only).
	After time.Duration
}

// Plan decides what to do with a Job held since heldSince, after its attempt-th failed check
// when it is not ready. The next check never lands after the MaxHold deadline, so a Job is
// released on time even while its backoff is long.
func Plan(heldSince time.Time, ready bool, attempt int, now time.Time, cfg Config) Step {
	if ready {
		return Step{Action: Release}
	}
	deadline := heldSince.Add(cfg.MaxHold)
	left := deadline.Sub(now)
	if left <= 0 {
		return Step{Action: ReleaseWithoutCredentials}
	}
	return Step{Action: Wait, After: min(Backoff(attempt, cfg.BackoffInitial, cfg.BackoffMax), left)}
}

// Causes of a readiness check's context ending, to tell a check cut short by the Job's max hold
// from a slow cloud.
var (
	ErrMaxHoldReached = errors.New("max hold reached")
	ErrCheckTimeout   = errors.New("credential check timed out")
)

// CheckDeadline bounds the readiness check of a Job held since heldSince: CheckTimeout from now,
// but never past the max-hold deadline, so a slow cloud (STS under faults) cannot keep a Job
// held beyond --max-hold. cause says which bound applies. ok is false once the max-hold deadline
// has passed: no cloud call is worth making then, the Job is released without credentials.
func CheckDeadline(heldSince, now time.Time, cfg Config) (deadline time.Time, cause error, ok bool) {
	maxHold := heldSince.Add(cfg.MaxHold)
	if !now.Before(maxHold) {
		return maxHold, ErrMaxHoldReached, false
	}
	if timeout := now.Add(cfg.CheckTimeout); timeout.Before(maxHold) {
		return timeout, ErrCheckTimeout, true
	}
	return maxHold, ErrMaxHoldReached, true
}

// Gone reports whether a ServiceAccount first seen missing at firstMissing (zero: not missing)
// has been missing for the grace period, so its cloud subjects may be collected.
func Gone(firstMissing, now time.Time, grace time.Duration) bool {
	return !firstMissing.IsZero() && now.Sub(firstMissing) >= grace
}

// ReleasePatch is the JSON patch that releases job: a test that our held-since annotation still
// has the value we read (so a concurrent change, or a second release from a stale cache, fails
// instead of clobbering), spec.suspend false when the Job is suspended, and the removal of our
// annotations. A Job someone else already resumed, or whose spec.suspend another controller owns
// (jobs.ManagedElsewhere: Kueue, spec.managedBy), only loses our annotations.
func ReleasePatch(job *batchv1.Job) ([]byte, error) {
	ann := job.Annotations
	heldSince, ok := ann[annotations.HeldSince]
	if !ok {
		return nil, fmt.Errorf("job %s/%s carries no %s annotation", job.Namespace, job.Name, annotations.HeldSince)
	}
	ops := []jsonpatch.Operation{{Operation: "test", Path: patches.Pointer("metadata", "annotations", annotations.HeldSince), Value: heldSince}}
	if job.Spec.Suspend != nil && *job.Spec.Suspend && !jobs.ManagedElsewhere(job) {
		ops = append(ops, jsonpatch.Operation{Operation: "replace", Path: "/spec/suspend", Value: false})
	}
	b := patches.NewBuilder()
	b.RemoveMapEntry("/metadata/annotations", ann, annotations.HoldReason)
	b.RemoveMapEntry("/metadata/annotations", ann, annotations.HeldSince)
	return json.Marshal(append(ops, b.Ops()...))
}

// Finished is what finishing a pending ServiceAccount came to, for FinishPatch.
type Finished struct {
	// Set are the output annotations the clouds returned for the granted claims.
	Set map[string]string
	// Granted are the claims written to the cloud now.
	Granted markers.Claims
	// Dropped are the clouds whose claim was dropped (the ServiceAccount no longer makes it, or
	// it is no longer allowed); Clear their output annotations.
	Dropped []string
	// Clear lists output annotations to remove.
	Clear []string
}

// FinishPatch records on sa what finishing came to: it sets the output annotations, records the
// granted claims with sa's UID (keeping earlier grants to the same UID on other clouds), clears
// the outputs of dropped claims and removes our pending marker. It first tests that the pending
// marker still has the value read and that the object is the one read (its UID): if admission
// changed the claims meanwhile, or the name was re-created, the patch fails and the
// ServiceAccount is looked at again.
func FinishPatch(sa *corev1.ServiceAccount, f Finished) ([]byte, error) {
	ann := sa.Annotations
	pending, ok := ann[annotations.Pending]
	if !ok {
		return nil, fmt.Errorf("ServiceAccount %s/%s carries no %s annotation", sa.Namespace, sa.Name, annotations.Pending)
	}
	if sa.UID == "" {
		return nil, fmt.Errorf("ServiceAccount %s/%s has no UID", sa.Namespace, sa.Name)
	}
	ops := []jsonpatch.Operation{
		{Operation: "test", Path: "/metadata/uid", Value: string(sa.UID)},
		{Operation: "test", Path: patches.Pointer("metadata", "annotations", annotations.Pending), Value: pending},
	}
	var granted markers.Claims
	if uid, g, err := markers.ParseGranted(ann[annotations.Granted]); err == nil && uid == sa.UID {
		granted = g
	}
	for _, cloud := range f.Dropped {
		granted = granted.Without(cloud)
	}
	for _, c := range f.Granted {
		granted = granted.With(c)
	}
	b := patches.NewBuilder()
	for _, k := range slices.Sorted(maps.Keys(f.Set)) {
		if !strings.HasPrefix(k, annotations.Prefix) {
			b.SetMapEntry("/metadata/annotations", ann, k, f.Set[k])
		}
	}
	for _, k := range f.Clear {
		if _, set := f.Set[k]; !set {
			b.RemoveMapEntry("/metadata/annotations", ann, k)
		}
	}
	if len(granted) > 0 {
		b.SetMapEntry("/metadata/annotations", ann, annotations.Granted, markers.FormatGranted(sa.UID, granted))
	} else {
		b.RemoveMapEntry("/metadata/annotations", ann, annotations.Granted)
	}
	b.RemoveMapEntry("/metadata/annotations", ann, annotations.Pending)
	return json.Marshal(append(ops, b.Ops()...))
}

// Drop is a pending claim that will not be written, and why (for a Warning Event).
type Drop struct {
	Claim  markers.Claim
	Reason string
}

// Triage sorts the claims pending on sa: work are to be written to their cloud now; drops will
// not be, because the ServiceAccount no longer makes exactly that claim (its seed or identity
// changed or went away since admission accepted it), its cloud is not enabled, or its
// namespace is no longer allowed. A pending marker this server cannot read is an error: the
// caller drops it whole.
func Triage(sa *corev1.ServiceAccount, clouds map[string]Cloud, namespaceAllowed bool) (work []markers.Claim, drops []Drop, err error) {
	claims, err := markers.ParsePending(sa.Annotations[annotations.Pending])
	if err != nil {
		return nil, nil, err
	}
	for _, c := range claims {
		cloud, ok := clouds[c.Cloud]
		switch {
		case !ok:
			drops = append(drops, Drop{c, c.Cloud + " is not enabled on this server"})
		case !namespaceAllowed:
			drops = append(drops, Drop{c, fmt.Sprintf("namespace %q is no longer allowed (--allowed-namespaces)", sa.Namespace)})
		default:
			if now, ok := cloud.Claim(sa.Annotations); !ok || now != c {
				drops = append(drops, Drop{c, "the ServiceAccount no longer asks for the " + c.Cloud + " identity admission accepted"})
				continue
			}
			work = append(work, c)
		}
	}
	return work, drops, nil
}
