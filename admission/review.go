package admission

import (
	"bytes"
	"fmt"
	"net/url"
	"strings"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	// The JSON v2 prototype by the Go team: it validates and decodes a review in one pass,
	// about 2.5x faster than encoding/json's validate-then-decode-then-skip on a 5 KB Pod review,
	// and rejects duplicate member names (a classic smuggling trick) and invalid UTF-8.
	json "github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
)

const (
	reviewAPIVersion = "admission.k8s.io/v1"
	reviewKind       = "AdmissionReview"
	// defaultTimeout is the apiserver's default webhook timeout, used when the URL carries none.
	defaultTimeout = 10 * time.Second
)

// reviewIn mirrors admissionv1.AdmissionReview but keeps the objects raw: each is validated but
// not decoded here, only located in the body (objectRef), and decoded by the plugins that need
// parts of it, or by the route's ObjectDecoder in this same pass.
type reviewIn struct {
	APIVersion string     `json:"apiVersion"`
	Kind       string     `json:"kind"`
	Request    requestRef `json:"request"`
}

type requestIn struct {
	UID         types.UID                   `json:"uid"`
	Kind        metav1.GroupVersionKind     `json:"kind"`
	Resource    metav1.GroupVersionResource `json:"resource"`
	SubResource string                      `json:"subResource"`
	Namespace   string                      `json:"namespace"`
	Name        string                      `json:"name"`
	Operation   admissionv1.Operation       `json:"operation"`
	UserInfo    userInfo                    `json:"userInfo"`
	RawObject   objectRef                   `json:"object"`
	RawOld      objectRef                   `json:"oldObject"`
	DryRun      *bool                       `json:"dryRun"`

	// Object and OldObject are the objects' bytes within the body (not copies: valid while
	// the body's buffer is, i.e. until the review is answered); nil when absent.
	Object, OldObject []byte `json:"-"`
}

// ObjectDecoder reads a review's object into a view (only the fields some plugins read). The
// server calls it while it reads the review, so the object is validated and decoded in one pass
// rather than validated by the review's decode and then read again by each plugin, which find
// the result with Request.Decoded.
//
// DecodeObject must read exactly one JSON value from dec (json.UnmarshalDecode does) and give
// what decoding Request.Object on its own gives. On any error the server reads the review again
// without it, and the plugins decode Request.Object themselves: errors, the review's and the
// plugins', are the same as without a decoder. Requests whose kind the route does not serve are
// decoded too, and their view discarded.
type ObjectDecoder interface {
	DecodeObject(dec *jsontext.Decoder) (any, error)
}

// ObjectReader is implemented by a plugin that reads the object through an ObjectDecoder. The
// server runs the decoder of the route's first ObjectReader; the decoder value is the view's
// name, so plugins naming the same (comparable) decoder share one view.
type ObjectReader interface {
	ObjectDecoder() ObjectDecoder
}

// requestRef decodes the request, handing the object's decoder to its objectRef.
type requestRef struct {
	req    *requestIn
	decode ObjectDecoder
}

func (r *requestRef) UnmarshalJSONFrom(dec *jsontext.Decoder) error {
	if dec.PeekKind() == 'n' {
		_, err := dec.ReadToken()
		r.req = nil
		return err
	}
	r.req = &requestIn{RawObject: objectRef{decode: r.decode}}
	return json.UnmarshalDecode(dec, r.req)
}

// objectRef locates an object in the body: where its value starts and ends. The value is
// validated (SkipValue), or decoded by decode, which validates it as well.
type objectRef struct {
	start, end int64
	present    bool
	decode     ObjectDecoder
	view       any
}

func (o *objectRef) UnmarshalJSONFrom(dec *jsontext.Decoder) error {
	// The offset is just past the member name: the colon and any whitespace come first.
	start := dec.InputOffset()
	if o.decode != nil {
		v, err := decodeObject(o.decode, dec)
		if err != nil {
			return err
		}
		o.view = v
	} else if err := dec.SkipValue(); err != nil {
		return err
	}
	o.start, o.end, o.present = start, dec.InputOffset(), true
	return nil
}

// decodeObject runs a plugin's decoder, a panic in it becoming an error: the review is then read
// again without it, and the plugin, decoding the raw object itself, panics under the server's
// recovery (a 500 carrying the uid), as it would without a decoder.
func decodeObject(d ObjectDecoder, dec *jsontext.Decoder) (v any, err error) {
	defer func() {
		if p := recover(); p != nil {
			v, err = nil, fmt.Errorf("object decoder panicked: %v", p)
		}
	}()
	return d.DecodeObject(dec)
}

