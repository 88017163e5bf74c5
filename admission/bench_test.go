package admission

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// BenchmarkReviewRoundTrip measures the server's fixed cost per review (decode, route, run an
// empty plugin chain plus one annotation, encode, metrics, log) on a realistic KubeStash backup
// Pod review, without TLS or the network.
func BenchmarkReviewRoundTrip(b *testing.B) {
	body, err := os.ReadFile("testdata/bench/pod-review.json")
	if err != nil {
		b.Fatal(err)
	}
	h := NewHandler(Options{Metrics: NewMetrics(prometheus.NewRegistry()), Routes: []Route{{
		Path: "/mutate/pods", Name: "pods", Kind: "Pod",
		Plugins: []Plugin{pluginFunc(func(_ context.Context, _ *Request, resp *Response) error {
			resp.Patch.SetMapEntry("/metadata/annotations", map[string]string{}, "bench", "1")
			return nil
		})},
	}}})
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		req := httptest.NewRequest(http.MethodPost, "/mutate/pods?timeout=5s", bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != 200 {
			b.Fatal(rec.Code)
		}
	}
}
