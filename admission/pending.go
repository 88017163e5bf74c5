package admission

import (
	"context"

	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/markers"
)

// PendingMarker runs last on the ServiceAccount route. It writes the claims the cloud plugins
// accepted (Response.Pending) into our pending annotation, one value for every cloud, and tells
// Planned about the object, so the replica that planned it writes to the cloud as soon as it sees
// the ServiceAccount persisted. Claims already pending that no plugin repeated stay as they are:
// the finisher drops those the ServiceAccount no longer makes, with a Warning Event.
type PendingMarker struct {
	// Planned is told about every planned ServiceAccount (not for dryRun); may be nil.
	Planned func(namespace, name string)
}

func (PendingMarker) Name() string { return "pending-marker" }

func (m PendingMarker) Admit(_ context.Context, req *Request, resp *Response) error {
	if len(resp.Pending) == 0 {
		return nil
	}
	cur, err := req.Annotations()
	if err != nil {
		return Deny(400, "%v", err)
	}
	claims := resp.Pending
	if prev, err := markers.ParsePending(cur[annotations.Pending]); err == nil {
		for _, c := range prev {
			if _, ok := claims.Get(c.Cloud); !ok {
				claims = claims.With(c)
			}
		}
	}
	resp.Patch.SetMapEntry("/metadata/annotations", cur, annotations.Pending, markers.FormatPending(claims))
	if !req.DryRun && m.Planned != nil && req.Name != "" {
		m.Planned(req.Namespace, req.Name)
	}
	return nil
}
