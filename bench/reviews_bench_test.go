package bench

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"go.klusters.dev/credential-webhook/access"
	"go.klusters.dev/credential-webhook/admission"
	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/certs"
	"go.klusters.dev/credential-webhook/jobs"
	"go.klusters.dev/credential-webhook/kube"
	"go.klusters.dev/credential-webhook/kube/kubeadapter"
	"go.klusters.dev/credential-webhook/pods"
	awsp "go.klusters.dev/credential-webhook/providers/aws"
	"go.klusters.dev/credential-webhook/providers/azure"
)

// The reviews the load runs send, from a KubeStash backup session.
const (
	PodReviewFile      = "../admission/testdata/bench/pod-review.json"
	JobReviewFile      = "testdata/job-review.json"
	SAUpdateReviewFile = "testdata/sa-update-review.json"
	SACreateReviewFile = "testdata/sa-create-review.json"
)

// reviewCase is one route with the plugins serve wires for it and one review to send.
type reviewCase struct {
	name, path, review string
	wantOps            int // patch operations the answer must carry
}

var reviewCases = []reviewCase{
	// IRSA injection: two env vars on each of two containers... as pods.Inject decides.
	{name: "pod-irsa", path: "/mutate/pods", review: PodReviewFile, wantOps: -1},
	{name: "job-hold", path: "/mutate/jobs", review: JobReviewFile, wantOps: 3},
	{name: "sa-update-unchanged", path: "/mutate/serviceaccounts", review: SAUpdateReviewFile, wantOps: 0},
}

// backupServiceAccount is the ServiceAccount of the benchmark Pod and Job, already assigned.
func backupServiceAccount() *corev1.ServiceAccount {
	return &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{
		Name: "sample-backup-daemon-demo-session-1778072138", Namespace: "demo", UID: "0d6f1c2a-3b4e-4f5a-8c7d-9e0f1a2b3c4d",
		Labels: map[string]string{annotations.ManagedByLabel: annotations.ManagedByValue},
		Annotations: map[string]string{
			annotations.SeedRole:    "arn:aws:iam::123456789012:role/kubestash-selfhost",
			annotations.BucketNames: "b1,b2",
			annotations.AWSRoleARN:  "arn:aws:iam::123456789012:role/kubestash-selfhost-0",
		},
	}}
}

// reviewHandler builds the admission handler as serve wires it (wiring.go): the own-annotations
// guard first on every route, IRSA injection on Pods, Azure's pod-template labels then the Job
// hold on Jobs (the chain serve runs with both AWS and Azure on, as make bench's load phase
// does), the AWS seed-role plugin on ServiceAccounts; ServiceAccounts come from kube.ServiceAccounts' informer cache (fed by
// client-go's fake clientset) and every review logs one JSON line, as in production.
func reviewHandler(b *testing.B) http.Handler {
	b.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	b.Cleanup(cancel)
	log := slog.New(slog.NewJSONHandler(io.Discard, nil))
	sas := kube.NewServiceAccounts(kubeadapter.Wrap(fake.NewClientset(backupServiceAccount())), 0, log)
	sas.Start(ctx)
	if !sas.WaitForSync(ctx) {
		b.Fatal("ServiceAccount cache did not sync")
	}
	reg := prometheus.NewRegistry()
	policy, err := access.Parse("*", "system:serviceaccount:kubestash:kubestash-kubestash-operator")
	if err != nil {
		b.Fatal(err)
	}
	seeds, err := awsp.ParseAllowlist("arn:aws:iam::123456789012:role/kubestash-*")
	if err != nil {
		b.Fatal(err)
	}
	guard := admission.OwnAnnotationsGuard{Self: map[string]bool{"system:serviceaccount:credential-webhook:credential-webhook": true}}
	// The UPDATE benchmarked changes nothing relevant, so the plugin never reaches the Assigner.
	saPlugin := &awsp.Plugin{Seeds: seeds, Access: policy, Metrics: awsp.NewMetrics(reg)}
	podCfg := pods.Config{Region: "us-east-1", RegionalSTS: true, MissingServiceAccount: pods.MissingAdmit}
	return admission.NewHandler(admission.Options{
		Log:     log,
		Metrics: admission.NewMetrics(reg),
		Routes: []admission.Route{
			{Path: "/mutate/serviceaccounts", Name: "serviceaccounts", Kind: "ServiceAccount", Plugins: []admission.Plugin{guard, saPlugin}},
			{Path: "/mutate/jobs", Name: "jobs", Group: "batch", Kind: "Job", Plugins: []admission.Plugin{guard, &azure.JobPlugin{ServiceAccounts: sas}, jobs.NewPlugin(sas, nil)}},
			{Path: "/mutate/pods", Name: "pods", Kind: "Pod", Plugins: []admission.Plugin{guard, pods.NewPlugin(sas, podCfg)}},
		},
	})
}

