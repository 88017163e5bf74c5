package admission

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// Issue 16: a tenant must not be able to exhaust the server's memory or its metric series.

// countSeries gathers reg and counts the series of our metric families (a histogram's label set
// counts once).
func countSeries(t *testing.T, reg *prometheus.Registry) (total int, byFamily map[string]int) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	byFamily = map[string]int{}
	for _, mf := range mfs {
		if strings.HasPrefix(mf.GetName(), "credential_webhook_") {
			byFamily[mf.GetName()] = len(mf.GetMetric())
			total += len(mf.GetMetric())
		}
	}
	return total, byFamily
}

func randomString(r *rand.Rand, n int) string {
	const alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./:"
	b := make([]byte, n)
	for i := range b {
		b[i] = alphabet[r.IntN(len(alphabet))]
	}
	return string(b)
}

// 10,000 forged reviews with random kinds, groups, operations and huge strings leave the number
// of series bounded by the fixed label sets: routes x kinds x operations x decisions x codes.
func TestMetricSeriesBoundedUnderForgedReviews(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	routes := []Route{
		{Path: "/mutate/pods", Name: "pods", Kind: "Pod"},
		{Path: "/mutate/jobs", Name: "jobs", Group: "batch", Kind: "Job", MaxObjectBytes: 512 << 10},
		{Path: "/mutate/serviceaccounts", Name: "serviceaccounts", Kind: "ServiceAccount", MaxObjectBytes: 512 << 10},
	}
	h := NewHandler(Options{Metrics: m, Routes: routes, MaxInFlight: -1})
	r := rand.New(rand.NewPCG(16, 16))
	pick := func(known []string) string {
		if r.IntN(3) == 0 {
			return known[r.IntN(len(known))]
		}
		n := 1 + r.IntN(64)
		if r.IntN(50) == 0 {
			n = 64<<10 + r.IntN(64<<10) // huge values now and then
		}
		return randomString(r, n)
	}
	const n = 10000
	for i := range n {
		rt := routes[r.IntN(len(routes))]
		kind := pick([]string{"Pod", "Job", "ServiceAccount", "ConfigMap"})
		op := pick([]string{"CREATE", "UPDATE", "DELETE", "CONNECT"})
		body := `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u-` + fmt.Sprint(i) +
			`","kind":{"group":"` + pick([]string{"", "batch"}) + `","version":"v1","kind":"` + kind + `"},"operation":"` + op +
			`","namespace":"` + randomString(r, 8) + `","name":"x","userInfo":{"username":"` + randomString(r, 12) + `"},"object":{}}}`
		if r.IntN(20) == 0 {
			body = body[:r.IntN(len(body))] // malformed now and then
		}
		req, _ := http.NewRequest(http.MethodPost, rt.Path, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		w := &discardWriter{h: http.Header{}}
		h.ServeHTTP(w, req)
	}
	total, byFamily := countSeries(t, reg)
	// Fixed sets: 3 routes; kinds "", Pod, Job, ServiceAccount, other (5); operations "", the
	// four, other (6); decisions allowed, patched, denied, ignored, error (5); codes 200, 400,
	// 413, 429, 500, 503, other (7). Per route only a few combinations are possible in fact.
	const requestsBound = 3 * 5 * 6 * 5 * 7
	const bound = requestsBound + 3 /* duration */ + 3 /* patch ops */ + 3 /* panics */ + 3*2 /* rejected */ + 1 /* in flight */
	if got := byFamily["credential_webhook_requests_total"]; got > requestsBound {
		t.Errorf("requests_total has %d series, more than the fixed label sets allow (%d)", got, requestsBound)
	}
	if total > bound {
		t.Errorf("%d series after %d forged reviews, want at most %d: %v", total, n, bound, byFamily)
	}
	// In fact far fewer: every kind and operation outside the known ones is "other".
	if total > 100 {
		t.Errorf("%d series after %d forged reviews, want under 100: %v", total, n, byFamily)
	}
	t.Logf("series after %d forged reviews: %d (%v)", n, total, byFamily)
}

// discardWriter is a minimal ResponseWriter for driving the handler without a network.
type discardWriter struct {
	h    http.Header
	code int
}

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *discardWriter) WriteHeader(c int)           { w.code = c }

