package azure

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sfake "k8s.io/client-go/kubernetes/fake"

	"go.klusters.dev/credential-webhook/admission"
	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/jobs"
	"go.klusters.dev/credential-webhook/patches"
)

var _ admission.ObjectReader = (*JobPlugin)(nil)

// TestJobPluginReadsTheRoutesView: through the server, where the Job route reads one jobs.View
// for all its plugins while it reads the review, JobPlugin answers what it answers reading the
// raw object itself (patch, warnings, denial), whichever plugin of the route names the decoder.
func TestJobPluginReadsTheRoutesView(t *testing.T) {
	cs := k8sfake.NewClientset(
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: saNS, Name: saName, Annotations: azAnn(testSub, testRG, testMI)}},
	)
	kubestash := map[string]any{"labels": map[string]string{"app.kubernetes.io/component": "kubestash-backup"}}
	objects := []string{
		jobObject(azAnn(testSub, testRG, testMI), kubestash, "plain"),
		jobObject(nil, kubestash, saName),
		jobObject(nil, kubestash, ""),
		jobObject(azAnn(testSub, testRG, testMI), nil, ""),
		jobObject(azAnn(testSub, testRG, testMI), map[string]any{"labels": map[string]string{annotations.AzureUseLabel: "false"}, "annotations": map[string]string{"x": "y"}}, ""),
		jobObject(nil, kubestash, "plain"),
		`{"metadata":{"annotations":{"klusters.dev/azure-mi-name":"mi"}},"spec":{"template":{"metadata":null,"spec":{}}}}`,
		`{"spec":{"template":{"metadata":{"labels":{"azure.workload.identity/use":1}}}}}`,
		`{"spec":{"suspend":"not a bool"},"metadata":{"annotations":{"klusters.dev/azure-mi-name":"mi"}}}`,
		`[]`, `null`,
	}
	type answer struct {
		Allowed  bool
		Patch    []map[string]any
		Warnings []string
		Code     int32
	}
	for _, withJobs := range []bool{false, true} {
		plugin := &JobPlugin{ServiceAccounts: saGetter{cs: cs}}
		plugins := []admission.Plugin{plugin}
		if withJobs {
			// The jobs plugin first: its decoder, the same view.
			plugins = []admission.Plugin{jobs.NewPlugin(saGetter{cs: cs}, nil), plugin}
		}
		h := admission.NewHandler(admission.Options{Routes: []admission.Route{{Path: "/mutate/jobs", Name: "jobs", Group: "batch", Kind: "Job", Plugins: plugins}}})
		for _, obj := range objects {
			body := `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"group":"batch","version":"v1","kind":"Job"},` +
				`"namespace":"` + saNS + `","operation":"CREATE","object":` + obj + `}}`
			hr := httptest.NewRequest(http.MethodPost, "/mutate/jobs", strings.NewReader(body))
			hr.Header.Set("Content-Type", "application/json")
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, hr)
			var out struct {
				Response struct {
					Allowed  bool
					Patch    []byte
					Warnings []string
					Status   *struct{ Code int32 }
				}
			}
			if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil || rec.Code != http.StatusOK {
				t.Fatalf("%s: HTTP %d %v: %s", obj, rec.Code, err, rec.Body.Bytes())
			}
			got := answer{Allowed: out.Response.Allowed, Warnings: out.Response.Warnings}
			if out.Response.Status != nil {
				got.Code = out.Response.Status.Code
			}
			if len(out.Response.Patch) > 0 {
				if err := json.Unmarshal(out.Response.Patch, &got.Patch); err != nil {
					t.Fatal(err)
				}
			}

			// The same plugins on the raw object, as the server ran them before.
			req := &admission.Request{Operation: admissionv1.Create, Namespace: saNS, Object: []byte(obj), Log: slog.New(slog.DiscardHandler)}
			resp := &admission.Response{Patch: patches.NewBuilder()}
			want := answer{Allowed: true}
			for _, p := range plugins {
				if err := p.Admit(context.Background(), req, resp); err != nil {
					d, ok := admission.IsDenied(err)
					if !ok {
						t.Fatal(err)
					}
					want = answer{Code: d.Code}
					break
				}
			}
			if want.Allowed {
				want.Warnings = resp.Warnings
				if ops := resp.Patch.Ops(); len(ops) > 0 {
					b, _ := json.Marshal(ops)
					if err := json.Unmarshal(b, &want.Patch); err != nil {
						t.Fatal(err)
					}
				}
			} else {
				got.Warnings = nil // a denial's warnings are the plugins' so far; compared above through the code
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("with jobs plugin %v, %s:\n through the server %+v\n on the raw object  %+v", withJobs, obj, got, want)
			}
		}
	}
}
