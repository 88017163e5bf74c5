package bench

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"sync"
	"time"
)

// LoadRun is one hey run against the real binary.
type LoadRun struct {
	Name        string  `json:"name"`   // e.g. "pod-rate"
	Review      string  `json:"review"` // what was sent
	Route       string  `json:"route"`
	Mode        string  `json:"mode"` // "rate" or "saturation"
	Concurrency int     `json:"concurrency"`
	Rate        float64 `json:"rate"` // requests/s asked for; 0 = as fast as possible
	Command     string  `json:"command"`

	Duration time.Duration `json:"durationNs"`
	Requests int           `json:"requests"` // answered with any HTTP status
	OK       int           `json:"ok"`       // answered 200
	Errors   int           `json:"errors"`   // no HTTP answer
	RPS      float64       `json:"rps"`
	P50      time.Duration `json:"p50Ns"`
	P90      time.Duration `json:"p90Ns"`
	P99      time.Duration `json:"p99Ns"`
	Slowest  time.Duration `json:"slowestNs"`

	ServerCPU time.Duration      `json:"serverCpuNs"` // utime+stime of the server process during the run
	ClientCPU time.Duration      `json:"clientCpuNs"` // hey's own user+system time
	IAMCalls  map[string]float64 `json:"iamCalls"`    // from the server's /metrics, during the run
	LoadAvg   string             `json:"loadAvg"`     // /proc/loadavg before the run

	// Answer is what the route did with this review (checked once before the run).
	Answer Answer `json:"answer"`
}

// CPUPerReview is the server's CPU time per answered review.
func (r LoadRun) CPUPerReview() time.Duration {
	if r.Requests == 0 {
		return 0
	}
	return r.ServerCPU / time.Duration(r.Requests)
}

// Answer summarises one AdmissionReview response.
type Answer struct {
	Status   int      `json:"status"`
	Allowed  bool     `json:"allowed"`
	PatchOps int      `json:"patchOps"`
	Paths    []string `json:"paths,omitempty"` // the patch's paths
	Warnings []string `json:"warnings,omitempty"`
	Denial   string   `json:"denial,omitempty"`
}

// ParseAnswer reads an AdmissionReview response body.
func ParseAnswer(status int, body []byte) (Answer, error) {
	a := Answer{Status: status}
	var out struct {
		Response struct {
			Allowed bool   `json:"allowed"`
			Patch   string `json:"patch"`
			Status  *struct {
				Message string `json:"message"`
			} `json:"status"`
			Warnings []string `json:"warnings"`
		} `json:"response"`
	}
	if err := json.Unmarshal(body, &out); err != nil {
		return a, fmt.Errorf("response is not an AdmissionReview (HTTP %d): %w: %.200s", status, err, body)
	}
	a.Allowed, a.Warnings = out.Response.Allowed, out.Response.Warnings
	if out.Response.Status != nil {
		a.Denial = out.Response.Status.Message
	}
	if out.Response.Patch != "" {
		raw, err := base64.StdEncoding.DecodeString(out.Response.Patch)
		if err != nil {
			return a, fmt.Errorf("patch is not base64: %w", err)
		}
		var ops []struct {
			Path string `json:"path"`
		}
		if err := json.Unmarshal(raw, &ops); err != nil {
			return a, fmt.Errorf("patch is not a JSON patch: %w", err)
		}
		a.PatchOps = len(ops)
		for _, op := range ops {
			a.Paths = append(a.Paths, op.Path)
		}
	}
	return a, nil
}

// Client is a keep-alive HTTPS client trusting caFile, for probing and driving the server.
func Client(caFile string, conns int) (*http.Client, error) {
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s holds no PEM certificate", caFile)
	}
	tr := &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		MaxIdleConns:        conns,
		MaxIdleConnsPerHost: conns,
		MaxConnsPerHost:     conns,
		IdleConnTimeout:     30 * time.Second,
	}
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}, nil
}

