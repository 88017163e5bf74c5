package harness

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"go.klusters.dev/credential-webhook/annotations"
)

// WebhookOptions configure one webhook replica.
type WebhookOptions struct {
	// Name identifies the replica in logs and WireReview.Backend. Default: webhook-N.
	Name string
	// Args are appended to `serve --listen ... --tls-cert-file ... --tls-key-file ...
	// --kubeconfig ... --metrics-listen ... --log-flush-interval=0` (a later flag wins).
	Args []string
	// Env is appended to the replica's environment: PATH, HOME, TMPDIR, POD_NAMESPACE, POD_NAME,
	// SERVICE_ACCOUNT_NAME (as the Deployment sets them) and WebhookAWSEnv (later entries win).
	Env []string
	// NoWait returns as soon as the process started, without waiting for /readyz and for a
	// review through the apiserver (for tests of start-up failures).
	NoWait bool
	// NoFrontend keeps the replica out of the frontend: the apiserver never reaches it.
	NoFrontend bool
}

// Webhook is one running replica of the credential-webhook binary.
type Webhook struct {
	Name string
	// Addr and MetricsAddr are 127.0.0.1:PORT; URL is https://Addr.
	Addr        string
	MetricsAddr string
	URL         string

	c    *Cluster
	opts WebhookOptions
	log  *logBuffer // kept across restarts: Logs shows every run, in order

	mu   sync.Mutex
	proc *process
}