func TestLabelFunctions(t *testing.T) {
	for in, want := range map[string]string{"Pod": "Pod", "": "", "ConfigMap": "other", strings.Repeat("x", 1<<20): "other", "pod": "other"} {
		if got := kindLabel(in); got != want {
			t.Errorf("kindLabel(%.20q) = %q, want %q", in, got, want)
		}
	}
	for in, want := range map[string]string{"CREATE": "CREATE", "": "", "create": "other", "PATCH": "other"} {
		if got := operationLabel(in); got != want {
			t.Errorf("operationLabel(%q) = %q, want %q", in, got, want)
		}
	}
	if codeLabel(418) != "other" || codeLabel(429) != "429" || decisionLabel("x") != "other" {
		t.Error("code or decision label outside the fixed set")
	}
}

// Beyond MaxInFlight a review is answered 429 at once, with a plain-text message (no
// AdmissionReview: the apiserver applies the failurePolicy); once a slot frees, reviews succeed.
func TestInFlightLimitAnswers429(t *testing.T) {
	bl := newBlocker()
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	block := bl.plugin
	srv := newServerWith(t, Options{Metrics: m, MaxInFlight: 2, Routes: []Route{{Path: "/mutate/pods", Name: "pods", Kind: "Pod", Plugins: []Plugin{block}}}})
	blocking := strings.Replace(review("b", "", "Pod", `{}`), `"name":"x"`, `"name":"block"`, 1)
	var wg sync.WaitGroup
	codes := make(chan int, 2)
	for range 2 {
		wg.Go(func() {
			code, _, _ := post(t, srv.URL+"/mutate/pods", "application/json", blocking)
			codes <- code
		})
	}
	bl.waitEntered(t, 2)
	if got := testutil.ToFloat64(m.InFlight); got != 2 {
		t.Errorf("in-flight gauge %v, want 2", got)
	}
	res, err := http.Post(srv.URL+"/mutate/pods", "application/json", strings.NewReader(review("c", "", "Pod", `{}`)))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusTooManyRequests || !strings.Contains(string(body), "too many admission reviews in flight (limit 2") ||
		strings.Contains(string(body), "AdmissionReview") || res.Header.Get("Retry-After") == "" {
		t.Fatalf("third review: %d %q (Retry-After %q); want 429 with a plain message", res.StatusCode, body, res.Header.Get("Retry-After"))
	}
	bl.releaseAll()
	wg.Wait()
	close(codes)
	for c := range codes {
		if c != 200 {
			t.Errorf("blocked review answered %d, want 200", c)
		}
	}
	if code, out, raw := post(t, srv.URL+"/mutate/pods", "application/json", review("d", "", "Pod", `{}`)); code != 200 || out["response"].(map[string]any)["uid"] != "d" {
		t.Fatalf("after the slots freed: %d %s", code, raw)
	}
	if got := testutil.ToFloat64(m.Rejected.WithLabelValues("pods", RejectInFlight)); got != 1 {
		t.Errorf("rejected{inflight} = %v, want 1", got)
	}
	if got := testutil.ToFloat64(m.InFlight); got != 0 {
		t.Errorf("in-flight gauge %v after all answered, want 0", got)
	}
}

