package hold

import (
	"fmt"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"

	"go.klusters.dev/credential-webhook/annotations"
)

// Reasons. A held Job carries the reason in annotations.HoldReason; the others explain (in logs
// and tests) why a Job was left alone. They are CamelCase like Kubernetes Event reasons.
const (
	// ReasonServiceAccountMissing: the Job's ServiceAccount does not exist (yet): KubeStash may
	// create the Job a moment before the informer sees the ServiceAccount, or the other way
	// round, so the Job waits rather than starting without credentials.
	ReasonServiceAccountMissing = "ServiceAccountMissing"
	// ReasonServiceAccountUnreadable: the ServiceAccount could not be read (apiserver trouble).
	// Holding is the safe side: the sweeper releases at once when it turns out to need nothing.
	ReasonServiceAccountUnreadable = "ServiceAccountUnreadable"
	// ReasonIdentityPending: a requested identity is not assigned yet, or admission marked the
	// ServiceAccount pending.
	ReasonIdentityPending = "IdentityPending"
	// ReasonCredentialsUnverified: the identity is assigned, but a fresh trust policy or binding
	// takes a while to propagate, and nobody has proven yet that the credentials work.
	ReasonCredentialsUnverified = "CredentialsUnverified"

	// Reasons for leaving a Job alone.
	ReasonNotKubeStash     = "NotKubeStash"
	ReasonSuspendedByOther = "SuspendedByOther"
	ReasonNoCloudIdentity  = "NoCloudIdentity"
	ReasonCredentialsReady = "CredentialsReady"
	// ReasonManagedElsewhere: another controller decides when the Job runs (spec.managedBy, or
	// a Kueue queue): suspending or resuming it is that controller's job, never ours.
	ReasonManagedElsewhere = "ManagedElsewhere"
)

// KueueQueueLabel is the label that puts a Job in a Kueue queue; Kueue then owns spec.suspend.
const KueueQueueLabel = "kueue.x-k8s.io/queue-name"

// defaultManager is the spec.managedBy value of Jobs the built-in Job controller runs.
const defaultManager = "kubernetes.io/job-controller"

// ManagedElsewhere reports whether another controller owns job's spec.suspend: spec.managedBy
// names anything but the built-in Job controller, or the Job is in a Kueue queue.
func ManagedElsewhere(job *batchv1.Job) bool {
	if m := job.Spec.ManagedBy; m != nil && *m != "" && *m != defaultManager {
		return true
	}
	return job.Labels[KueueQueueLabel] != ""
}

// Decision is what admission does with one Job.
type Decision struct {
	Hold bool
	// Reason is one of the Reason constants; when Hold it is the annotations.HoldReason value.
	Reason string
	// Detail is a sentence for the admission warning and logs.
	Detail string
	// HeldSince is the annotations.HeldSince value (RFC 3339, UTC, seconds) when Hold.
	HeldSince string
}

// Screen reports whether job is a candidate for holding at all, before its ServiceAccount is
// looked up: a KubeStash Job not already suspended. ok=false comes with the reason.
//
// A Job that arrives suspended is left alone whatever its annotations say. Someone else
// suspended it (Kueue and friends admit it later), and our own annotations cannot legitimately
// be on a Job being created: only this server sets them, in its own patch. The own-annotations
// guard strips them from the request; holding the Job again would re-add them and let the
// sweeper resume a Job that another controller is meant to resume.
func Screen(job *batchv1.Job) (ok bool, reason string) {
	if job.Labels[annotations.ManagedByLabel] != annotations.ManagedByValue {
		return false, ReasonNotKubeStash
	}
	if ManagedElsewhere(job) {
		return false, ReasonManagedElsewhere
	}
	if job.Spec.Suspend != nil && *job.Spec.Suspend {
		return false, ReasonSuspendedByOther
	}
	return true, ""
}

// Decide says whether to hold job. sa is its ServiceAccount, nil when it does not exist;
// knownReady says the sweeper has proven the credentials of that ServiceAccount work.
func Decide(job *batchv1.Job, sa *corev1.ServiceAccount, knownReady bool, now time.Time) Decision {
	if ok, reason := Screen(job); !ok {
		return Decision{Reason: reason}
	}
	saName := ServiceAccountName(&job.Spec.Template.Spec)
	ref := job.Namespace + "/" + saName
	if sa == nil {
		return held(now, ReasonServiceAccountMissing, fmt.Sprintf("ServiceAccount %s does not exist yet", ref))
	}
	id := IdentityOf(sa)
	switch {
	case !id.Requested():
		return Decision{Reason: ReasonNoCloudIdentity}
	case id.Missing != "":
		return held(now, ReasonIdentityPending, fmt.Sprintf("ServiceAccount %s: %s", ref, id.Missing))
	case !knownReady:
		return held(now, ReasonCredentialsUnverified,
			fmt.Sprintf("ServiceAccount %s has its %s identity, not yet proven to work (trust propagation)", ref, clouds(id)))
	}
	return Decision{Reason: ReasonCredentialsReady}
}

// Unreadable is the decision when the ServiceAccount could not be read for another reason than
// NotFound.
func Unreadable(job *batchv1.Job, err error, now time.Time) Decision {
	return held(now, ReasonServiceAccountUnreadable, fmt.Sprintf("ServiceAccount %s/%s could not be read (%v)",
		job.Namespace, ServiceAccountName(&job.Spec.Template.Spec), err))
}

func held(now time.Time, reason, detail string) Decision {
	return Decision{Hold: true, Reason: reason, Detail: detail, HeldSince: now.UTC().Format(time.RFC3339)}
}

func clouds(id Identity) string {
	switch {
	case id.AWS && id.Azure:
		return "AWS and Azure"
	case id.AWS:
		return "AWS"
	}
	return "Azure"
}
