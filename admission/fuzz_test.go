package admission

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"runtime/metrics"
	"strings"
	"testing"

	jsonv2 "github.com/go-json-experiment/json"
	jsonpatch "gopkg.in/evanphx/json-patch.v4"

	"go.klusters.dev/credential-webhook/annotations"
)

// Fuzz targets for what reaches the server from the network. Seeds: every admission fixture
// (testdata/*/request.json) plus the hostile bodies committed under testdata/fuzz/<FuzzName>/,
// which plain `go test` runs too. Run longer with scripts/fuzz.sh (make fuzz) or
//
//	go test -run '^$' -fuzz '^FuzzDecodeReview$' -fuzztime 1m ./admission/

// maxFuzzBody bounds fuzz inputs. Real reviews go up to DefaultMaxBodyBytes, but every decoding
// cost the fuzzer could find grows with the input; a bound keeps each execution fast, and the
// allocation check below turns "grows faster than the input" into a failure.
const maxFuzzBody = 64 << 10

// fuzzMaxBody is the handler's body limit in FuzzHandler: small, so the 413 path is reachable.
const fuzzMaxBody = 4 << 10

// heapAllocs is the total of bytes ever allocated on the heap. runtime/metrics reads it without
// stopping the world (unlike ReadMemStats), cheap enough for every fuzz execution; small
// allocations are counted per cached span, so a reading can lag by a few spans (the slack below).
func heapAllocs() uint64 {
	s := []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// allocSlack absorbs the span granularity of heapAllocs and fixed per-call costs (a recorder,
// a logger, the response buffer).
const allocSlack = 4 << 20

// checkAllocs fails when f allocated more than perByte bytes per input byte plus allocSlack: an
// input-proportional bound, so a quadratic or fixed huge allocation is caught at fuzz sizes.
func checkAllocs(t *testing.T, n int, perByte uint64, what string, f func()) {
	t.Helper()
	before := heapAllocs()
	f()
	if got, limit := heapAllocs()-before, perByte*uint64(n)+allocSlack; got > limit {
		t.Fatalf("%s allocated %d bytes for a %d-byte input (limit %d)", what, got, n, limit)
	}
}

// fixtureBodies are the request bodies of the admission fixtures, hostile ones included.
func fixtureBodies(f *testing.F) [][]byte {
	paths, err := filepath.Glob("testdata/*/request.json")
	if err != nil || len(paths) == 0 {
		f.Fatalf("no fixtures under testdata (%v)", err)
	}
	var out [][]byte
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		out = append(out, b)
	}
	return out
}

// FuzzDecodeReview: decodeReview never panics, allocates in proportion to its input, and
// whatever it accepts carries what every handler relies on (a uid), re-decodes to the same
// request, and is something encoding/json also reads as JSON: the two decoders in this package
// (json v2 for the review, encoding/json for annotations) must never disagree on validity.
func FuzzDecodeReview(f *testing.F) {
	for _, b := range fixtureBodies(f) {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		if len(body) > maxFuzzBody {
			return
		}
		var req *requestIn
		var err error
		checkAllocs(t, len(body), 64, "decodeReview", func() { req, err = decodeReview(body, nil) })
		if err != nil {
			if _, ok := err.(*DecodeError); !ok {
				t.Fatalf("error %T is not a *DecodeError (the handler answers 400 only for those): %v", err, err)
			}
			return
		}
		if req == nil || req.UID == "" {
			t.Fatalf("accepted a review without a uid: %+v", req)
		}
		if !json.Valid(body) {
			t.Fatalf("decodeReview accepted a body encoding/json calls invalid: %q", body)
		}
		for _, raw := range [][]byte{req.Object, req.OldObject} {
			if len(raw) > 0 && !json.Valid(raw) {
				t.Fatalf("object is not valid JSON: %q", raw)
			}
		}
		again, err := decodeReview(body, nil)
		if err != nil || again.UID != req.UID || !bytes.Equal(again.Object, req.Object) {
			t.Fatalf("second decode differs: %v", err)
		}
	})
}