// bytesIn is the object's value within body; nil when absent.
func (o *objectRef) bytesIn(body []byte) []byte {
	if !o.present || o.start < 0 || o.end > int64(len(body)) || o.start > o.end {
		return nil
	}
	return bytes.TrimLeft(body[o.start:o.end:o.end], " \t\r\n:")
}

type userInfo struct {
	Username string              `json:"username"`
	UID      string              `json:"uid"`
	Groups   []string            `json:"groups"`
	Extra    map[string][]string `json:"extra"`
}

// DecodeError is a review the server cannot read; it answers 400 with Message.
type DecodeError struct{ Message string }

func (e *DecodeError) Error() string { return e.Message }

// decodeReview parses an AdmissionReview v1 and checks the parts every handler relies on. The
// request's objects point into body. d, when not nil, decodes the object in the same pass
// (ObjectDecoder); its view is in the request's RawObject.
func decodeReview(body []byte, d ObjectDecoder) (*requestIn, error) {
	in, err := decodeReviewWith(body, d)
	if err != nil && d != nil {
		// Whatever went wrong, the answer is the one the review gets without d.
		in, err = decodeReviewWith(body, nil)
	}
	return in, err
}

func decodeReviewWith(body []byte, d ObjectDecoder) (*requestIn, error) {
	in := reviewIn{Request: requestRef{decode: d}}
	if err := json.Unmarshal(body, &in); err != nil {
		return nil, &DecodeError{Message: fmt.Sprintf("malformed AdmissionReview JSON: %v", err)}
	}
	if in.Kind != reviewKind || in.APIVersion != reviewAPIVersion {
		return nil, &DecodeError{Message: fmt.Sprintf("expected apiVersion %s kind %s, got apiVersion %q kind %q", reviewAPIVersion, reviewKind, in.APIVersion, in.Kind)}
	}
	req := in.Request.req
	if req == nil {
		return nil, &DecodeError{Message: "AdmissionReview has no request"}
	}
	if req.UID == "" {
		return nil, &DecodeError{Message: "AdmissionReview request has no uid"}
	}
	req.Object, req.OldObject = req.RawObject.bytesIn(body), req.RawOld.bytesIn(body)
	return req, nil
}

// budget derives how long plugins may work from the apiserver's ?timeout= query parameter,
// keeping a safety margin so the answer arrives before the apiserver gives up on us: a fifth of
// the timeout, at least 100 ms and at most 2 s.
func budget(q url.Values) time.Duration { return budgetOf(q.Get("timeout")) }

// budgetOf is budget for the timeout parameter's value.
func budgetOf(s string) time.Duration {
	timeout := defaultTimeout
	if s != "" {
		if d, err := time.ParseDuration(s); err == nil && d > 0 && d <= 30*time.Second {
			timeout = d
		}
	}
	margin := timeout / 5
	margin = max(margin, 100*time.Millisecond)
	margin = min(margin, 2*time.Second)
	if timeout <= margin {
		return timeout / 2
	}
	return timeout - margin
}

// queryGet is url.ParseQuery(rawQuery).Get(key) without building the map for the common query
// (the apiserver sends "timeout=10s"): when nothing in it is escaped ('%', '+') and no ';'
// makes ParseQuery drop a pair, the pairs are the '&'-separated substrings as they are.
func queryGet(rawQuery, key string) string {
	if strings.ContainsAny(rawQuery, "%+;") {
		q, _ := url.ParseQuery(rawQuery)
		return q.Get(key)
	}
	for rawQuery != "" {
		var pair string
		pair, rawQuery, _ = strings.Cut(rawQuery, "&")
		if k, v, _ := strings.Cut(pair, "="); k == key {
			return v
		}
	}
	return ""
}

// reviewOut is the response AdmissionReview. apiVersion, kind and the request's uid are always
// set: an apiserver rejects a response without them (the bug the EKS webhook shipped for years).
type reviewOut struct {
	APIVersion string      `json:"apiVersion"`
	Kind       string      `json:"kind"`
	Response   responseOut `json:"response"`
}

type responseOut struct {
	UID       types.UID  `json:"uid"`
	Allowed   bool       `json:"allowed"`
	Status    *statusOut `json:"status,omitempty"`
	Patch     []byte     `json:"patch,omitempty"`
	PatchType *string    `json:"patchType,omitempty"`
	Warnings  []string   `json:"warnings,omitempty"`
}

type statusOut struct {
	Code    int32  `json:"code"`
	Message string `json:"message"`
}

const jsonPatchType = string(admissionv1.PatchTypeJSONPatch)