func readReview(b *testing.B, file string) []byte {
	b.Helper()
	body, err := os.ReadFile(file)
	if err != nil {
		b.Fatal(err)
	}
	return body
}

// checkAnswer fails unless the answer is an allowed review with the expected patch.
func checkAnswer(b *testing.B, c reviewCase, status int, body []byte) {
	b.Helper()
	a, err := ParseAnswer(status, body)
	if err != nil {
		b.Fatal(err)
	}
	if status != http.StatusOK || !a.Allowed || (c.wantOps >= 0 && a.PatchOps != c.wantOps) || (c.wantOps < 0 && a.PatchOps == 0) {
		b.Fatalf("%s: HTTP %d allowed=%v, %d patch ops %v (want %d), denial %q", c.name, status, a.Allowed, a.PatchOps, a.Paths, c.wantOps, a.Denial)
	}
}

// reportCPU adds cpu-ns/op, the process's user+system CPU per operation (GC included).
func reportCPU(b *testing.B) func() {
	var r0 syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &r0)
	return func() {
		var r1 syscall.Rusage
		_ = syscall.Getrusage(syscall.RUSAGE_SELF, &r1)
		ns := r1.Utime.Nano() + r1.Stime.Nano() - r0.Utime.Nano() - r0.Stime.Nano()
		b.ReportMetric(float64(ns)/float64(b.N), "cpu-ns/op")
	}
}

// BenchmarkReview is a whole review through the server's handler (decode, the route's plugins,
// encode, metrics, one JSON log line), without TLS or the network.
func BenchmarkReview(b *testing.B) {
	h := reviewHandler(b)
	for _, c := range reviewCases {
		body := readReview(b, c.review)
		serve := func() *httptest.ResponseRecorder {
			req := httptest.NewRequest(http.MethodPost, c.path+"?timeout=10s", bytes.NewReader(body))
			req.Header.Set("Content-Type", "application/json")
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			return rec
		}
		rec := serve()
		checkAnswer(b, c, rec.Code, rec.Body.Bytes())
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			defer reportCPU(b)()
			for b.Loop() {
				if rec := serve(); rec.Code != http.StatusOK {
					b.Fatal(rec.Code)
				}
			}
		})
	}
}

// BenchmarkReviewTLS is a whole review over a keep-alive TLS connection on 127.0.0.1 to an
// http.Server configured as serve configures it (dev certificate, TLS 1.2+, HTTP/1.1). Client
// and server run in this process, one request at a time, so ns/op is the round trip and
// cpu-ns/op is client and server CPU together. Its CPU profile, focused on net/http's server
// connection goroutine, is the server's share.
func BenchmarkReviewTLS(b *testing.B) {
	dir := b.TempDir()
	if err := certs.WriteDev(certs.DevOptions{Dir: dir, Hosts: []string{"127.0.0.1"}}); err != nil {
		b.Fatal(err)
	}
	src, err := certs.NewFileSource(filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"), time.Hour, slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := &http.Server{
		Handler:           reviewHandler(b),
		TLSConfig:         certs.ServerConfig(src, false, nil),
		ReadHeaderTimeout: 5 * time.Second,
		TLSNextProto:      map[string]func(*http.Server, *tls.Conn, http.Handler){},
		ErrorLog:          nil,
	}
	go func() { _ = srv.ServeTLS(ln, "", "") }()
	b.Cleanup(func() { _ = srv.Close() })
	client, err := Client(filepath.Join(dir, "ca.crt"), 1)
	if err != nil {
		b.Fatal(err)
	}
	base := "https://" + ln.Addr().String()
	ctx := context.Background()
	for _, c := range reviewCases {
		body := readReview(b, c.review)
		post := func() (int, []byte) {
			req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+c.path+"?timeout=10s", bytes.NewReader(body))
			if err != nil {
				b.Fatal(err)
			}
			req.Header.Set("Content-Type", "application/json")
			resp, err := client.Do(req)
			if err != nil {
				b.Fatal(err)
			}
			out, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				b.Fatal(err)
			}
			return resp.StatusCode, out
		}
		status, out := post()
		checkAnswer(b, c, status, out)
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			defer reportCPU(b)()
			for b.Loop() {
				if status, _ := post(); status != http.StatusOK {
					b.Fatal(status)
				}
			}
		})
	}
}
