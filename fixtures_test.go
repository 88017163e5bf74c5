package main

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"go.klusters.dev/credential-webhook/admission"
	"go.klusters.dev/credential-webhook/testenv/arm"
	"go.klusters.dev/credential-webhook/testenv/moto"
)

// fixtureProviderConfig is the configuration the fixtures assume; scripts/lib.sh passes the same
// flags to the real binary.
func fixtureProviderConfig() providerConfig {
	return providerConfig{
		namespaces:        "*",
		requesters:        "system:serviceaccount:kubestash:kubestash-kubestash-operator",
		awsSeeds:          "arn:aws:iam::123456789012:role/kubestash-*",
		azureScopes:       "/subscriptions/" + arm.DemoSubscriptionID,
		roleCreationLimit: 100,
	}
}

// fixtureExpect mirrors admission/testdata/*/expected.json (documented in its README).
type fixtureExpect struct {
	Route       string          `json:"route"`
	ContentType string          `json:"contentType"`
	Code        int             `json:"code"`
	Allowed     *bool           `json:"allowed"`
	Patch       json.RawMessage `json:"patch"`
	Warnings    *[]string       `json:"warnings"`
	Message     string          `json:"message"`
}

const testSelf = "system:serviceaccount:credential-webhook:credential-webhook"

// TestFixtures posts every admission/testdata case to the handler serve builds (local mode) and
// compares the answer with the expected one beside it.
func TestFixtures(t *testing.T) {
	// The AWS fixtures run against moto: derived role ARNs are deterministic there.
	srv := moto.Start(t)
	srv.SetEnv(t)
	cfg, err := srv.AWSConfig(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := moto.CreateSeedRole(context.Background(), cfg, "kubestash-selfhost", "/", "https://oidc.demo.example/id/DEMO"); err != nil {
		t.Fatal(err)
	}
	// The Azure fixtures run against the local ARM server (the SDK's own armmsi fake behind TLS).
	az := arm.Start(t)
	az.PutIdentity(arm.Demo())
	az.SetEnv(t)
	p := fixtureProviderConfig()
	p.azureARMEndpoint = az.URL
	w, err := p.build(context.Background(), deps{log: slog.New(slog.DiscardHandler), reg: prometheus.NewRegistry(), self: map[string]bool{testSelf: true}})
	if err != nil {
		t.Fatal(err)
	}
	h := admission.NewHandler(admission.Options{Routes: w.routes})
	dirs, _ := filepath.Glob("admission/testdata/*/expected.json")
	if len(dirs) == 0 {
		t.Fatal("no fixtures found")
	}
	for _, exp := range dirs {
		dir := filepath.Dir(exp)
		t.Run(filepath.Base(dir), func(t *testing.T) {
			var want fixtureExpect
			mustReadJSON(t, exp, &want)
			body, err := os.ReadFile(filepath.Join(dir, "request.json"))
			if err != nil {
				t.Fatal(err)
			}
			ct := want.ContentType
			if ct == "" {
				ct = "application/json"
			}
			req := httptest.NewRequest(http.MethodPost, want.Route+"?timeout=10s", bytes.NewReader(body))
			req.Header.Set("Content-Type", ct)
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			checkFixture(t, want, body, rec.Code, rec.Body.Bytes())
		})
	}
}

func checkFixture(t *testing.T, want fixtureExpect, reqBody []byte, code int, body []byte) {
	t.Helper()
	if code != want.Code {
		t.Fatalf("HTTP %d, want %d: %s", code, want.Code, body)
	}
	if code != http.StatusOK {
		if !strings.Contains(string(body), want.Message) {
			t.Fatalf("body %q does not contain %q", body, want.Message)
		}
		return
	}
	var in struct {
		Request struct{ UID string } `json:"request"`
	}
	_ = json.Unmarshal(reqBody, &in)
	var got struct {
		APIVersion, Kind string
		Response         struct {
			UID       string
			Allowed   bool
			Patch     []byte
			PatchType string
			Warnings  []string
			Status    struct{ Message string }
		}
	}
	if err := json.Unmarshal(body, &got); err != nil {
		t.Fatalf("response is not JSON: %v: %s", err, body)
	}
	if got.APIVersion != "admission.k8s.io/v1" || got.Kind != "AdmissionReview" || got.Response.UID != in.Request.UID {
		t.Fatalf("response lacks apiVersion/kind/uid: %s", body)
	}
	if want.Allowed != nil && got.Response.Allowed != *want.Allowed {
		t.Fatalf("allowed = %v: %s", got.Response.Allowed, body)
	}
	if want.Message != "" && !strings.Contains(got.Response.Status.Message, want.Message) {
		t.Fatalf("message %q does not contain %q", got.Response.Status.Message, want.Message)
	}
	var wantPatch, gotPatch any
	if len(want.Patch) > 0 {
		_ = json.Unmarshal(want.Patch, &wantPatch)
	}
	if len(got.Response.Patch) > 0 {
		if got.Response.PatchType != "JSONPatch" {
			t.Errorf("patchType %q", got.Response.PatchType)
		}
		_ = json.Unmarshal(got.Response.Patch, &gotPatch)
	}
	if !reflect.DeepEqual(gotPatch, wantPatch) {
		gp, _ := json.Marshal(gotPatch)
		t.Fatalf("patch:\n got  %s\n want %s", gp, want.Patch)
	}
	if want.Warnings != nil && !(len(*want.Warnings) == 0 && len(got.Response.Warnings) == 0) && !reflect.DeepEqual(got.Response.Warnings, *want.Warnings) {
		t.Fatalf("warnings:\n got  %q\n want %q", got.Response.Warnings, *want.Warnings)
	}
}

func mustReadJSON(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}
