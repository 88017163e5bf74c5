package hold

import (
	"encoding/json"
	"strings"
	"testing"

	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/patches"
)

// The hold is spec.suspend true and our two annotations, addressed into the raw Job: a whole
// map when the Job has none, entries otherwise, and on a builder that already removed stale
// copies (the own-annotations guard) the removals are taken back, never doubled.
func TestPatch(t *testing.T) {
	d := Decision{Hold: true, Reason: ReasonIdentityPending, Detail: "ServiceAccount demo/sa: no role yet", HeldSince: "2026-05-06T12:55:38Z"}
	hr, hs := "/metadata/annotations/credential-webhook.klusters.dev~1hold-reason", "/metadata/annotations/credential-webhook.klusters.dev~1held-since"
	for _, tc := range []struct {
		name     string
		existing map[string]string
		before   func(b *patches.Builder, existing map[string]string)
		want     string
	}{
		{"no annotations", nil, nil,
			`[{"op":"add","path":"/spec/suspend","value":true},{"op":"add","path":"/metadata/annotations","value":{"credential-webhook.klusters.dev/held-since":"2026-05-06T12:55:38Z","credential-webhook.klusters.dev/hold-reason":"IdentityPending"}}]`},
		{"other annotations", map[string]string{"kubestash.com/backup-session": "s"}, nil,
			`[{"op":"add","path":"/spec/suspend","value":true},{"op":"add","path":"` + hr + `","value":"IdentityPending"},{"op":"add","path":"` + hs + `","value":"2026-05-06T12:55:38Z"}]`},
		{"stale copies the guard removed", map[string]string{annotations.HoldReason: "x", annotations.HeldSince: "y"},
			func(b *patches.Builder, existing map[string]string) {
				b.RemoveMapEntry("/metadata/annotations", existing, annotations.HoldReason)
				b.RemoveMapEntry("/metadata/annotations", existing, annotations.HeldSince)
			},
			`[{"op":"add","path":"/spec/suspend","value":true},{"op":"replace","path":"` + hr + `","value":"IdentityPending"},{"op":"replace","path":"` + hs + `","value":"2026-05-06T12:55:38Z"}]`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := patches.NewBuilder()
			if tc.before != nil {
				tc.before(b, tc.existing)
			}
			Patch(b, tc.existing, d)
			got, err := json.Marshal(b.Ops())
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want {
				t.Errorf("Patch =\n%s\nwant\n%s", got, tc.want)
			}
		})
	}
	if w := Warning(d); !strings.Contains(w, "IdentityPending: ServiceAccount demo/sa: no role yet") || !strings.Contains(w, "resumes the Job by itself") {
		t.Errorf("Warning = %q", w)
	}
}
