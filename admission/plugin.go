package admission

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"go.klusters.dev/credential-webhook/markers"
	"go.klusters.dev/credential-webhook/patches"
)

// Request is what a plugin sees of one AdmissionReview: everything a decision needs, with the
// object kept raw so patches can address into it without losing fields we do not know.
type Request struct {
	UID       types.UID
	Kind      metav1.GroupVersionKind
	Namespace string
	Name      string
	Operation admissionv1.Operation
	UserInfo  authenticationv1.UserInfo
	DryRun    bool
	// Object and OldObject are the raw JSON exactly as the apiserver sent them. They are the
	// bytes of the review's body, reused once the review is answered: a plugin that keeps any of
	// it past Admit copies it.
	Object    []byte
	OldObject []byte
	// Deadline is the apiserver's timeout for this call less a safety margin; the context
	// passed to plugins carries it too.
	Deadline time.Time
	// Log carries the request uid and object coordinates.
	Log *slog.Logger
	// Authenticated is true when the review came over a TLS connection whose client certificate
	// the --client-ca-file CA signed for an allowed client name: only then is the review known
	// to come from the apiserver, and only then may a plugin write to a cloud or RBAC before the
	// object is persisted. Otherwise a review only plans (see package markers).
	Authenticated bool

	// decoded is what decodedBy.DecodeObject read from Object (ObjectDecoder).
	decodedBy ObjectDecoder
	decoded   any

	ann, oldAnn       map[string]string
	annErr, oldAnnErr error
	annDone, oldDone  bool
}

// Decoded returns what d.DecodeObject read from Object while the server read the review, if d
// is the route's decoder (ObjectReader) and it succeeded; otherwise the plugin decodes Object
// itself.
func (r *Request) Decoded(d ObjectDecoder) (any, bool) {
	if r.decodedBy == nil || r.decodedBy != d {
		return nil, false
	}
	return r.decoded, true
}

// Annotations returns the object's metadata.annotations, decoded once per review however many
// plugins ask (a hostile object may carry a hundred thousand tiny annotations).
func (r *Request) Annotations() (map[string]string, error) {
	if !r.annDone {
		r.ann, r.annErr = ObjectAnnotations(r.Object)
		r.annDone = true
	}
	return r.ann, r.annErr
}

// OldAnnotations is Annotations for the old object (UPDATE).
func (r *Request) OldAnnotations() (map[string]string, error) {
	if !r.oldDone {
		r.oldAnn, r.oldAnnErr = ObjectAnnotations(r.OldObject)
		r.oldDone = true
	}
	return r.oldAnn, r.oldAnnErr
}

// Response collects what the plugins of one route contribute.
type Response struct {
	Patch    *patches.Builder
	Warnings []string
	// Pending lists the claims admission accepted and planned but did not finish: the route's
	// PendingMarker writes them into our pending annotation once, for every cloud together, so
	// no plugin can clear a claim another still needs.
	Pending markers.Claims
	// LogAttrs are added to the review's log line (one line per review): what a plugin decided
	// and why, instead of a line of its own.
	LogAttrs []slog.Attr
}

// Defer records an accepted claim whose cloud write follows persistence.
func (r *Response) Defer(c markers.Claim) { r.Pending = r.Pending.With(c) }

// Warn adds an admission warning, shown to the requester by kubectl and client-go.
func (r *Response) Warn(format string, args ...any) {
	r.Warnings = append(r.Warnings, fmt.Sprintf(format, args...))
}

// Plugin contributes to one route's response. Plugins run in order and share one patch Builder.
// A plugin returns an error made by Deny to refuse the object; any other error is an internal
// error (HTTP 500 to the apiserver, which then applies the webhook's failurePolicy). Plugins that
// talk to a cloud handle its failures themselves, by warning, because the design admits objects
// when the cloud is slow and lets the sweeper finish later.
type Plugin interface {
	Name() string
	Admit(ctx context.Context, req *Request, resp *Response) error
}

// DeniedError refuses a review with an HTTP-like status code and a message for the requester.
type DeniedError struct {
	Code    int32
	Message string
}

func (e *DeniedError) Error() string { return fmt.Sprintf("denied (%d): %s", e.Code, e.Message) }

// Deny returns an error that makes the review answer allowed=false with code and message.
func Deny(code int32, format string, args ...any) error {
	return &DeniedError{Code: code, Message: fmt.Sprintf(format, args...)}
}

// IsDenied reports whether err (or anything it wraps) is a denial, and returns it.
func IsDenied(err error) (*DeniedError, bool) {
	var d *DeniedError
	ok := errors.As(err, &d)
	return d, ok
}