// fuzzRoutes is a handler wired like serve: the real OwnAnnotationsGuard first, then a plugin
// doing what the cloud plugins do with the patch builder (read annotations, set one, remove one,
// warn with a user-supplied value).
func fuzzRoutes() []Route {
	guard := OwnAnnotationsGuard{Self: map[string]bool{fuzzSelf: true}}
	annotate := pluginFunc(func(_ context.Context, req *Request, resp *Response) error {
		cur, err := ObjectAnnotations(req.Object)
		if err != nil {
			return Deny(400, "%v", err)
		}
		if v, ok := cur[annotations.SeedRole]; ok {
			resp.Warn("seed %q ignored", v)
			resp.Patch.SetMapEntry("/metadata/annotations", cur, annotations.AWSRoleARN, "arn:aws:iam::123456789012:role/x-0")
			resp.Patch.RemoveMapEntry("/metadata/annotations", cur, annotations.Pending)
		}
		return nil
	})
	return []Route{
		{Path: "/mutate/serviceaccounts", Name: "serviceaccounts", Kind: "ServiceAccount", Plugins: []Plugin{guard, annotate}},
		{Path: "/mutate/jobs", Name: "jobs", Group: "batch", Kind: "Job", Plugins: []Plugin{guard}},
		// A route whose object is read while the review is (ObjectReader): the plugin finds the
		// view the server read equal to its own decode of the raw object, or answers 500.
		{Path: "/mutate/viewed", Name: "serviceaccounts", Kind: "ServiceAccount", Plugins: []Plugin{guard, viewChecker{}, annotate}},
	}
}

// viewChecker is an ObjectReader whose Admit fails (HTTP 500, which FuzzHandler refuses) when
// the view the server decoded differs from decoding Request.Object alone, or when there is no
// view although the object decodes alone.
type viewChecker struct{}

var fuzzViewDecoder = &viewDecoder{}

func (viewChecker) Name() string                 { return "view-checker" }
func (viewChecker) ObjectDecoder() ObjectDecoder { return fuzzViewDecoder }

func (viewChecker) Admit(_ context.Context, req *Request, _ *Response) error {
	var alone testView
	errAlone := jsonv2.Unmarshal(req.Object, &alone)
	v, ok := req.Decoded(fuzzViewDecoder)
	switch {
	case ok && (errAlone != nil || !reflect.DeepEqual(v, &alone)):
		return fmt.Errorf("view %+v, the object alone %+v (%v)", v, alone, errAlone)
	case !ok && errAlone == nil && len(req.Object) > 0:
		return fmt.Errorf("no view, but the object decodes alone: %s", req.Object)
	}
	return nil
}

const fuzzSelf = "system:serviceaccount:credential-webhook:credential-webhook"

// FuzzHandler posts arbitrary bodies, content types and ?timeout= values to the whole handler.
// Every answer is either a 4xx or a well-formed AdmissionReview echoing the request's uid; never
// a 5xx (that would be a panic or an internal error on input alone). When the object looks like
// what an apiserver sends, the patch applies with the apiserver's own JSON-patch library, and the
// patched object carries no annotation of ours that a requester other than this server added or
// changed: the property the sweeper's trust rests on.
func FuzzHandler(f *testing.F) {
	for _, b := range fixtureBodies(f) {
		f.Add(b, "application/json", "10s")
	}
	f.Add([]byte(`{}`), "text/plain", "")
	f.Add([]byte(`{}`), "application/json; charset=utf-8", "-1s")
	f.Add([]byte(`{}`), "", "1h")
	h := NewHandler(Options{Routes: fuzzRoutes(), MaxBodyBytes: fuzzMaxBody})
	f.Fuzz(func(t *testing.T, body []byte, contentType, timeout string) {
		if len(body) > maxFuzzBody || len(contentType) > 256 || len(timeout) > 64 {
			return
		}
		for _, path := range []string{"/mutate/serviceaccounts", "/mutate/jobs", "/mutate/viewed"} {
			rec := httptest.NewRecorder()
			checkAllocs(t, len(body), 64, "the handler", func() {
				req := httptest.NewRequest(http.MethodPost, path+"?"+url.Values{"timeout": {timeout}}.Encode(), bytes.NewReader(body))
				req.Header.Set("Content-Type", contentType)
				h.ServeHTTP(rec, req)
			})
			checkAnswer(t, body, rec)
		}
	})
}

