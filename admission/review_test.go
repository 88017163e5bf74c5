package admission

import (
	"bytes"
	"context"
	"errors"
	"net/url"
	"reflect"
	"testing"

	json "github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// refReviewIn and refDecodeReview are the decoder decodeReview replaced (objects copied out as
// jsontext.Values, no ObjectDecoder): the reference its results must equal.
type refReviewIn struct {
	APIVersion string        `json:"apiVersion"`
	Kind       string        `json:"kind"`
	Request    *refRequestIn `json:"request"`
}

type refRequestIn struct {
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

func refDecodeReview(body []byte) (*refRequestIn, bool) {
	var in refReviewIn
	if json.Unmarshal(body, &in) != nil || in.Kind != reviewKind || in.APIVersion != reviewAPIVersion || in.Request == nil || in.Request.UID == "" {
		return nil, false
	}
	return in.Request, true
}

// viewDecoder is an ObjectDecoder reading metadata.name and spec.replicas, like the plugins'
// views (a few fields, the rest validated and skipped).
type viewDecoder struct{ calls int }

type testView struct {
	Metadata struct {
		Name   string            `json:"name"`
		Labels map[string]string `json:"labels"`
	} `json:"metadata"`
	Spec struct {
		Replicas *int32 `json:"replicas"`
	} `json:"spec"`
}

func (v *viewDecoder) DecodeObject(dec *jsontext.Decoder) (any, error) {
	v.calls++
	var view testView
	if err := json.UnmarshalDecode(dec, &view); err != nil {
		return nil, err
	}
	return &view, nil
}

// reviewBodies are reviews decodeReview must read as the reference does: objects present,
// absent, null, of every JSON kind, after whitespace, with views that fail to decode, and
// malformed reviews.
var reviewBodies = []string{
	`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"group":"","version":"v1","kind":"Pod"},"operation":"CREATE","userInfo":{"username":"a","groups":["g"],"extra":{"k":["v"]}},"object":{"metadata":{"name":"n","labels":{"a":"b"}},"spec":{"replicas":3}},"oldObject":null,"dryRun":true}}`,
	`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","object":{"metadata":{"name":"n"}}}}`,
	`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u"}}`,
	`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","object":null}}`,
	"{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"AdmissionReview\",\"request\":{\"uid\":\"u\",\"object\" \t\r\n : \n {\"metadata\" : {\"name\":\"x\"} } \n ,\"oldObject\": [1, 2] }}",
	`{"request":{"oldObject":"str","object":{"spec":{"replicas":"not a number"}},"uid":"u"},"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1"}`,
	`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","object":42}}`,
	`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","object":"x","oldObject":true}}`,
	`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","object":{"metadata":{"name":"a","name":"b"}}}}`,
	"{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"AdmissionReview\",\"request\":{\"uid\":\"u\",\"object\":{\"metadata\":{\"name\":\"\xff\"}}}}",
	`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","object":{"spec":{"other":{"a":1,"a":2}}}}}`,
	`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","object":{},"object":{}}}`,
	`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":null}`,
	`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":5}`,
	`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","object":{}},"request":{"uid":"v"}}`,
	`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"","object":{}}}`,
	`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","object":{"metadata":{}}}} trailing`,
	`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","object":{"metadata":{"name":"n"}`,
	`{"apiVersion":"v1","kind":"AdmissionReview","request":{"uid":"u","object":{}}}`,
	`[]`, ``, `null`,
}

// checkDecodeReview compares decodeReview, with and without an ObjectDecoder, with the
// reference on body.
func checkDecodeReview(t *testing.T, body []byte) {
	t.Helper()
	want, ok := refDecodeReview(body)
	for _, d := range []*viewDecoder{nil, {}} {
		var od ObjectDecoder
		if d != nil {
			od = d
		}
		got, err := decodeReview(body, od)
		if !ok {
			var de *DecodeError
			if err == nil || !errors.As(err, &de) {
				t.Fatalf("decodeReview(%q) = %v, want a *DecodeError", body, err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("decodeReview(%q): %v", body, err)
		}
		if got.UID != want.UID || got.Kind != want.Kind || got.Resource != want.Resource || got.SubResource != want.SubResource ||
			got.Namespace != want.Namespace || got.Name != want.Name || got.Operation != want.Operation ||
			!reflect.DeepEqual(got.UserInfo, want.UserInfo) || !reflect.DeepEqual(got.DryRun, want.DryRun) {
			t.Fatalf("decodeReview(%q) = %+v, want %+v", body, got, want)
		}
		if !bytes.Equal(got.Object, want.Object) || (got.Object == nil) != (want.Object == nil) ||
			!bytes.Equal(got.OldObject, want.OldObject) || (got.OldObject == nil) != (want.OldObject == nil) {
			t.Fatalf("decodeReview(%q): objects %q, %q; want %q, %q", body, got.Object, got.OldObject, want.Object, want.OldObject)
		}
		if d == nil {
			if got.RawObject.view != nil {
				t.Fatalf("a view without an ObjectDecoder")
			}
			continue
		}
		// The view, when there is one, is what decoding the object alone gives; when there is
		// none, decoding the object alone fails.
		var alone testView
		errAlone := json.Unmarshal(got.Object, &alone)
		if v := got.RawObject.view; v != nil {
			if errAlone != nil || !reflect.DeepEqual(v, &alone) {
				t.Fatalf("decodeReview(%q): view %+v, decoding the object alone %+v (%v)", body, v, alone, errAlone)
			}
		} else if got.Object != nil && errAlone == nil {
			t.Fatalf("decodeReview(%q): no view, but the object decodes alone", body)
		}
	}
}

func TestDecodeReviewMatchesReference(t *testing.T) {
	for _, b := range reviewBodies {
		checkDecodeReview(t, []byte(b))
	}
}

func FuzzDecodeReviewMatchesReference(f *testing.F) {
	for _, b := range reviewBodies {
		f.Add([]byte(b))
	}
	for _, b := range fixtureBodies(f) {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		if len(body) > maxFuzzBody {
			return
		}
		checkDecodeReview(t, body)
	})
}

// The objects are the body's bytes, not copies: the decode costs no allocation of their size.
func TestDecodeReviewObjectsInBody(t *testing.T) {
	body := []byte(reviewBodies[0])
	got, err := decodeReview(body, nil)
	if err != nil {
		t.Fatal(err)
	}
	start := bytes.Index(body, []byte(`{"metadata"`))
	if &got.Object[0] != &body[start] {
		t.Fatal("the object is a copy, not the body's bytes")
	}
	if cap(got.Object) != len(got.Object) {
		t.Fatal("appending to the object would overwrite the body")
	}
}

// The view is handed to the plugin that decoded it, and only to that one.
func TestRequestDecoded(t *testing.T) {
	d, other := &viewDecoder{}, &viewDecoder{}
	body := []byte(reviewBodies[0])
	in, err := decodeReview(body, d)
	if err != nil || d.calls != 1 {
		t.Fatalf("decodeReview: %v, %d calls", err, d.calls)
	}
	req := &Request{decodedBy: in.RawObject.decode, decoded: in.RawObject.view}
	if v, ok := req.Decoded(d); !ok || v.(*testView).Metadata.Name != "n" {
		t.Fatalf("Decoded(d) = %v, %v", v, ok)
	}
	if _, ok := req.Decoded(other); ok {
		t.Fatal("another decoder got the view")
	}
	if _, ok := req.Decoded(nil); ok {
		t.Fatal("nil got the view")
	}
	if _, ok := (&Request{}).Decoded(d); ok {
		t.Fatal("a view without a decode")
	}
}

var queries = []string{
	"", "timeout=10s", "timeout=", "timeout", "a=1&timeout=5s&timeout=6s", "timeout=5s&timeout=6s", "&&timeout=1s&",
	"timeout=1%73", "time%6Fut=2s", "timeout=1s;x", "x;y&timeout=3s", "timeout=a+b", "timeout=%zz&timeout=4s",
	"timeout=1s=2", "=&=x&timeout=7s", "TIMEOUT=1s", "timeout =1s",
}

func TestQueryGetMatchesParseQuery(t *testing.T) {
	for _, raw := range queries {
		q, _ := url.ParseQuery(raw)
		if got, want := queryGet(raw, "timeout"), q.Get("timeout"); got != want {
			t.Errorf("queryGet(%q) = %q, want %q", raw, got, want)
		}
	}
}

func FuzzQueryGet(f *testing.F) {
	for _, raw := range queries {
		f.Add(raw)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		q, _ := url.ParseQuery(raw)
		if got, want := queryGet(raw, "timeout"), q.Get("timeout"); got != want {
			t.Fatalf("queryGet(%q) = %q, want %q", raw, got, want)
		}
	})
}

type readerPlugin struct {
	pluginFunc
	d ObjectDecoder
}

func (r readerPlugin) ObjectDecoder() ObjectDecoder { return r.d }

type uncomparableDecoder struct{ _ []int }

func (uncomparableDecoder) DecodeObject(dec *jsontext.Decoder) (any, error) {
	return nil, dec.SkipValue()
}

// The route reads the object with its first ObjectReader's decoder; a decoder that cannot be
// compared (Request.Decoded could not name it) is not used.
func TestRouteObjectDecoder(t *testing.T) {
	noop := pluginFunc(func(context.Context, *Request, *Response) error { return nil })
	d1, d2 := &viewDecoder{}, &viewDecoder{}
	for _, c := range []struct {
		plugins []Plugin
		want    ObjectDecoder
	}{
		{nil, nil},
		{[]Plugin{noop}, nil},
		{[]Plugin{noop, readerPlugin{noop, d1}, readerPlugin{noop, d2}}, d1},
		{[]Plugin{readerPlugin{noop, nil}, readerPlugin{noop, d2}}, nil},
		{[]Plugin{readerPlugin{noop, uncomparableDecoder{}}}, nil},
	} {
		if got := routeObjectDecoder(Route{Plugins: c.plugins}); got != c.want {
			t.Errorf("routeObjectDecoder(%v) = %v, want %v", c.plugins, got, c.want)
		}
	}
}

type panickingDecoder struct{}

func (panickingDecoder) DecodeObject(*jsontext.Decoder) (any, error) { panic("boom") }

// A decoder that panics costs the review its view, not its answer: the server reads it again
// without the decoder.
func TestDecodeReviewSurvivesAPanickingDecoder(t *testing.T) {
	body := []byte(reviewBodies[0])
	in, err := decodeReview(body, panickingDecoder{})
	if err != nil || in.RawObject.view != nil || !bytes.Contains(body, in.Object) || len(in.Object) == 0 {
		t.Fatalf("decodeReview with a panicking decoder: %+v, %v", in, err)
	}
}