// Post sends one review and parses the answer.
func Post(ctx context.Context, c *http.Client, url string, body []byte) (Answer, time.Duration, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return Answer{}, 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	t0 := time.Now()
	resp, err := c.Do(req)
	if err != nil {
		return Answer{}, 0, err
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	d := time.Since(t0)
	if err != nil {
		return Answer{}, d, err
	}
	a, err := ParseAnswer(resp.StatusCode, b)
	return a, d, err
}

// ServerIAMCalls reads the server's IAM call counters from its /metrics, by action.
func ServerIAMCalls(ctx context.Context, client *http.Client, baseURL string) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, baseURL+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics: HTTP %d", resp.StatusCode)
	}
	return IAMCallsFromMetrics(string(b))
}

// ProcCPU is the user+system CPU time of process pid so far.
func ProcCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	u, s, err := ParseProcStat(string(b))
	return u + s, err
}

// LoadAvg is the first three fields of /proc/loadavg ("" when unreadable).
func LoadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := bytes.Fields(b)
	if len(f) < 3 {
		return ""
	}
	return string(bytes.Join(f[:3], []byte(" ")))
}

// CPUPressure is the "some avg60" figure of /proc/pressure/cpu ("" when unavailable).
func CPUPressure() string {
	b, err := os.ReadFile("/proc/pressure/cpu")
	if err != nil {
		return ""
	}
	for _, f := range bytes.Fields(b) {
		if v, ok := bytes.CutPrefix(f, []byte("avg60=")); ok {
			return string(v)
		}
	}
	return ""
}

// HeyArgs builds hey's command line: keep-alive HTTP/1.1 over TLS, c workers, for d; with rate >
// 0, hey's per-worker limit rate/c (hey paces each worker on its own).
func HeyArgs(url, bodyFile string, c int, rate float64, d time.Duration) []string {
	args := []string{"-z", d.String(), "-c", strconv.Itoa(c), "-m", "POST", "-T", "application/json", "-D", bodyFile}
	if rate > 0 {
		args = append(args, "-q", strconv.FormatFloat(rate/float64(c), 'f', -1, 64))
	}
	return append(args, url)
}

