package pods

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"

	"github.com/go-json-experiment/json/jsontext"

	"go.klusters.dev/credential-webhook/admission"
	"go.klusters.dev/credential-webhook/patches"
)

// checkDecodeFromMatches: the Pod DecodeObject reads from the review's decoder is the Pod
// decodePod reads from the raw object, and one fails when the other does.
func checkDecodeFromMatches(t *testing.T, raw []byte) {
	t.Helper()
	want, wantErr := decodePod(raw)
	dec := jsontext.NewDecoder(bytes.NewReader(raw))
	got, err := decodePodFrom(dec)
	if err == nil {
		// A value followed by more is not one object: decodePod refuses it too.
		if _, err2 := dec.ReadToken(); err2 != io.EOF {
			err = fmt.Errorf("more after the object (%v)", err2)
		}
	}
	if (err != nil) != (wantErr != nil) {
		t.Fatalf("decodePodFrom(%q): %v; decodePod: %v", raw, err, wantErr)
	}
	if err == nil && !reflect.DeepEqual(got, want) {
		t.Fatalf("decodePodFrom(%q) = %+v, decodePod = %+v", raw, got, want)
	}
}

// tokenCases exercise the token decoder's mapping of JSON onto the skeleton: nulls, empty and
// wrong-kind values at every field it reads, escaped and differently cased names, members it
// skips, and numbers the integer decoder refuses.
var tokenCases = []string{
	`null`, `{}`, `[]`, `"x"`, `1`, `true`, `{"metadata":null,"spec":null}`, `{"metadata":{},"spec":{}}`,
	`{"metadata":[],"spec":{}}`, `{"metadata":{"namespace":null,"annotations":null,"labels":null}}`,
	`{"metadata":{"namespace":1}}`, `{"metadata":{"namespace":"ns","annotations":{},"labels":{"a":null}}}`,
	`{"metadata":{"annotations":{"a":"1","b":true}}}`, `{"metadata":{"annotations":[]}}`, `{"metadata":{"labels":"x"}}`,
	`{"m\u0065tadata":{"n\u0061mespace":"n\u00e9s\"\\"}}`, `{"Metadata":{"Namespace":"x"}}`, `{"METADATA":{}}`,
	`{"spec":{"serviceAccountName":null,"nodeSelector":null,"os":null,"securityContext":null,"volumes":null,"initContainers":null,"containers":null}}`,
	`{"spec":{"serviceAccountName":"sa","nodeSelector":{},"os":{},"securityContext":{},"volumes":[],"initContainers":[],"containers":[]}}`,
	`{"spec":{"os":{"name":null}}}`, `{"spec":{"os":{"name":"windows","x":[1,{"y":2}]}}}`, `{"spec":{"os":"linux"}}`, `{"spec":{"os":{"name":1}}}`,
	`{"spec":{"securityContext":{"runAsUser":null}}}`, `{"spec":{"securityContext":{"runAsUser":0,"runAsGroup":5}}}`,
	`{"spec":{"securityContext":{"runAsUser":-1}}}`, `{"spec":{"securityContext":{"runAsUser":1e3}}}`, `{"spec":{"securityContext":{"runAsUser":1.0}}}`,
	`{"spec":{"securityContext":{"runAsUser":9223372036854775808}}}`, `{"spec":{"securityContext":{"runAsUser":"1"}}}`,
	`{"spec":{"securityContext":{"runAsUser":-0}}}`, `{"spec":{"securityContext":[]}}`,
	`{"spec":{"volumes":[null,{},{"name":null},{"name":"v","projected":{"sources":[]}}]}}`, `{"spec":{"volumes":[1]}}`, `{"spec":{"volumes":{}}}`,
	`{"spec":{"volumes":[{"name":"v"},"x"]}}`, `{"spec":{"containers":[null,{}]}}`, `{"spec":{"containers":"x"}}`, `{"spec":{"containers":[[]]}}`,
	`{"spec":{"containers":[{"name":"c","env":null,"volumeMounts":null,"securityContext":null}]}}`,
	`{"spec":{"containers":[{"name":"c","env":[],"volumeMounts":[],"securityContext":{}}]}}`,
	`{"spec":{"containers":[{"name":"c","env":[null,{},{"name":"A","value":"1","valueFrom":{"x":1}}],"volumeMounts":[null,{"name":"m","mountPath":"/p","readOnly":true}]}]}}`,
	`{"spec":{"containers":[{"env":[1]}]}}`, `{"spec":{"containers":[{"env":{}}]}}`, `{"spec":{"containers":[{"volumeMounts":[{"mountPath":1}]}]}}`,
	`{"spec":{"containers":[{"securityContext":{"runAsUser":"x"}}]}}`, `{"spec":{"containers":[{"securityContext":{"runAsUser":7}}]}}`,
	`{"spec":{"initContainers":[{"name":"i"}],"containers":[{"name":"c"}]},"status":{"phase":"Pending"}}`,
	`{"spec":{"containers":[{"name":"c"}]}} `, `{"spec":{"containers":[{"name":"c"}]}`, `{"spec":{"containers":[{"name":"c"},]}}`,
	`{"spec":{"containers":[{"name":"a","name":"b"}]}}`, `{"spec":{"serviceAccountName":"\ud800"}}`, `{"spec":{"serviceAccountName":"\ud83d\ude00"}}`,
	`{"spec":{"nodeSelector":{"a":"1","a":"2"}}}`, `{"spec":{"nodeSelector":{"a":"1","a":"2"}}}`,
}