// The byte budget: reviews in flight share MaxInFlightBytes by the bytes they sent (at least
// minReviewWeight each once read). Small reviews keep flowing while others wait (a lock, an
// outage); a large body that does not fit is answered 429 once its bytes pass the budget, the
// rest unread, and fits again once the others are answered.
func TestInFlightByteBudget(t *testing.T) {
	bl := newBlocker()
	m := NewMetrics(prometheus.NewRegistry())
	block := bl.plugin
	const budget = 1 << 20
	srv := newServerWith(t, Options{Metrics: m, MaxInFlight: -1, MaxInFlightBytes: budget,
		Routes: []Route{{Path: "/mutate/pods", Name: "pods", Kind: "Pod", Plugins: []Plugin{block}}}})
	// One blocked review of 600 KiB and three small ones: a second 600 KiB review does not fit
	// in the 1 MiB budget, a small one does.
	padded := func(uid, name string, size int) string {
		obj := `{"metadata":{"annotations":{"pad":"` + strings.Repeat("x", size) + `"}}}`
		return strings.Replace(review(uid, "", "Pod", obj), `"name":"x"`, `"name":"`+name+`"`, 1)
	}
	var wg sync.WaitGroup
	codes := make(chan int, 4)
	wg.Go(func() {
		code, _, _ := post(t, srv.URL+"/mutate/pods", "application/json", padded("big-1", "block", 600<<10))
		codes <- code
	})
	for range 3 { // three small blocked reviews: 3 x 16 KiB of the budget
		wg.Go(func() {
			code, _, _ := post(t, srv.URL+"/mutate/pods", "application/json", padded("small", "block", 10))
			codes <- code
		})
	}
	bl.waitEntered(t, 4)
	// A second large review does not fit: 429, plain text.
	res, err := http.Post(srv.URL+"/mutate/pods", "application/json", strings.NewReader(padded("big-2", "x", 600<<10)))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusTooManyRequests || !strings.Contains(string(body), "--max-inflight-review-bytes") || res.Header.Get("Retry-After") == "" {
		t.Fatalf("large review over the budget: %d %q; want 429 naming --max-inflight-review-bytes", res.StatusCode, body)
	}
	// A small one still fits while the others wait.
	if code, out, raw := post(t, srv.URL+"/mutate/pods", "application/json", review("small-ok", "", "Pod", `{}`)); code != 200 || out["response"].(map[string]any)["uid"] != "small-ok" {
		t.Fatalf("small review while the budget is partly used: %d %s", code, raw)
	}
	bl.releaseAll()
	wg.Wait()
	close(codes)
	for c := range codes {
		if c != 200 {
			t.Errorf("blocked review answered %d, want 200", c)
		}
	}
	if code, _, raw := post(t, srv.URL+"/mutate/pods", "application/json", padded("big-3", "x", 600<<10)); code != 200 {
		t.Fatalf("large review after the budget freed: %d %s", code, raw)
	}
	if got := testutil.ToFloat64(m.Rejected.WithLabelValues("pods", RejectInFlight)); got != 1 {
		t.Errorf("rejected{inflight} = %v, want 1", got)
	}
}

