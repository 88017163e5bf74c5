package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// BenchmarkServeRSSUnderMaxBodies measures the peak resident memory (VmHWM, /proc/PID/status)
// of the real binary while 200 clients post maximum-size reviews at once (issue 16): Pod reviews
// just under the Pods route's 4 MiB body limit and ServiceAccount reviews just under their
// 1 MiB + 64 KiB, over TLS on 127.0.0.1, with GOMEMLIMIT=256MiB as the chart sets it from its
// memory limit. It reports the peak as peak-RSS-MiB and how many reviews were answered 200 and
// 429; it asserts nothing about time. Each sub-benchmark starts its own process:
//
//	go test -run '^$' -bench ServeRSSUnderMaxBodies -benchtime 3x .
//
// "default" runs with the default --max-inflight-review-bytes and --max-inflight-reviews,
// "unlimited" with -1 for both, for comparison.
func BenchmarkServeRSSUnderMaxBodies(b *testing.B) {
	dir := b.TempDir()
	bin := filepath.Join(dir, "credential-webhook")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		b.Fatalf("go build: %v\n%s", err, out)
	}
	if out, err := exec.Command(bin, "certs", "--dir", filepath.Join(dir, "certs"), "--hosts", "127.0.0.1,localhost").CombinedOutput(); err != nil {
		b.Fatalf("certs: %v\n%s", err, out)
	}
	pods := maxReview("Pod", "", 4<<20)
	sas := maxReview("ServiceAccount", "", 2*(512<<10)+(64<<10))
	for _, mode := range []struct {
		name string
		args []string
	}{{"default", nil}, {"unlimited", []string{"--max-inflight-reviews=-1", "--max-inflight-review-bytes=-1"}}} {
		b.Run(mode.name, func(b *testing.B) {
			srv := startBinary(b, bin, dir, mode.args...)
			client := srv.client(200)
			var ok, limited, other int
			for b.Loop() {
				var wg sync.WaitGroup
				var mu sync.Mutex
				for i := range 200 {
					body, path := pods, "/mutate/pods"
					if i%4 == 3 {
						body, path = sas, "/mutate/serviceaccounts"
					}
					wg.Go(func() {
						res, err := client.Post(srv.url+path, "application/json", bytes.NewReader(body))
						code := 0
						if err == nil {
							_, _ = io.Copy(io.Discard, res.Body)
							res.Body.Close()
							code = res.StatusCode
						}
						mu.Lock()
						defer mu.Unlock()
						switch code {
						case 200:
							ok++
						case 429:
							limited++
						default:
							other++
						}
					})
				}
				wg.Wait()
			}
			hwm, rss := srv.memory(b)
			b.ReportMetric(hwm, "peak-RSS-MiB")
			b.ReportMetric(rss, "RSS-after-MiB")
			b.ReportMetric(float64(ok)/float64(b.N), "answered-200/op")
			b.ReportMetric(float64(limited)/float64(b.N), "answered-429/op")
			if other > 0 {
				b.Logf("%d reviews failed otherwise (connection errors, other codes)", other)
			}
			b.Logf("%s: peak RSS %.1f MiB (VmHWM), %.1f MiB after; per round of 200: %d answered 200, %d answered 429",
				mode.name, hwm, rss, ok/b.N, limited/b.N)
		})
	}
}

// maxReview is an AdmissionReview of kind whose body is just under size bytes.
func maxReview(kind, group string, size int) []byte {
	head := `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"group":"` + group +
		`","version":"v1","kind":"` + kind + `"},"operation":"CREATE","namespace":"demo","name":"big",` +
		`"userInfo":{"username":"tenant"},"object":{"metadata":{"name":"big","annotations":{"a":"`
	tail := `"}}}}}`
	return []byte(head + strings.Repeat("x", size-len(head)-len(tail)-16) + tail)
}

type binaryServer struct {
	url string
	cmd *exec.Cmd
	ca  *x509.CertPool
}

func startBinary(b *testing.B, bin, dir string, extra ...string) *binaryServer {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	args := append([]string{"serve", "--listen", addr, "--tls-cert-file", filepath.Join(dir, "certs", "tls.crt"),
		"--tls-key-file", filepath.Join(dir, "certs", "tls.key"), "--log-level", "error"}, extra...)
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), "GOMEMLIMIT=256MiB", "KUBERNETES_SERVICE_HOST=", "AWS_EC2_METADATA_DISABLED=true")
	var logs bytes.Buffer
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	pem, err := os.ReadFile(filepath.Join(dir, "certs", "ca.crt"))
	if err != nil {
		b.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	s := &binaryServer{url: "https://" + addr, cmd: cmd, ca: pool}
	c := s.client(1)
	for deadline := time.Now().Add(20 * time.Second); ; {
		res, err := c.Get(s.url + "/healthz")
		if err == nil {
			res.Body.Close()
			if res.StatusCode == 200 {
				return s
			}
		}
		if time.Now().After(deadline) {
			b.Fatalf("server not ready: %v\n%s", err, logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (s *binaryServer) client(conns int) *http.Client {
	return &http.Client{Timeout: time.Minute, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: s.ca, MinVersion: tls.VersionTLS12}, MaxIdleConnsPerHost: conns, MaxConnsPerHost: conns,
		DialContext: (&net.Dialer{}).DialContext, ForceAttemptHTTP2: false,
	}}
}

// memory reads VmHWM and VmRSS of the process, in MiB.
func (s *binaryServer) memory(b *testing.B) (hwm, rss float64) {
	b.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", s.cmd.Process.Pid))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || (k != "VmHWM" && k != "VmRSS") {
			continue
		}
		kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
		if k == "VmHWM" {
			hwm = kb / 1024
		} else {
			rss = kb / 1024
		}
	}
	return hwm, rss
}