func checkAnswer(t *testing.T, body []byte, rec *httptest.ResponseRecorder) {
	t.Helper()
	switch {
	case rec.Code >= 400 && rec.Code < 500:
		if rec.Body.Len() == 0 {
			t.Fatalf("HTTP %d without a message", rec.Code)
		}
		return
	case rec.Code != http.StatusOK:
		t.Fatalf("HTTP %d on input alone: %s", rec.Code, rec.Body.Bytes())
	}
	var out struct {
		APIVersion, Kind string
		Response         struct {
			UID       string
			Allowed   bool
			Patch     []byte
			PatchType *string
			Warnings  []string
			Status    *struct {
				Code    int32
				Message string
			}
		}
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
		t.Fatalf("200 answer is not JSON: %v: %s", err, rec.Body.Bytes())
	}
	in, err := decodeReview(body, nil)
	if err != nil {
		t.Fatalf("200 for a body decodeReview refuses (%v)", err)
	}
	if out.APIVersion != reviewAPIVersion || out.Kind != reviewKind || out.Response.UID != string(in.UID) {
		t.Fatalf("answer lacks apiVersion, kind or the uid %q: %s", in.UID, rec.Body.Bytes())
	}
	if !out.Response.Allowed {
		if out.Response.Status == nil || out.Response.Status.Code < 400 || out.Response.Status.Code >= 500 {
			t.Fatalf("denial without a 4xx status: %s", rec.Body.Bytes())
		}
		return
	}
	if len(out.Response.Patch) == 0 {
		return
	}
	if out.Response.PatchType == nil || *out.Response.PatchType != "JSONPatch" {
		t.Fatalf("patch without patchType JSONPatch: %s", rec.Body.Bytes())
	}
	checkPatch(t, in, out.Response.Patch)
}

// checkPatch applies the patch the way the apiserver does, for objects an apiserver could send:
// a metadata object whose annotations read the same whatever the decoder (encoding/json, which
// ObjectAnnotations uses, matches field names case-insensitively; the apiserver never sends
// "Metadata", so such inputs prove nothing about real traffic).
func checkPatch(t *testing.T, in *requestIn, patch []byte) {
	t.Helper()
	cur, ok := exactAnnotations(in.Object)
	if !ok {
		return
	}
	if got, _ := ObjectAnnotations(in.Object); !maps.Equal(got, cur) {
		return
	}
	p, err := jsonpatch.DecodePatch(patch)
	if err != nil {
		t.Fatalf("patch does not decode: %v: %s", err, patch)
	}
	patched, err := p.Apply(in.Object)
	if err != nil {
		t.Fatalf("patch does not apply to the object: %v\npatch  %s\nobject %s", err, patch, in.Object)
	}
	after, ok := exactAnnotations(patched)
	if !ok {
		t.Fatalf("patched object lost its metadata: %s", patched)
	}
	if in.UserInfo.Username == fuzzSelf || (in.Operation != "CREATE" && in.Operation != "UPDATE") {
		return
	}
	var old map[string]string
	if in.Operation == "UPDATE" && len(in.OldObject) > 0 {
		old, ok = exactAnnotations(in.OldObject)
		if seen, _ := ObjectAnnotations(in.OldObject); !ok || !maps.Equal(seen, old) {
			return // an old object no apiserver sends: the guard's view of it is not the real one
		}
	}
	for k, v := range after {
		if !strings.HasPrefix(k, annotations.Prefix) {
			continue
		}
		if prev, had := old[k]; !had || prev != v {
			t.Fatalf("requester %q kept our annotation %s=%q (old: %q, %v)\nobject %s\npatch  %s",
				in.UserInfo.Username, k, v, prev, had, in.Object, patch)
		}
	}
}

// exactAnnotations reads metadata.annotations with exact (case-sensitive) member names, as the
// apiserver does; ok is false when the object has no metadata object or annotations that are not
// a string map.
func exactAnnotations(raw []byte) (map[string]string, bool) {
	var obj map[string]json.RawMessage
	if json.Unmarshal(raw, &obj) != nil {
		return nil, false
	}
	var meta map[string]json.RawMessage
	if json.Unmarshal(obj["metadata"], &meta) != nil || meta == nil {
		return nil, false
	}
	raw, ok := meta["annotations"]
	if !ok {
		return nil, true
	}
	var ann map[string]string
	if json.Unmarshal(raw, &ann) != nil {
		return nil, false
	}
	return ann, true
}