// Each route reads at most its own limit: a ServiceAccount or Job review is small, a Pod's may be
// large. Over the limit: 413 with a message naming the limit, from Content-Length before reading
// or from the bytes of a body without one. Normal reviews still pass.
func TestRouteBodyLimits(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	srv := newServerWith(t, Options{Metrics: m, Routes: []Route{
		{Path: "/mutate/serviceaccounts", Name: "serviceaccounts", Kind: "ServiceAccount", MaxObjectBytes: 512 << 10},
		{Path: "/mutate/jobs", Name: "jobs", Group: "batch", Kind: "Job", MaxObjectBytes: 512 << 10},
		{Path: "/mutate/pods", Name: "pods", Kind: "Pod", MaxObjectBytes: 3 << 20, MaxBodyBytes: 4 << 20},
	}})
	obj := func(n int) string { return `{"metadata":{"annotations":{"a":"` + strings.Repeat("x", n) + `"}}}` }
	for _, tc := range []struct {
		path, group, kind string
		size              int
		chunked           bool
		code              int
		msg               string
	}{
		{"/mutate/serviceaccounts", "", "ServiceAccount", 1 << 10, false, 200, ""},
		{"/mutate/serviceaccounts", "", "ServiceAccount", 2 << 20, false, 413, "larger than the 1114112 bytes this route accepts"},
		{"/mutate/serviceaccounts", "", "ServiceAccount", 2 << 20, true, 413, "larger than 1114112 bytes"},
		{"/mutate/jobs", "batch", "Job", 100 << 10, false, 200, ""},
		{"/mutate/jobs", "batch", "Job", 2 << 20, true, 413, "jobs review larger than 1114112 bytes"},
		// A large but realistic Pod passes the Pods route, which is far more generous.
		{"/mutate/pods", "", "Pod", 2 << 20, false, 200, ""},
		{"/mutate/pods", "", "Pod", 5 << 20, false, 413, "larger than the 4194304 bytes"},
		{"/mutate/pods", "", "Pod", 5 << 20, true, 413, "larger than 4194304 bytes"},
	} {
		t.Run(fmt.Sprintf("%s %d chunked=%v", tc.kind, tc.size, tc.chunked), func(t *testing.T) {
			body := review("u", tc.group, tc.kind, obj(tc.size))
			var rd io.Reader = strings.NewReader(body)
			if tc.chunked {
				rd = io.MultiReader(rd) // hides the length: sent chunked, read until the limit
			}
			req, _ := http.NewRequest(http.MethodPost, srv.URL+tc.path, rd)
			req.Header.Set("Content-Type", "application/json")
			res, err := http.DefaultClient.Do(req)
			if err != nil {
				if tc.code == 413 { // the server may close before the client finished sending
					return
				}
				t.Fatal(err)
			}
			got, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if res.StatusCode != tc.code || !strings.Contains(string(got), tc.msg) {
				t.Fatalf("got %d %.200q, want %d containing %q", res.StatusCode, got, tc.code, tc.msg)
			}
		})
	}
	if got := testutil.ToFloat64(m.Rejected.WithLabelValues("serviceaccounts", RejectTooLarge)); got < 1 {
		t.Errorf("rejected{too-large} for serviceaccounts = %v", got)
	}
}

func TestBodyLimitDerivation(t *testing.T) {
	for _, tc := range []struct {
		rt   Route
		want int64
	}{
		{Route{}, DefaultMaxBodyBytes},
		{Route{MaxObjectBytes: 512 << 10}, 2*(512<<10) + envelopeBytes},
		{Route{MaxObjectBytes: 3 << 20, MaxBodyBytes: 4 << 20}, 4 << 20},
		{Route{MaxObjectBytes: 8 << 20}, DefaultMaxBodyBytes}, // never above the server's limit
	} {
		if got := tc.rt.bodyLimit(DefaultMaxBodyBytes); got != tc.want {
			t.Errorf("%+v: body limit %d, want %d", tc.rt, got, tc.want)
		}
	}
}

// blocker is a plugin that holds every review named "block" until releaseAll, so a test can fill
// the in-flight limits deterministically.
type blocker struct {
	plugin  Plugin
	entered chan struct{}
	release chan struct{}
}

func newBlocker() *blocker {
	b := &blocker{entered: make(chan struct{}, 8), release: make(chan struct{})}
	b.plugin = pluginFunc(func(ctx context.Context, req *Request, _ *Response) error {
		if req.Name == "block" {
			b.entered <- struct{}{}
			<-b.release
		}
		return nil
	})
	return b
}

// waitEntered waits until n blocked reviews are inside the plugin.
func (b *blocker) waitEntered(t *testing.T, n int) {
	t.Helper()
	for range n {
		select {
		case <-b.entered:
		case <-time.After(10 * time.Second):
			t.Fatal("blocking reviews did not start")
		}
	}
}

func (b *blocker) releaseAll() { close(b.release) }

func newServerWith(t *testing.T, opts Options) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(NewHandler(opts))
	t.Cleanup(srv.Close)
	return srv
}
