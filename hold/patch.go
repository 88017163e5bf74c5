package hold

import (
	"fmt"

	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/patches"
)

// Patch renders the hold d into b: spec.suspend true and our two annotations. existing is the
// Job's annotation map as decoded from the raw object (nil when absent). b is the route's shared
// Builder: the own-annotations guard may already have removed copies of our annotations from
// it, and setting them again takes those removals back rather than emitting two operations for
// one key.
func Patch(b *patches.Builder, existing map[string]string, d Decision) {
	b.Set("/spec/suspend", true)
	b.SetMapEntry("/metadata/annotations", existing, annotations.HoldReason, d.Reason)
	b.SetMapEntry("/metadata/annotations", existing, annotations.HeldSince, d.HeldSince)
}

// Warning is the admission warning of the hold d, shown to whoever created the Job.
func Warning(d Decision) string {
	return fmt.Sprintf("credential-webhook suspended this Job until its credentials work (%s: %s); it resumes the Job by itself", d.Reason, d.Detail)
}
