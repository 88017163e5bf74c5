// Package moto runs a real moto_server (moto 5.2.1: IAM, STS and S3 on one port) on a free 127.0.0.1 port
// so tests and demo tools talk to an AWS emulator instead of a home-made mock.
//
// The process runs in its own process group; Stop (and the test cleanup
// registered by Start) kills the whole group, so the Python interpreter and
// anything it spawned are gone even when the test fails. On Linux the child
// also gets SIGKILL if the Go process dies without running cleanups (a test
// binary killed by -timeout).
package moto

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
)

const (
	// AccountID is the account moto answers for (its default, MOTO_ACCOUNT_ID unset).
	AccountID = "123456789012"
	// Region is the region Env and AWSConfig use.
	Region = "us-east-1"
	// Binary is the executable looked up on PATH.
	Binary = "moto_server"
	// InstallHint is shown when Binary is missing.
	InstallHint = "install with: pip install 'moto[server]==5.2.1'"

	// moto imports a large Python package tree; a cold start on a loaded
	// 2-core machine takes a few seconds.
	readyTimeout = 60 * time.Second
	// A free port found by binding :0 can be taken by someone else before
	// moto binds it; a few attempts make that race harmless.
	startAttempts = 3
)

// ErrNotInstalled is returned (wrapped) by StartProcess when moto_server is not on PATH.
var ErrNotInstalled = errors.New(Binary + " not found on PATH; " + InstallHint)

// Server is a running moto_server.
type Server struct {
	// Endpoint is the base URL, http://127.0.0.1:PORT.
	Endpoint string

	cmd      *exec.Cmd
	exited   chan struct{} // closed when cmd.Wait returned
	waitErr  error         // valid after exited is closed
	stopOnce sync.Once
	stopErr  error
}

// Start starts moto_server for tb and stops it in tb.Cleanup. It fails the
// test (never skips) when moto_server is missing or does not come up. moto's
// own log is replayed into the test log when the test fails.
func Start(tb testing.TB) *Server {
	tb.Helper()
	logs := &syncBuffer{}
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout+10*time.Second)
	defer cancel()
	s, err := StartProcess(ctx, logs)
	if err != nil {
		tb.Fatalf("moto: %v\nmoto_server output:\n%s", err, logs.String())
	}
	tb.Cleanup(func() {
		if err := s.Stop(); err != nil {
			tb.Errorf("moto: stop: %v", err)
		}
		if tb.Failed() {
			tb.Logf("moto_server output (%s):\n%s", s.Endpoint, logs.tail(64<<10))
		}
	})
	return s
}

// StartProcess starts moto_server and waits until it answers HTTP. logw
// receives moto's stdout and stderr (nil discards them). The caller must call
// Stop. ctx bounds only the start-up, not the server's lifetime.
func StartProcess(ctx context.Context, logw io.Writer) (*Server, error) {
	bin, err := exec.LookPath(Binary)
	if err != nil {
		return nil, fmt.Errorf("moto: %w", ErrNotInstalled)
	}
	var lastErr error
	for range startAttempts {
		s, err := startOnce(ctx, bin, logw)
		if err == nil {
			return s, nil
		}
		lastErr = err
		if ctx.Err() != nil {
			break
		}
	}
	return nil, lastErr
}

func startOnce(ctx context.Context, bin string, logw io.Writer) (*Server, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	// Not exec.CommandContext: ctx limits the start-up only, the server
	// outlives it until Stop.
	cmd := exec.Command(bin, "-H", "127.0.0.1", "-p", strconv.Itoa(port))
	if logw != nil { // nil: /dev/null, no copying goroutines
		cmd.Stdout = logw
		cmd.Stderr = logw
	}
	cmd.SysProcAttr = procAttr()
	// Should anything outside the group inherit moto's output pipe, Wait
	// still returns soon after the process is gone.
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("moto: start %s: %w", bin, err)
	}
	s := &Server{
		Endpoint: "http://127.0.0.1:" + strconv.Itoa(port),
		cmd:      cmd,
		exited:   make(chan struct{}),
	}
	go func() {
		s.waitErr = cmd.Wait()
		close(s.exited)
	}()
	if err := s.waitReady(ctx); err != nil {
		_ = s.Stop()
		return nil, err
	}
	return s, nil
}

