package hold

import (
	"encoding/json"
	"fmt"
	"time"

	"gomodules.xyz/jsonpatch/v2"
	batchv1 "k8s.io/api/batch/v1"

	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/patches"
)

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

// ResumedElsewhere reports whether releasing held job only removes our annotations: someone
// else already resumed it, or another controller (ManagedElsewhere: Kueue, spec.managedBy) owns
// its spec.suspend, which we then never touch. Such a Job needs no credential check.
func ResumedElsewhere(job *batchv1.Job) bool {
	return job.Spec.Suspend == nil || !*job.Spec.Suspend || ManagedElsewhere(job)
}

// KeepHeld reports whether an UPDATE from someone other than this server resumes a Job this
// server holds: the old Job is held (IsHeld) and suspended, not owned by another controller, and
// the new one is not suspended. The one who holds releases. KubeStash (v2026.4.27 and later)
// resumes a suspended backup Job by itself once its ServiceAccount carries
// eks.amazonaws.com/role-arn or the Azure IDs, and admission writes those when it plans, before
// IAM's trust policy has reached STS; resuming then would start the backup with credentials that
// do not work yet. So admission keeps spec.suspend true (with a warning), and the sweeper
// releases once a real token is accepted, or at --max-hold. The old object decides: whatever the
// update does to our annotations, the guard reverts it.
func KeepHeld(old, cur *batchv1.Job) bool {
	return IsHeld(old) && old.Spec.Suspend != nil && *old.Spec.Suspend && !ManagedElsewhere(old) &&
		(cur.Spec.Suspend == nil || !*cur.Spec.Suspend)
}

// KeepHeldWarning is the admission warning when KeepHeld turns a resume back.
func KeepHeldWarning(job *batchv1.Job) string {
	return fmt.Sprintf("credential-webhook holds this Job (since %s) until its credentials work and resumes it itself, at the latest after --max-hold; spec.suspend stays true",
		job.Annotations[annotations.HeldSince])
}

// ReleasePatch is the JSON patch that releases job: a test that our held-since annotation still
// has the value we read (so a concurrent change, or a second release from a stale cache, fails
// instead of clobbering), spec.suspend false unless ResumedElsewhere, and the removal of our
// annotations. Nothing else: the server's ValidatingAdmissionPolicy refuses any other change to
// a Job from the server's identity.
func ReleasePatch(job *batchv1.Job) ([]byte, error) {
	ann := job.Annotations
	heldSince, ok := ann[annotations.HeldSince]
	if !ok {
		return nil, fmt.Errorf("job %s/%s carries no %s annotation", job.Namespace, job.Name, annotations.HeldSince)
	}
	ops := []jsonpatch.Operation{{Operation: "test", Path: patches.Pointer("metadata", "annotations", annotations.HeldSince), Value: heldSince}}
	if !ResumedElsewhere(job) {
		ops = append(ops, jsonpatch.Operation{Operation: "replace", Path: "/spec/suspend", Value: false})
	}
	b := patches.NewBuilder()
	b.RemoveMapEntry("/metadata/annotations", ann, annotations.HoldReason)
	b.RemoveMapEntry("/metadata/annotations", ann, annotations.HeldSince)
	return json.Marshal(append(ops, b.Ops()...))
}
