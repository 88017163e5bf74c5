package bench

import (
	"maps"
	"os"
	"strings"
	"testing"
	"time"
)

func TestParseHey(t *testing.T) {
	read := func(name string) string {
		b, err := os.ReadFile("testdata/" + name)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	withErrors := `
Summary:
  Total:	2.0011 secs
  Slowest:	0.0100 secs
  Fastest:	0.0010 secs
  Average:	0.0020 secs
  Requests/sec:	100.5000

Latency distribution:
  50% in 0.0020 secs
  99% in 0.0090 secs

Status code distribution:
  [200]	190 responses
  [500]	9 responses

Error distribution:
  [12]	Post "https://127.0.0.1:1/mutate/pods": dial tcp 127.0.0.1:1: connect: connection refused
  [1]	Post "https://127.0.0.1:1/mutate/pods": context deadline exceeded
`
	tests := []struct {
		name                   string
		in                     string
		rps                    float64
		requests, ok, errors   int
		p50, p99, total, worst time.Duration
		wantErr                bool
	}{
		{name: "saturation run", in: read("hey-saturation.txt"), rps: 3687.9201, requests: 11095, ok: 11095,
			p50: 3400 * time.Microsecond, p99: 17 * time.Millisecond, total: 3008500 * time.Microsecond, worst: 36500 * time.Microsecond},
		// hey 0.1.4 prints "0% in 0.0000 secs" instead of the 99th percentile when it has too few
		// samples: p99 must come out unknown (0), not 0.0000 s read as a latency.
		{name: "too few requests for p99", in: read("hey-few-requests.txt"), rps: 12.3134, requests: 53, ok: 53,
			p50: 1281300 * time.Microsecond, p99: 0, total: 4304300 * time.Microsecond, worst: 1338 * time.Millisecond},
		{name: "errors and non-200s", in: withErrors, rps: 100.5, requests: 199, ok: 190, errors: 13,
			p50: 2 * time.Millisecond, p99: 9 * time.Millisecond, total: 2001100 * time.Microsecond, worst: 10 * time.Millisecond},
		{name: "not hey output", in: "connection refused\n", wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h, err := ParseHey(tc.in)
			if tc.wantErr {
				if err == nil {
					t.Fatal("want an error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if h.RPS != tc.rps || h.Requests() != tc.requests || h.OK() != tc.ok || h.Errors != tc.errors {
				t.Errorf("rps %v requests %d ok %d errors %d; want %v %d %d %d", h.RPS, h.Requests(), h.OK(), h.Errors, tc.rps, tc.requests, tc.ok, tc.errors)
			}
			if h.Percentiles[50] != tc.p50 || h.Percentiles[99] != tc.p99 || h.Total != tc.total || h.Slowest != tc.worst {
				t.Errorf("p50 %v p99 %v total %v slowest %v; want %v %v %v %v", h.Percentiles[50], h.Percentiles[99], h.Total, h.Slowest, tc.p50, tc.p99, tc.total, tc.worst)
			}
		})
	}
}

func TestParseProcStat(t *testing.T) {
	tests := []struct {
		name       string
		in         string
		user, sys  time.Duration
		wantErrSub string
	}{
		{name: "plain", in: "21178 (cat) R 21172 21172 12269 0 -1 4194304 99 0 0 0 250 37 0 0 20 0 1 0 431563 3133440 382",
			user: 2500 * time.Millisecond, sys: 370 * time.Millisecond},
		// The command name may hold spaces and parentheses; fields count from the last ')'.
		{name: "name with ') ' inside", in: "7 (a) b (c)) S 1 7 7 0 -1 4194560 10 0 0 0 1 2 0 0 20 0 1 0 5 0 0",
			user: 10 * time.Millisecond, sys: 20 * time.Millisecond},
		{name: "truncated", in: "7 (x) S 1 7 7", wantErrSub: "fields"},
		{name: "no command", in: "garbage", wantErrSub: "no ')'"},
		{name: "not a number", in: "7 (x) S 1 7 7 0 -1 4194560 10 0 0 0 x 2 0 0", wantErrSub: "utime"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			u, s, err := ParseProcStat(tc.in)
			if tc.wantErrSub != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErrSub) {
					t.Fatalf("err = %v, want one mentioning %q", err, tc.wantErrSub)
				}
				return
			}
			if err != nil || u != tc.user || s != tc.sys {
				t.Fatalf("got %v %v %v, want %v %v", u, s, err, tc.user, tc.sys)
			}
		})
	}
}

