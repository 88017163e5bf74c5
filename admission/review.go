package admission

import (
	"fmt"
	"net/url"
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

// reviewIn mirrors admissionv1.AdmissionReview but keeps the objects raw (jsontext.Value): the
// object is validated but never decoded here, only by the plugins that need parts of it.
type reviewIn struct {
	APIVersion string     `json:"apiVersion"`
	Kind       string     `json:"kind"`
	Request    *requestIn `json:"request"`
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
	Object      jsontext.Value              `json:"object"`
	OldObject   jsontext.Value              `json:"oldObject"`
	DryRun      *bool                       `json:"dryRun"`
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

// decodeReview parses an AdmissionReview v1 and checks the parts every handler relies on.
func decodeReview(body []byte) (*requestIn, error) {
	var in reviewIn
	if err := json.Unmarshal(body, &in); err != nil {
		return nil, &DecodeError{Message: fmt.Sprintf("malformed AdmissionReview JSON: %v", err)}
	}
	if in.Kind != reviewKind || in.APIVersion != reviewAPIVersion {
		return nil, &DecodeError{Message: fmt.Sprintf("expected apiVersion %s kind %s, got apiVersion %q kind %q", reviewAPIVersion, reviewKind, in.APIVersion, in.Kind)}
	}
	if in.Request == nil {
		return nil, &DecodeError{Message: "AdmissionReview has no request"}
	}
	if in.Request.UID == "" {
		return nil, &DecodeError{Message: "AdmissionReview request has no uid"}
	}
	return in.Request, nil
}

// budget derives how long plugins may work from the apiserver's ?timeout= query parameter,
// keeping a safety margin so the answer arrives before the apiserver gives up on us: a fifth of
// the timeout, at least 100 ms and at most 2 s.
func budget(q url.Values) time.Duration {
	timeout := defaultTimeout
	if s := q.Get("timeout"); s != "" {
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