// StartWebhook starts a webhook replica, adds it to the frontend, and (unless NoWait) waits
// until it answers /readyz and has answered a review sent by the apiserver. It is killed at
// the end of the test, and its log is printed when the test failed.
//
// Tests that start webhooks must not run in parallel with each other: all replicas share the
// one registered frontend.
func (c *Cluster) StartWebhook(tb testing.TB, opts WebhookOptions) *Webhook {
	tb.Helper()
	c.mu.Lock()
	c.seq++
	if opts.Name == "" {
		opts.Name = "webhook-" + strconv.Itoa(c.seq)
	}
	c.mu.Unlock()
	ports, err := freePorts(2)
	if err != nil {
		tb.Fatal(err)
	}
	w := &Webhook{
		Name: opts.Name, c: c, opts: opts, log: &logBuffer{keep: true},
		Addr:        "127.0.0.1:" + strconv.Itoa(ports[0]),
		MetricsAddr: "127.0.0.1:" + strconv.Itoa(ports[1]),
	}
	w.URL = "https://" + w.Addr
	c.mu.Lock()
	c.webhooks = append(c.webhooks, w)
	c.mu.Unlock()
	tb.Cleanup(func() {
		if err := w.Kill(); err != nil {
			tb.Errorf("webhook %s: %v", w.Name, err)
		}
		if tb.Failed() {
			tb.Logf("----- log of webhook replica %s -----\n%s", w.Name, w.Logs())
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if err := w.start(ctx); err != nil {
		tb.Fatalf("webhook %s: %v\n----- its log -----\n%s", w.Name, err, w.Logs())
	}
	return w
}

func (w *Webhook) start(ctx context.Context) error {
	c := w.c
	args := []string{"serve",
		"--listen", w.Addr,
		"--tls-cert-file", filepath.Join(c.WebhookCertDir, "tls.crt"),
		"--tls-key-file", filepath.Join(c.WebhookCertDir, "tls.key"),
		"--kubeconfig", c.WebhookKubeconfig,
		"--metrics-listen", w.MetricsAddr,
		// Tests read the log while the replica runs, right after what they observed through the
		// API: every line must be in the file by then, not up to the batching interval later.
		"--log-flush-interval=0",
	}
	args = append(args, w.opts.Args...)
	home := filepath.Join(c.Dir, "home", w.Name)
	if err := os.MkdirAll(home, 0o700); err != nil {
		return err
	}
	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + home, "TMPDIR=" + home,
		"POD_NAMESPACE=" + WebhookNamespace, "POD_NAME=" + w.Name, "SERVICE_ACCOUNT_NAME=" + WebhookServiceAccount}
	env = append(env, c.WebhookAWSEnv()...)
	env = append(env, w.opts.Env...)
	if cover := os.Getenv("GOCOVERDIR"); cover != "" {
		env = append(env, "GOCOVERDIR="+cover)
	}
	fmt.Fprintf(w.log, "##### harness: starting %s %v\n", c.WebhookBinary, args)
	p, err := startProcess(processSpec{
		name: "webhook " + w.Name, bin: c.WebhookBinary, args: args, env: env, dir: home,
		logFile: filepath.Join(c.Dir, "webhook-"+w.Name+".log"), out: w.log,
	})
	if err != nil {
		return err
	}
	w.mu.Lock()
	w.proc = p
	w.mu.Unlock()
	if w.opts.NoWait {
		if !w.opts.NoFrontend {
			c.front.add(backend{name: w.Name, url: w.URL})
		}
		return nil
	}
	if err := w.waitReady(ctx); err != nil {
		return err
	}
	if w.opts.NoFrontend {
		return nil
	}
	c.front.add(backend{name: w.Name, url: w.URL})
	return c.probe(ctx, w.Name)
}

// WebhookCAPool is the CA that signs the replicas' serving certificates (WebhookCertDir/ca.crt),
// for clients that talk to a replica directly as the apiserver does.
func (c *Cluster) WebhookCAPool() (*x509.CertPool, error) {
	caPEM, err := os.ReadFile(filepath.Join(c.WebhookCertDir, "ca.crt"))
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("%s holds no certificate", filepath.Join(c.WebhookCertDir, "ca.crt"))
	}
	return pool, nil
}

// waitReady polls /readyz over HTTPS with the dev CA.
func (w *Webhook) waitReady(ctx context.Context) error {
	pool, err := w.c.WebhookCAPool()
	if err != nil {
		return err
	}
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
	defer client.CloseIdleConnections()
	w.mu.Lock()
	p := w.proc
	w.mu.Unlock()
	return waitHTTP(ctx, p, w.URL+"/readyz", client, 60*time.Second)
}

// probe sends dry-run ServiceAccount creates carrying an input annotation through the apiserver
// until the named replica has answered one. Dry-run: nothing is stored and the webhook makes no
// cloud or RBAC write (sideEffects NoneOnDryRun).
func (c *Cluster) probe(ctx context.Context, replica string) error {
	deadline := time.Now().Add(60 * time.Second)
	for i := 0; ; i++ {
		name := fmt.Sprintf("probe-%s-%d-%d", replica, time.Now().UnixNano(), i)
		sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ProbeNamespace,
			Annotations: map[string]string{annotations.BucketNames: "harness-probe"}}}
		_, _ = c.Client.CoreV1().ServiceAccounts(ProbeNamespace).Create(ctx, sa, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		all, _ := c.front.snapshot()
		for _, r := range all {
			if r.Name == name && r.Namespace == ProbeNamespace && r.Backend == replica {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("replica %s never answered a review sent by the apiserver within 60s", replica)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Stop takes the replica out of the frontend, sends SIGTERM, and waits up to 30 s for a clean
// exit; a replica still running then is SIGKILLed and Stop returns an error (a webhook that does
// not shut down on SIGTERM is a bug: Kubernetes would kill it after the grace period).
func (w *Webhook) Stop() error {
	w.c.front.remove(w.Name)
	w.mu.Lock()
	p := w.proc
	w.mu.Unlock()
	if p == nil {
		return nil
	}
	return p.stop(30 * time.Second)
}

// Kill takes the replica out of the frontend and SIGKILLs it.
func (w *Webhook) Kill() error {
	w.c.front.remove(w.Name)
	w.mu.Lock()
	p := w.proc
	w.mu.Unlock()
	if p == nil || !p.running() {
		return nil
	}
	return p.kill()
}

// Restart stops the replica (SIGTERM) and starts it again on the same ports with the same
// options, waiting as StartWebhook does.
func (w *Webhook) Restart(tb testing.TB) {
	tb.Helper()
	if err := w.Stop(); err != nil {
		tb.Fatalf("webhook %s: stop: %v", w.Name, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if err := w.start(ctx); err != nil {
		tb.Fatalf("webhook %s: restart: %v\n----- its log -----\n%s", w.Name, err, w.Logs())
	}
}

// Running reports whether the process is alive.
func (w *Webhook) Running() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.proc != nil && w.proc.running()
}

// Exited returns a channel closed when the current process exits.
func (w *Webhook) Exited() <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.proc.exited
}

// ExitErr is how the current process ended: nil while running or after exit status 0, else
// the *exec.ExitError (e.g. "signal: killed").
func (w *Webhook) ExitErr() error {
	w.mu.Lock()
	p := w.proc
	w.mu.Unlock()
	if p == nil || p.running() {
		return nil
	}
	return p.waitErr
}

// Logs returns everything the replica wrote to stdout and stderr, across restarts.
func (w *Webhook) Logs() []byte { return w.log.bytes() }

// LogLine is one JSON log line of the webhook (log/slog's JSON handler).
type LogLine map[string]any

// Msg is the line's "msg" field.
func (l LogLine) Msg() string { s, _ := l["msg"].(string); return s }

// String returns field k as a string ("" when absent; numbers and booleans formatted).
func (l LogLine) String(k string) string {
	switch v := l[k].(type) {
	case nil:
		return ""
	case string:
		return v
	default:
		b, _ := json.Marshal(v)
		return string(b)
	}
}

// LogLines parses the replica's JSON log lines; lines that are not JSON are skipped.
func (w *Webhook) LogLines() []LogLine {
	var out []LogLine
	sc := bufio.NewScanner(bytes.NewReader(w.Logs()))
	sc.Buffer(make([]byte, 0, 64<<10), 8<<20)
	for sc.Scan() {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 || line[0] != '{' {
			continue
		}
		var l LogLine
		if json.Unmarshal(line, &l) == nil {
			out = append(out, l)
		}
	}
	return out
}

// ReviewLog is the webhook's one log line per review (msg "review").
type ReviewLog struct {
	UID, Kind, Namespace, Name, Operation string
	DryRun                                bool
	Decision                              string
	PatchOps                              int
	Duration                              string
	Line                                  LogLine // every field, as logged
}

// Reviews returns the replica's review log lines, in order.
func (w *Webhook) Reviews() []ReviewLog {
	var out []ReviewLog
	for _, l := range w.LogLines() {
		if l.Msg() != "review" {
			continue
		}
		r := ReviewLog{UID: l.String("uid"), Kind: l.String("kind"), Namespace: l.String("namespace"),
			Name: l.String("name"), Operation: l.String("operation"), Decision: l.String("decision"),
			Duration: l.String("duration"), Line: l}
		r.DryRun, _ = l["dryRun"].(bool)
		if n, ok := l["patchOps"].(float64); ok {
			r.PatchOps = int(n)
		}
		out = append(out, r)
	}
	return out
}

// WaitForReviewLog waits (up to timeout) until the replica logged a review matching match. The
// log line is written after the answer, so it can trail the API call by a moment.
func (w *Webhook) WaitForReviewLog(timeout time.Duration, match func(ReviewLog) bool) (ReviewLog, error) {
	var found ReviewLog
	err := waitUntil(context.Background(), timeout, nil, func(context.Context) (bool, error) {
		for _, r := range w.Reviews() {
			if match(r) {
				found = r
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		return ReviewLog{}, fmt.Errorf("webhook %s logged no matching review: %w", w.Name, err)
	}
	return found, nil
}