func TestProcCPUOfThisProcess(t *testing.T) {
	// Burn some CPU so the 10 ms tick moves, then check our own counter moved forward.
	before, err := ProcCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(50 * time.Millisecond)
	x := 0
	for time.Now().Before(deadline) {
		x++
	}
	after, err := ProcCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if after <= before || x == 0 {
		t.Fatalf("CPU time did not advance: %v -> %v", before, after)
	}
}

func TestParseGoBenchAndSummarize(t *testing.T) {
	out := `goos: linux
goarch: amd64
pkg: go.klusters.dev/credential-webhook/pods
cpu: AMD EPYC
BenchmarkInject-2   	  225610	      5451 ns/op	 752.73 MB/s	      5079 cpu-ns/op	    2184 B/op	      31 allocs/op
BenchmarkInject-2   	  225610	      5000 ns/op	 752.73 MB/s	      5000 cpu-ns/op	    2184 B/op	      31 allocs/op
BenchmarkInject-2   	  225610	      6000 ns/op	 752.73 MB/s	      5100 cpu-ns/op	    2184 B/op	      31 allocs/op
--- FAIL: BenchmarkBroken
BenchmarkBroken-2
pkg: go.klusters.dev/credential-webhook/providers/aws
BenchmarkAssignWarm/new-subject-2    	     100	  10646939 ns/op	         1.080 iam-calls/op	  133350 B/op	     740 allocs/op
BenchmarkAssignWarm/new-subject-2    	     100	  10000000 ns/op	         1.000 iam-calls/op	  133350 B/op	     740 allocs/op
BenchmarkNoProcs 	     100	  10 ns/op
PASS
`
	lines, err := ParseGoBench(out)
	if err != nil {
		t.Fatal(err)
	}
	if len(lines) != 6 {
		t.Fatalf("got %d lines, want 6: %+v", len(lines), lines)
	}
	if l := lines[0]; l.Pkg != "go.klusters.dev/credential-webhook/pods" || l.Name != "BenchmarkInject" || l.Procs != 2 || l.N != 225610 || l.Metrics["cpu-ns/op"] != 5079 {
		t.Errorf("first line parsed as %+v", l)
	}
	if l := lines[5]; l.Name != "BenchmarkNoProcs" || l.Procs != 0 {
		t.Errorf("line without -P suffix parsed as %+v", l)
	}
	sum := Summarize(lines)
	if len(sum) != 3 {
		t.Fatalf("got %d summaries, want 3", len(sum))
	}
	inj := sum[0]
	if inj.Runs != 3 || inj.Median["ns/op"] != 5451 || inj.Median["cpu-ns/op"] != 5079 {
		t.Errorf("Inject summary %+v", inj)
	}
	if want := (6000.0 - 5000) / 5451; inj.Spread != want {
		t.Errorf("spread %v, want %v", inj.Spread, want)
	}
	if aw := sum[1]; aw.Pkg != "go.klusters.dev/credential-webhook/providers/aws" || aw.Name != "BenchmarkAssignWarm/new-subject" || aw.Median["iam-calls/op"] != 1.04 {
		t.Errorf("AssignWarm summary %+v", aw)
	}
}

