package admission

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

type pluginFunc func(ctx context.Context, req *Request, resp *Response) error

func (pluginFunc) Name() string { return "test" }
func (f pluginFunc) Admit(ctx context.Context, req *Request, resp *Response) error {
	return f(ctx, req, resp)
}

func review(uid, group, kind string, obj string) string {
	return `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"` + uid +
		`","kind":{"group":"` + group + `","version":"v1","kind":"` + kind + `"},"operation":"CREATE","namespace":"demo","name":"x",` +
		`"userInfo":{"username":"alice","groups":["devs"]},"object":` + obj + `}}`
}

func newTestServer(t *testing.T, plugins ...Plugin) (*httptest.Server, *Metrics) {
	t.Helper()
	m := NewMetrics(prometheus.NewRegistry())
	h := NewHandler(Options{Metrics: m, Routes: []Route{{Path: "/mutate/pods", Name: "pods", Kind: "Pod", Plugins: plugins}}})
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv, m
}

func post(t *testing.T, url, contentType, body string) (int, map[string]any, string) {
	t.Helper()
	res, err := http.Post(url, contentType, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var buf bytes.Buffer
	_, _ = buf.ReadFrom(res.Body)
	var out map[string]any
	_ = json.Unmarshal(buf.Bytes(), &out)
	return res.StatusCode, out, buf.String()
}

// The response must carry apiVersion, kind and the request's uid: apiservers reject anything
// else (the EKS pod-identity webhook omitted them for years, breaking non-EKS clusters).
func TestResponseEchoesAPIVersionKindAndUID(t *testing.T) {
	srv, _ := newTestServer(t)
	for _, kind := range []string{"Pod", "ConfigMap"} { // served and not served
		code, out, raw := post(t, srv.URL+"/mutate/pods", "application/json", review("uid-"+kind, "", kind, `{"metadata":{}}`))
		if code != 200 {
			t.Fatalf("%s: code %d: %s", kind, code, raw)
		}
		if out["apiVersion"] != "admission.k8s.io/v1" || out["kind"] != "AdmissionReview" {
			t.Errorf("%s: apiVersion/kind = %v/%v", kind, out["apiVersion"], out["kind"])
		}
		resp, _ := out["response"].(map[string]any)
		if resp["uid"] != "uid-"+kind || resp["allowed"] != true {
			t.Errorf("%s: response = %v", kind, resp)
		}
	}
}

// An answer carries its length: a patched one larger than net/http's 2 KB buffer would
// otherwise go out chunked, framing the apiserver has to parse on every Pod review.
func TestAnswerHasContentLength(t *testing.T) {
	big := pluginFunc(func(_ context.Context, _ *Request, resp *Response) error {
		resp.Warnings = append(resp.Warnings, strings.Repeat("w", 4096)) // well past 2 KB
		return nil
	})
	srv, _ := newTestServer(t, big)
	for _, kind := range []string{"Pod", "ConfigMap"} { // a large answer, a small one
		res, err := http.Post(srv.URL+"/mutate/pods", "application/json", strings.NewReader(review("uid-1", "", kind, `{"metadata":{}}`)))
		if err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		_, _ = buf.ReadFrom(res.Body)
		res.Body.Close()
		if res.StatusCode != 200 || len(res.TransferEncoding) != 0 || res.ContentLength != int64(buf.Len()) {
			t.Errorf("%s: status %d, transfer encoding %v, Content-Length %d for a body of %d bytes; want 200, none, the body's length",
				kind, res.StatusCode, res.TransferEncoding, res.ContentLength, buf.Len())
		}
		if kind == "Pod" && buf.Len() < 4096 {
			t.Errorf("the Pod answer is %d bytes: the test wants one past 4 KB", buf.Len())
		}
	}
}

func TestBadRequests(t *testing.T) {
	srv, m := newTestServer(t)
	big := review("u", "", "Pod", `{"metadata":{"annotations":{"a":"`+strings.Repeat("x", DefaultMaxBodyBytes)+`"}}}`)
	cases := []struct {
		name, ct, body string
		code           int
		msg            string
	}{
		{"oversized", "application/json", big, 413, "larger than"},
		{"not json content type", "text/plain", review("u", "", "Pod", `{}`), 400, "not application/json"},
		{"no content type", "", review("u", "", "Pod", `{}`), 400, "missing content type"},
		{"malformed json", "application/json", `{"apiVersion":`, 400, "malformed AdmissionReview JSON"},
		{"wrong kind", "application/json", `{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"u"}}`, 400, "expected apiVersion admission.k8s.io/v1"},
		{"no request", "application/json", `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}`, 400, "no request"},
		{"no uid", "application/json", `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{}}`, 400, "no uid"},
		{"charset param ok", "application/json; charset=utf-8", review("u", "", "Pod", `{}`), 200, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodPost, srv.URL+"/mutate/pods", strings.NewReader(tc.body))
			if tc.ct != "" {
				req.Header.Set("Content-Type", tc.ct)
			}
			res, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			var buf bytes.Buffer
			_, _ = buf.ReadFrom(res.Body)
			res.Body.Close()
			if res.StatusCode != tc.code || !strings.Contains(buf.String(), tc.msg) {
				t.Fatalf("got %d %q, want %d containing %q", res.StatusCode, buf.String(), tc.code, tc.msg)
			}
		})
	}
	if got := testutil.ToFloat64(m.Requests.WithLabelValues("pods", "", "", "error", "413")); got != 1 {
		t.Errorf("413 counted %v times", got)
	}
}