// waitReady polls until moto answers any HTTP request, the process exits,
// or ctx/readyTimeout ends.
func (s *Server) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	client := &http.Client{Timeout: 2 * time.Second}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.Endpoint+"/moto-api/", nil)
		if err != nil {
			return fmt.Errorf("moto: readiness request: %w", err)
		}
		if resp, err := client.Do(req); err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
			return nil
		}
		select {
		case <-s.exited:
			return fmt.Errorf("moto: %s exited before answering on %s: %v", Binary, s.Endpoint, s.waitErr)
		case <-ctx.Done():
			return fmt.Errorf("moto: %s not answering on %s: %w", Binary, s.Endpoint, ctx.Err())
		case <-tick.C:
		}
	}
}

// Stop kills moto's whole process group and waits for the process. It is
// safe to call more than once; only the first call does work.
func (s *Server) Stop() error {
	s.stopOnce.Do(func() {
		// moto keeps all state in memory, so there is nothing to flush:
		// SIGKILL to the group is both the fastest and the surest stop.
		pid := s.cmd.Process.Pid
		if err := syscall.Kill(-pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			s.stopErr = fmt.Errorf("moto: kill process group %d: %w", pid, err)
		}
		select {
		case <-s.exited:
		case <-time.After(10 * time.Second):
			s.stopErr = errors.Join(s.stopErr, fmt.Errorf("moto: process %d did not exit after SIGKILL", pid))
		}
	})
	return s.stopErr
}

// Pid is the process id of moto_server, which is also its process group id.
func (s *Server) Pid() int { return s.cmd.Process.Pid }

// Env is the environment that points AWS SDKs and CLIs (and restic) at this
// server with dummy credentials, and keeps them away from cloud metadata.
func (s *Server) Env() []string {
	return []string{
		"AWS_ENDPOINT_URL=" + s.Endpoint,
		"AWS_ACCESS_KEY_ID=test",
		"AWS_SECRET_ACCESS_KEY=test",
		"AWS_REGION=" + Region,
		"AWS_DEFAULT_REGION=" + Region,
		"AWS_EC2_METADATA_DISABLED=true",
	}
}

// SetEnv sets Env with tb.Setenv (restored after the test; not for parallel tests).
func (s *Server) SetEnv(tb testing.TB) {
	tb.Helper()
	for _, kv := range s.Env() {
		k, v, _ := strings.Cut(kv, "=")
		tb.Setenv(k, v)
	}
}

// AWSConfig returns an aws-sdk-go-v2 config with static test credentials
// and BaseEndpoint = Endpoint. It is built directly rather than through
// config.LoadDefaultConfig so that neither the environment, ~/.aws files nor
// the EC2 metadata service can influence a test.
func (s *Server) AWSConfig(ctx context.Context) (aws.Config, error) {
	return ConfigFor(s.Endpoint), nil
}

// ConfigFor is AWSConfig for any endpoint, e.g. a proxy in front of moto.
func ConfigFor(endpoint string) aws.Config {
	return aws.Config{
		Region:       Region,
		Credentials:  aws.NewCredentialsCache(credentials.NewStaticCredentialsProvider("test", "test", "")),
		BaseEndpoint: aws.String(endpoint),
	}
}

// Reset wipes all of moto's state (POST /moto-api/reset), for tests that
// share one server.
func (s *Server) Reset(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.Endpoint+"/moto-api/reset", nil)
	if err != nil {
		return fmt.Errorf("moto: reset: %w", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("moto: reset: %w", err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("moto: reset: HTTP %d", resp.StatusCode)
	}
	return nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("moto: find free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// syncBuffer collects moto's output; the process writes from its own
// goroutines (os/exec copies) while the test may read it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// tail returns at most the last n bytes, so a long test does not flood the log.
func (b *syncBuffer) tail(n int) string {
	s := b.String()
	if len(s) > n {
		return "...\n" + s[len(s)-n:]
	}
	return s
}