// RunHey runs hey against the server process pid and measures the server's CPU time around it.
// The raw hey output is returned with the parsed run.
func RunHey(ctx context.Context, hey string, pid int, run LoadRun, url, bodyFile string, d time.Duration) (LoadRun, string, error) {
	args := HeyArgs(url, bodyFile, run.Concurrency, run.Rate, d)
	run.Command = "hey " + shellJoin(args)
	run.LoadAvg = LoadAvg()
	cmd := exec.CommandContext(ctx, hey, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cpu0, err := ProcCPU(pid)
	if err != nil {
		return run, "", fmt.Errorf("server CPU: %w", err)
	}
	if err := cmd.Run(); err != nil {
		return run, out.String(), fmt.Errorf("%s: %w: %s", run.Command, err, out.String())
	}
	cpu1, err := ProcCPU(pid)
	if err != nil {
		return run, out.String(), fmt.Errorf("server CPU: %w", err)
	}
	run.ServerCPU = cpu1 - cpu0
	run.ClientCPU = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	h, err := ParseHey(out.String())
	if err != nil {
		return run, out.String(), err
	}
	run.Duration, run.RPS, run.Slowest = h.Total, h.RPS, h.Slowest
	run.Requests, run.OK, run.Errors = h.Requests(), h.OK(), h.Errors
	run.P50, run.P90, run.P99 = h.Percentiles[50], h.Percentiles[90], h.Percentiles[99]
	return run, out.String(), nil
}

func shellJoin(args []string) string {
	var b bytes.Buffer
	for i, a := range args {
		if i > 0 {
			b.WriteByte(' ')
		}
		if a == "" || bytes.ContainsAny([]byte(a), " '\"$*?") {
			b.WriteString(strconv.Quote(a))
		} else {
			b.WriteString(a)
		}
	}
	return b.String()
}

// SACreateRun is a load of distinct ServiceAccount CREATE reviews: every request a new
// per-session ServiceAccount, so every one is a real assignment (an IAM write).
type SACreateRun struct {
	Requests    int                `json:"requests"`
	Concurrency int                `json:"concurrency"`
	Wall        time.Duration      `json:"wallNs"`
	RPS         float64            `json:"rps"`
	P50         time.Duration      `json:"p50Ns"`
	P90         time.Duration      `json:"p90Ns"`
	P99         time.Duration      `json:"p99Ns"`
	Max         time.Duration      `json:"maxNs"`
	Assigned    int                `json:"assigned"` // answers patching eks.amazonaws.com/role-arn without a pending marker
	Pending     int                `json:"pending"`  // answers deferring to the sweeper
	Failed      int                `json:"failed"`
	ServerCPU   time.Duration      `json:"serverCpuNs"`
	IAMCalls    map[string]float64 `json:"iamCalls"` // from the server's own /metrics
	LoadAvg     string             `json:"loadAvg"`
	Locker      string             `json:"locker"`
}

// RunSACreate posts n CREATE reviews built from template (an AdmissionReview of a KubeStash
// session ServiceAccount), each with its own name and uid, from c concurrent clients.
func RunSACreate(ctx context.Context, client *http.Client, baseURL string, template []byte, pid, n, c int) (SACreateRun, error) {
	run := SACreateRun{Requests: n, Concurrency: c, LoadAvg: LoadAvg()}
	var review map[string]any
	if err := json.Unmarshal(template, &review); err != nil {
		return run, err
	}
	bodies := make([][]byte, n)
	for i := range bodies {
		name := "sample-backup-daemon-demo-session-" + strconv.Itoa(firstSession+(i+1000)*3600)
		req := review["request"].(map[string]any)
		req["uid"] = fmt.Sprintf("bench-sa-%06d", i)
		req["name"] = name
		req["object"].(map[string]any)["metadata"].(map[string]any)["name"] = name
		b, err := json.Marshal(review)
		if err != nil {
			return run, err
		}
		bodies[i] = b
	}
	metrics := func() (map[string]float64, error) { return ServerIAMCalls(ctx, client, baseURL) }
	before, err := metrics()
	if err != nil {
		return run, fmt.Errorf("server /metrics: %w", err)
	}
	cpu0, err := ProcCPU(pid)
	if err != nil {
		return run, err
	}
	lat := make([]time.Duration, n)
	answers := make([]Answer, n)
	errs := make([]error, n)
	work := make(chan int)
	var wg sync.WaitGroup
	start := time.Now()
	for range c {
		wg.Go(func() {
			for i := range work {
				answers[i], lat[i], errs[i] = Post(ctx, client, baseURL+"/mutate/serviceaccounts?timeout=10s", bodies[i])
			}
		})
	}
	for i := range n {
		work <- i
	}
	close(work)
	wg.Wait()
	run.Wall = time.Since(start)
	cpu1, err := ProcCPU(pid)
	if err != nil {
		return run, err
	}
	run.ServerCPU = cpu1 - cpu0
	after, err := metrics()
	if err != nil {
		return run, fmt.Errorf("server /metrics: %w", err)
	}
	run.IAMCalls = Diff(before, after)
	for i, a := range answers {
		switch {
		case errs[i] != nil || a.Status != http.StatusOK || !a.Allowed:
			run.Failed++
		case slices.Contains(a.Paths, "/metadata/annotations/credential-webhook.klusters.dev~1pending"):
			run.Pending++
		case slices.Contains(a.Paths, "/metadata/annotations/eks.amazonaws.com~1role-arn"):
			run.Assigned++
		default:
			run.Failed++
		}
	}
	slices.Sort(lat)
	run.RPS = float64(n) / run.Wall.Seconds()
	run.P50, run.P90, run.P99, run.Max = Percentile(lat, 50), Percentile(lat, 90), Percentile(lat, 99), lat[n-1]
	return run, nil
}