func TestPanicAnswers500WithUIDAndKeepsServing(t *testing.T) {
	calls := 0
	srv, m := newTestServer(t, pluginFunc(func(context.Context, *Request, *Response) error {
		calls++
		if calls == 1 {
			panic("boom")
		}
		return nil
	}))
	code, out, raw := post(t, srv.URL+"/mutate/pods", "application/json", review("uid-panic", "", "Pod", `{}`))
	if code != 500 {
		t.Fatalf("code %d: %s", code, raw)
	}
	resp := out["response"].(map[string]any)
	if resp["uid"] != "uid-panic" || resp["allowed"] != false || out["kind"] != "AdmissionReview" {
		t.Fatalf("panic response: %s", raw)
	}
	if strings.Contains(raw, "boom") {
		t.Errorf("panic value leaked to the client: %s", raw)
	}
	code, out, _ = post(t, srv.URL+"/mutate/pods", "application/json", review("uid-next", "", "Pod", `{}`))
	if code != 200 || out["response"].(map[string]any)["uid"] != "uid-next" {
		t.Fatalf("server did not keep serving: %d %v", code, out)
	}
	if got := testutil.ToFloat64(m.Panics.WithLabelValues("pods")); got != 1 {
		t.Errorf("panics metric = %v", got)
	}
}

func TestDenyAndInternalError(t *testing.T) {
	srv, _ := newTestServer(t, pluginFunc(func(_ context.Context, req *Request, resp *Response) error {
		resp.Warn("careful")
		if req.Name == "x" {
			return Deny(403, "no %s", "way")
		}
		return errors.New("unexpected")
	}))
	code, out, raw := post(t, srv.URL+"/mutate/pods", "application/json", review("d1", "", "Pod", `{}`))
	resp := out["response"].(map[string]any)
	st, _ := resp["status"].(map[string]any)
	if code != 200 || resp["allowed"] != false || st["code"] != float64(403) || st["message"] != "no way" {
		t.Fatalf("deny: %d %s", code, raw)
	}
	if w, _ := resp["warnings"].([]any); len(w) != 1 || w[0] != "careful" {
		t.Errorf("warnings = %v", resp["warnings"])
	}
}

