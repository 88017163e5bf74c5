package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"go.klusters.dev/credential-webhook/certs"
)

// recorder is a writer that keeps each Write call apart and is safe to read while written.
type recorder struct {
	mu     sync.Mutex
	writes []string
	err    error
}

func (r *recorder) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err != nil {
		return 0, r.err
	}
	r.writes = append(r.writes, string(p))
	return len(p), nil
}

func (r *recorder) get() (string, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return strings.Join(r.writes, ""), len(r.writes)
}

func TestLineBufferBatches(t *testing.T) {
	tests := []struct {
		name       string
		limit      int
		lines      []string
		wantWrites int // Write calls on the sink before Flush
	}{
		{"under the limit: held", 100, []string{"a\n", "b\n", "c\n"}, 0},
		{"the line that reaches the limit writes the batch", 4, []string{"a\n", "b\n", "c\n"}, 1},
		{"a line over the limit goes out at once", 4, []string{"0123456789\n"}, 1},
		{"each reach of the limit is one write", 4, []string{"a\n", "b\n", "c\n", "d\n", "e\n"}, 2},
		{"no lines, no writes", 4, nil, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var r recorder
			b := newLineBuffer(&r, time.Hour, tc.limit)
			for _, l := range tc.lines {
				if n, err := b.Write([]byte(l)); n != len(l) || err != nil {
					t.Fatalf("Write(%q) = %d, %v", l, n, err)
				}
			}
			if _, n := r.get(); n != tc.wantWrites {
				t.Errorf("%d writes before Flush, want %d", n, tc.wantWrites)
			}
			if err := b.Flush(); err != nil {
				t.Fatal(err)
			}
			// Everything, byte for byte and in order, once flushed; a second Flush adds nothing.
			want := strings.Join(tc.lines, "")
			got, n := r.get()
			if got != want {
				t.Errorf("output %q, want %q", got, want)
			}
			_ = b.Flush()
			if _, n2 := r.get(); n2 != n {
				t.Errorf("an empty Flush wrote (%d writes, then %d)", n, n2)
			}
		})
	}
}

// TestLineBufferInterval: a line is written within the interval without any Flush (the crash
// window), and an idle buffer does not write.
func TestLineBufferInterval(t *testing.T) {
	var r recorder
	b := newLineBuffer(&r, 20*time.Millisecond, 1<<20)
	for round := range 3 {
		line := fmt.Sprintf("line %d\n", round)
		start := time.Now()
		_, _ = b.Write([]byte(line))
		for {
			got, _ := r.get()
			if strings.HasSuffix(got, line) {
				break
			}
			if time.Since(start) > 5*time.Second {
				t.Fatalf("round %d: line not written after %s (interval 20ms); output %q", round, time.Since(start), got)
			}
			time.Sleep(time.Millisecond)
		}
	}
	_, n := r.get()
	time.Sleep(60 * time.Millisecond)
	if _, n2 := r.get(); n2 != n || n != 3 {
		t.Errorf("writes: %d after three lines, %d after idling; want 3 and 3", n, n2)
	}
}

func TestLineBufferReportsWriteError(t *testing.T) {
	r := recorder{err: errors.New("disk full")}
	b := newLineBuffer(&r, time.Hour, 1<<20)
	if _, err := b.Write([]byte("a\n")); err != nil {
		t.Fatalf("first Write: %v (nothing was written yet)", err)
	}
	if err := b.Flush(); err == nil {
		t.Fatal("Flush hid the sink's error")
	}
	if _, err := b.Write([]byte("b\n")); err == nil {
		t.Fatal("Write after a failed flush reported no error")
	}
}

// TestLineBufferConcurrentLines: lines logged from many goroutines come out whole, each once
// (run with -race).
func TestLineBufferConcurrentLines(t *testing.T) {
	var r recorder
	b := newLineBuffer(&r, time.Millisecond, 512)
	log := slog.New(slog.NewJSONHandler(b, nil))
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 200 {
				log.Info("review", "g", g, "i", i)
			}
		})
	}
	wg.Wait()
	if err := b.Flush(); err != nil {
		t.Fatal(err)
	}
	out, _ := r.get()
	seen := map[string]bool{}
	for _, l := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
		if !strings.HasPrefix(l, `{"time":`) || !strings.HasSuffix(l, "}") {
			t.Fatalf("broken line %q", l)
		}
		i := strings.Index(l, `"g":`)
		k := l[i:]
		if seen[k] {
			t.Fatalf("line twice: %s", k)
		}
		seen[k] = true
	}
	if len(seen) != 8*200 {
		t.Errorf("%d lines, want %d", len(seen), 8*200)
	}
}

