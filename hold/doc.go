// Package hold owns the contract of holding a KubeStash Job until its credentials work, both
// ways, as pure functions:
//
//   - admission.go: is a Job a candidate at all (Screen), hold it or not and why (Decide,
//     Unreadable), and ManagedElsewhere (another controller owns spec.suspend).
//   - patch.go: the hold as JSON-patch operations (Patch) and its admission warning.
//   - release.go: which Jobs are held and so may ever be released (IsHeld, HeldSince), the
//     release patch with its preconditions (ReleasePatch), which releases only remove our
//     annotations (ResumedElsewhere), and the one who holds releases: a resume of a held Job by
//     anyone else is turned back at admission (KeepHeld; KubeStash resumes Jobs by itself once
//     the role ARN is on the ServiceAccount, before the trust policy works).
//   - plan.go: when the sweeper releases (Plan: ready, or at max hold without credentials),
//     when it looks again (Backoff), and how long a check may take (CheckDeadline).
//   - identity.go: the identity a Job's ServiceAccount asks for (IdentityOf), what the sweeper
//     knows of it without a cloud call (Precheck), and the ServiceAccount a Pod template runs as.
//   - ready.go: the ReadyCache interface admission reads and the sweeper fills.
//
// The admission plugin (package jobs) and the sweeper (package sweeper) call these for every
// decision; neither decides on its own. Security rules that live here, and are tested here: a
// Job arriving suspended is never held (someone else suspended it); only Jobs carrying our
// held-since annotation and KubeStash's managed-by label are ever released; a Job whose
// spec.suspend another controller owns is never resumed, only cleaned of our annotations; the
// release patch touches nothing but our two annotations and spec.suspend (the server's
// ValidatingAdmissionPolicy, manifests/selfpolicy.yaml, refuses anything else).
package hold