func TestDecodePodFromMatchesDecodePod(t *testing.T) {
	for _, c := range tokenCases {
		checkDecodeFromMatches(t, []byte(c))
	}
	for _, c := range decodeCases {
		checkDecodeFromMatches(t, []byte(c))
	}
	for _, dir := range fixtureDirs(t) {
		checkDecodeFromMatches(t, loadFixture(t, dir).rawPod)
	}
}

func FuzzDecodePodFrom(f *testing.F) {
	for _, c := range tokenCases {
		f.Add([]byte(c))
	}
	for _, c := range decodeCases {
		f.Add([]byte(c))
	}
	for _, dir := range fixtureDirs(f) {
		f.Add(loadFixture(f, dir).rawPod)
	}
	f.Fuzz(func(t *testing.T, raw []byte) { checkDecodeFromMatches(t, raw) })
}

// TestHandlerViewMatchesRawDecode: through the server, where the Pod is decoded while the review
// is read (admission.ObjectDecoder), every fixture gets the patch and warnings Admit gives on
// the raw object alone.
func TestHandlerViewMatchesRawDecode(t *testing.T) {
	patched := 0
	for _, dir := range fixtureDirs(t) {
		f := loadFixture(t, dir)
		p := NewPlugin(saMap{f.sa.Namespace + "/" + f.sa.Name: f.sa}, f.cfg)
		h := admission.NewHandler(admission.Options{Routes: []admission.Route{{Path: "/mutate/pods", Name: "pods", Kind: "Pod", Plugins: []admission.Plugin{p}}}})
		body := `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"group":"","version":"v1","kind":"Pod"},` +
			`"namespace":"` + f.sa.Namespace + `","operation":"CREATE","object":` + string(f.rawPod) + `}}`
		req := httptest.NewRequest(http.MethodPost, "/mutate/pods", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		var out struct {
			Response struct {
				Allowed  bool
				Patch    []byte
				Warnings []string
			}
		}
		if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil || rec.Code != http.StatusOK {
			t.Fatalf("%s: HTTP %d %v: %s", dir, rec.Code, err, rec.Body.Bytes())
		}

		resp := &admission.Response{Patch: patches.NewBuilder()}
		if err := p.Admit(context.Background(), &admission.Request{Namespace: f.sa.Namespace, Operation: "CREATE", Object: f.rawPod}, resp); err != nil {
			t.Fatalf("%s: Admit: %v", dir, err)
		}
		var got, want []map[string]any
		if len(out.Response.Patch) > 0 {
			if err := json.Unmarshal(out.Response.Patch, &got); err != nil {
				t.Fatal(err)
			}
		}
		if ops := resp.Patch.Ops(); len(ops) > 0 {
			b, err := json.Marshal(ops)
			if err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(b, &want); err != nil {
				t.Fatal(err)
			}
		}
		if !out.Response.Allowed || !reflect.DeepEqual(got, want) || !reflect.DeepEqual(out.Response.Warnings, resp.Warnings) {
			t.Errorf("%s: through the handler: patch %s warnings %q; Admit on the raw object: %v %q", dir, out.Response.Patch, out.Response.Warnings, want, resp.Warnings)
		}
		if len(want) > 0 {
			patched++
		}
	}
	if patched < 3 {
		t.Errorf("only %d fixtures get a patch: the comparison proves little", patched)
	}
}

var _ admission.ObjectReader = (*Plugin)(nil)