// TestFlushOnLevel: WARN and above reach the sink as they are logged (what explains a crash is
// not in the window it loses); INFO waits for the batch. Attributes and groups keep the flush.
func TestFlushOnLevel(t *testing.T) {
	var r recorder
	b := newLineBuffer(&r, time.Hour, 1<<20)
	log := slog.New(flushOnLevel{Handler: slog.NewJSONHandler(b, nil), min: slog.LevelWarn, flush: b.Flush})
	log.Info("review")
	if got, _ := r.get(); got != "" {
		t.Fatalf("INFO written at once: %q", got)
	}
	log.With("uid", "u1").WithGroup("g").Warn("bad review", "code", 400)
	got, n := r.get()
	if n != 1 || !strings.Contains(got, `"msg":"review"`) || !strings.Contains(got, `"uid":"u1","g":{"code":400}`) {
		t.Fatalf("after a WARN: %d writes %q; want the INFO line and the WARN line in one write", n, got)
	}
	var plain bytes.Buffer
	slog.New(slog.NewJSONHandler(&plain, nil)).With("uid", "u1").WithGroup("g").Warn("bad review", "code", 400)
	if !strings.HasSuffix(got, plain.String()[strings.Index(plain.String(), `"level"`):]) {
		t.Errorf("the WARN line differs from the plain handler's:\n%s\n%s", got, plain.String())
	}
}

// TestServeFlushesLogOnShutdown runs serve in-process (local mode, 127.0.0.1), answers one
// review, stops it as SIGTERM does, and requires every line, the review's and the last one
// ("stopped"), in its stderr the moment it returns: the orderly way out loses nothing, without
// waiting for the flush interval.
func TestServeFlushesLogOnShutdown(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	t.Setenv("POD_NAMESPACE", "")
	dir := t.TempDir()
	if err := certs.WriteDev(certs.DevOptions{Dir: dir, Hosts: []string{"127.0.0.1"}}); err != nil {
		t.Fatal(err)
	}
	stderr := &lockedBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"serve", "--listen", "127.0.0.1:0", "--tls-cert-file", filepath.Join(dir, "tls.crt"),
			"--tls-key-file", filepath.Join(dir, "tls.key"), "--sweeper=false"}, &lockedBuffer{}, stderr)
	}()
	listenRE := regexp.MustCompile(`"msg":"serving","listen":"([0-9.:]+)"`)
	waitUntil(t, "the serving line", func() bool { return listenRE.MatchString(stderr.String()) })
	addr := listenRE.FindStringSubmatch(stderr.String())[1]

	pem, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
	review := `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"flush-0001",` +
		`"kind":{"group":"","version":"v1","kind":"Pod"},"namespace":"demo","name":"p","operation":"CREATE",` +
		`"userInfo":{"username":"u"},"object":{"metadata":{"name":"p"}}}}`
	resp, err := client.Post("https://"+addr+"/mutate/pods?timeout=10s", "application/json", strings.NewReader(review))
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("HTTP %d", resp.StatusCode)
	}
	client.CloseIdleConnections()
	cancel()
	if rc := <-done; rc != 0 {
		t.Fatalf("serve exited %d:\n%s", rc, stderr.String())
	}
	out := stderr.String()
	for _, want := range []string{`"msg":"review","uid":"flush-0001"`, `"msg":"stopped"`} {
		if !strings.Contains(out, want) {
			t.Errorf("stderr lacks %s once serve returned:\n%s", want, out)
		}
	}
	if !strings.HasSuffix(out, "\"msg\":\"stopped\"}\n") {
		t.Errorf("the last line is not the stopped line:\n%s", out)
	}
}
