package admission

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"

	json "github.com/go-json-experiment/json"
	admissionv1 "k8s.io/api/admission/v1"

	"go.klusters.dev/credential-webhook/annotations"
)

// OwnAnnotationsGuard strips annotations under our prefix that anyone but this server adds or
// changes. Those annotations are what the sweeper trusts (a ServiceAccount admission accepted, a
// Job admission held), so a user who could forge them could make the sweeper assign a role or
// release a Job on their behalf. Stripping rather than denying keeps KubeStash's objects flowing
// when, for example, it copies a whole annotation map from a template.
type OwnAnnotationsGuard struct {
	// Self lists the usernames this server acts as (its ServiceAccount's username).
	Self map[string]bool
}

func (OwnAnnotationsGuard) Name() string { return "own-annotations-guard" }

func (g OwnAnnotationsGuard) Admit(_ context.Context, req *Request, resp *Response) error {
	if g.Self[req.UserInfo.Username] {
		return nil
	}
	if req.Operation != admissionv1.Create && req.Operation != admissionv1.Update {
		return nil
	}
	if !mayCarryOurs(req.Object) && !mayCarryOurs(req.OldObject) {
		return nil // the common case: skip decoding the object at all
	}
	cur, err := req.Annotations()
	if err != nil {
		return Deny(400, "%v", err)
	}
	var old map[string]string
	if req.Operation == admissionv1.Update {
		if old, err = req.OldAnnotations(); err != nil {
			return Deny(400, "%v", err)
		}
	}
	// Sorted, so patches and warnings are the same for the same object every time.
	for _, k := range slices.Sorted(maps.Keys(cur)) {
		v := cur[k]
		if !strings.HasPrefix(k, annotations.Prefix) {
			continue
		}
		prev, had := old[k]
		switch {
		case had && prev == v:
			// Unchanged: what this server set earlier stays.
		case had:
			resp.Patch.SetMapEntry("/metadata/annotations", cur, k, prev)
			resp.Warn("annotation %s is managed by credential-webhook; the change was reverted", k)
		default:
			resp.Patch.RemoveMapEntry("/metadata/annotations", cur, k)
			resp.Warn("annotation %s is managed by credential-webhook; it was removed", k)
		}
	}
	return nil
}

// ObjectAnnotations reads metadata.annotations from a raw object without decoding the rest.
func ObjectAnnotations(raw []byte) (map[string]string, error) {
	if len(raw) == 0 {
		return nil, nil
	}
	var obj struct {
		Metadata struct {
			Annotations map[string]string `json:"annotations"`
		} `json:"metadata"`
	}
	if err := json.Unmarshal(raw, &obj); err != nil { // JSON v2: one pass, see review.go
		return nil, fmt.Errorf("object metadata is not valid JSON: %w", err)
	}
	return obj.Metadata.Annotations, nil
}

var ourPrefix = []byte(annotations.Prefix)

// mayCarryOurs is a sound pre-check. Our prefix holds only letters, digits, '-', '.' and '/', and
// the only JSON escapes that can spell those are \uXXXX and \/; a document with neither the
// literal prefix nor such an escape carries no key of ours. (Other escapes, like \" in a
// container's args, are common and do not matter.)
func mayCarryOurs(raw []byte) bool {
	return bytes.Contains(raw, ourPrefix) || bytes.Contains(raw, []byte(`\u`)) || bytes.Contains(raw, []byte(`\/`))
}