func TestMedianAndPercentile(t *testing.T) {
	for _, tc := range []struct {
		in   []float64
		want float64
	}{{nil, 0}, {[]float64{3}, 3}, {[]float64{5, 1, 3}, 3}, {[]float64{4, 1, 3, 2}, 2.5}} {
		if got := Median(tc.in); got != tc.want {
			t.Errorf("Median(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
	ds := []time.Duration{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	for _, tc := range []struct {
		p    float64
		want time.Duration
	}{{50, 5}, {90, 9}, {99, 10}, {100, 10}, {1, 1}, {0, 1}} {
		if got := Percentile(ds, tc.p); got != tc.want {
			t.Errorf("Percentile(%v) = %v, want %v", tc.p, got, tc.want)
		}
	}
	if Percentile(nil, 50) != 0 {
		t.Error("Percentile of nothing should be 0")
	}
}

func TestIAMCallsFromMetrics(t *testing.T) {
	text := `# HELP credential_webhook_iam_calls_total IAM API calls by action and result (ok, or the AWS error code).
# TYPE credential_webhook_iam_calls_total counter
credential_webhook_iam_calls_total{action="UpdateAssumeRolePolicy",result="ok"} 12
credential_webhook_iam_calls_total{action="UpdateAssumeRolePolicy",result="LimitExceeded"} 1
credential_webhook_iam_calls_total{action="CreateRole",result="ok"} 2
credential_webhook_requests_total{route="pods",kind="Pod",operation="CREATE",decision="patched",code="200"} 5000
credential_webhook_iam_calls_total_other{action="X"} 7
`
	got, err := IAMCallsFromMetrics(text)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]float64{"UpdateAssumeRolePolicy": 13, "CreateRole": 2}
	if !maps.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	if d := Diff(map[string]float64{"UpdateAssumeRolePolicy": 3, "CreateRole": 2}, got); !maps.Equal(d, map[string]float64{"UpdateAssumeRolePolicy": 10}) {
		t.Errorf("Diff = %v", d)
	}
}

func TestParsePprofTop(t *testing.T) {
	text := `File: bench.test
Showing nodes accounting for 2.32s, 33.33% of 6.96s total
      flat  flat%   sum%        cum   cum%
         0     0%     0%      4.71s 67.67%  github.com/go-chi/chi/v5.(*Mux).ServeHTTP
     0.54s  7.76% 14.94%      0.54s  7.76%  internal/runtime/syscall/linux.Syscall6
      10ms  0.14%  0.43%    320ms  4.60%  encoding/json.(*decodeState).object (inline)
`
	rows := ParsePprofTop(text)
	if len(rows) != 3 {
		t.Fatalf("got %d rows: %+v", len(rows), rows)
	}
	if r := rows[0]; r.Func != "github.com/go-chi/chi/v5.(*Mux).ServeHTTP" || r.Cum != 4.71 || r.CumPct != 67.67 || r.Flat != 0 {
		t.Errorf("row 0 = %+v", r)
	}
	if r := rows[2]; r.Func != "encoding/json.(*decodeState).object" || r.Flat != 0.01 || r.Cum != 0.32 {
		t.Errorf("row 2 (ms units, inline) = %+v", r)
	}
}

func TestParseAnswerAndSummarizePaths(t *testing.T) {
	// patch: [{"op":"add","path":"/spec/containers/0/env/4",...} x2, volumes, annotation a/b]
	body := `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"u","allowed":true,
"patch":"W3sib3AiOiJhZGQiLCJwYXRoIjoiL3NwZWMvY29udGFpbmVycy8wL2Vudi80IiwidmFsdWUiOjF9LHsib3AiOiJhZGQiLCJwYXRoIjoiL3NwZWMvY29udGFpbmVycy8wL2Vudi81IiwidmFsdWUiOjF9LHsib3AiOiJhZGQiLCJwYXRoIjoiL3NwZWMvdm9sdW1lcy8zIiwidmFsdWUiOjF9LHsib3AiOiJhZGQiLCJwYXRoIjoiL21ldGFkYXRhL2Fubm90YXRpb25zL2F+MWIiLCJ2YWx1ZSI6MX1d",
"patchType":"JSONPatch","warnings":["w"]}}`
	a, err := ParseAnswer(200, []byte(body))
	if err != nil {
		t.Fatal(err)
	}
	if !a.Allowed || a.PatchOps != 4 || len(a.Warnings) != 1 || a.Paths[3] != "/metadata/annotations/a~1b" {
		t.Fatalf("answer %+v", a)
	}
	if got, want := SummarizePaths(a.Paths), "env ×2, volumes, annotation a/b"; got != want {
		t.Errorf("SummarizePaths = %q, want %q", got, want)
	}
	if got, want := SummarizePaths([]string{"/spec/suspend"}), "suspend"; got != want {
		t.Errorf("SummarizePaths = %q, want %q", got, want)
	}
	denied, err := ParseAnswer(200, []byte(`{"response":{"uid":"u","allowed":false,"status":{"code":400,"message":"no"}}}`))
	if err != nil || denied.Allowed || denied.Denial != "no" {
		t.Errorf("denial parsed as %+v, %v", denied, err)
	}
	if _, err := ParseAnswer(500, []byte("internal error")); err == nil {
		t.Error("a non-JSON body must be an error")
	}
	if _, err := ParseAnswer(200, []byte(`{"response":{"allowed":true,"patch":"%%%"}}`)); err == nil {
		t.Error("a patch that is not base64 must be an error")
	}
}

func TestHeyArgs(t *testing.T) {
	got := strings.Join(HeyArgs("https://h/mutate/pods?timeout=10s", "r.json", 16, 1000, 10*time.Second), " ")
	want := "-z 10s -c 16 -m POST -T application/json -D r.json -q 62.5 https://h/mutate/pods?timeout=10s"
	if got != want {
		t.Errorf("fixed rate:\n got %s\nwant %s", got, want)
	}
	if got := strings.Join(HeyArgs("u", "r", 16, 0, time.Second), " "); strings.Contains(got, "-q") {
		t.Errorf("saturation must not rate-limit: %s", got)
	}
}