func TestPatchAndRequestPlumbing(t *testing.T) {
	var seen *Request
	srv, m := newTestServer(t, pluginFunc(func(ctx context.Context, req *Request, resp *Response) error {
		seen = req
		dl, ok := ctx.Deadline()
		if !ok || !dl.Equal(req.Deadline) {
			t.Errorf("context deadline %v/%v, request deadline %v", dl, ok, req.Deadline)
		}
		resp.Patch.SetMapEntry("/metadata/annotations", nil, "a/b", "1")
		return nil
	}))
	body := strings.Replace(review("p1", "", "Pod", `{"metadata":{},"future":{"x":1}}`), `"operation"`, `"dryRun":true,"operation"`, 1)
	start := time.Now()
	code, out, raw := post(t, srv.URL+"/mutate/pods?timeout=5s", "application/json", body)
	if code != 200 {
		t.Fatal(raw)
	}
	resp := out["response"].(map[string]any)
	if resp["patchType"] != "JSONPatch" {
		t.Fatalf("patchType: %s", raw)
	}
	var ops []map[string]any
	patch, _ := resp["patch"].(string) // []byte is base64 in JSON
	if err := json.Unmarshal(mustB64(t, patch), &ops); err != nil || len(ops) != 1 || ops[0]["path"] != "/metadata/annotations" {
		t.Fatalf("patch %s: %v", patch, err)
	}
	if !seen.DryRun || seen.UserInfo.Username != "alice" || seen.UserInfo.Groups[0] != "devs" || seen.Operation != "CREATE" || seen.Namespace != "demo" {
		t.Errorf("request plumbing: %+v", seen)
	}
	if !strings.Contains(string(seen.Object), `"future":{"x":1}`) {
		t.Errorf("raw object not kept: %s", seen.Object)
	}
	if b := seen.Deadline.Sub(start); b > 5*time.Second || b < 3*time.Second {
		t.Errorf("deadline %v after start, want 5s less a margin", b)
	}
	if got := testutil.ToFloat64(m.PatchOps.WithLabelValues("pods")); got != 1 {
		t.Errorf("patch ops metric = %v", got)
	}
}

func TestBudget(t *testing.T) {
	for _, tc := range []struct {
		q    string
		want time.Duration
	}{
		{"", 8 * time.Second},
		{"timeout=10s", 8 * time.Second},
		{"timeout=30s", 28 * time.Second},
		{"timeout=1s", 800 * time.Millisecond},
		{"timeout=200ms", 100 * time.Millisecond},
		{"timeout=bogus", 8 * time.Second},
		{"timeout=-3s", 8 * time.Second},
		{"timeout=1h", 8 * time.Second},
	} {
		q, _ := url.ParseQuery(tc.q)
		if got := budget(q); got != tc.want {
			t.Errorf("budget(%q) = %v, want %v", tc.q, got, tc.want)
		}
	}
}

func TestHealthAndReady(t *testing.T) {
	var readyErr error
	h := NewHandler(Options{Ready: func(context.Context) error { return readyErr }})
	for _, tc := range []struct {
		path string
		err  error
		code int
	}{{"/healthz", nil, 200}, {"/readyz", nil, 200}, {"/readyz", errors.New("no cert"), 503}} {
		readyErr = tc.err
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, tc.path, nil))
		if rec.Code != tc.code {
			t.Errorf("%s with %v: %d", tc.path, tc.err, rec.Code)
		}
	}
}

func TestMaxObjectBytesRefusesBeforePlugins(t *testing.T) {
	called := false
	h := NewHandler(Options{Routes: []Route{{Path: "/mutate/serviceaccounts", Name: "sa", Kind: "ServiceAccount", MaxObjectBytes: 1024,
		Plugins: []Plugin{pluginFunc(func(context.Context, *Request, *Response) error { called = true; return nil })}}}})
	srv := httptest.NewServer(h)
	defer srv.Close()
	big := `{"metadata":{"annotations":{"a":"` + strings.Repeat("x", 2000) + `"}}}`
	code, out, raw := post(t, srv.URL+"/mutate/serviceaccounts", "application/json", review("big", "", "ServiceAccount", big))
	resp := out["response"].(map[string]any)
	st, _ := resp["status"].(map[string]any)
	if code != 200 || resp["allowed"] != false || st["code"] != float64(413) || called {
		t.Fatalf("oversized object: code %d, plugin called %v: %s", code, called, raw)
	}
	called = false
	if _, out, _ = post(t, srv.URL+"/mutate/serviceaccounts", "application/json", review("small", "", "ServiceAccount", `{"metadata":{}}`)); out["response"].(map[string]any)["allowed"] != true || !called {
		t.Fatal("small object refused or plugins skipped")
	}
}
