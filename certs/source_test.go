package certs

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func serve(t *testing.T, dir string, poll time.Duration) (addr string, src *FileSource) {
	t.Helper()
	src, err := NewFileSource(filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"), poll, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go src.Run(ctx)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", ServerConfig(src, false, nil))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {}), ReadHeaderTimeout: time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String(), src
}

func pool(t *testing.T, dir string) *x509.CertPool {
	t.Helper()
	pem, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	p := x509.NewCertPool()
	p.AppendCertsFromPEM(pem)
	return p
}

func peerSerial(t *testing.T, addr string, roots *x509.CertPool) string {
	t.Helper()
	conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: roots, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].SerialNumber.String()
}

// Rotation as cert-manager does it: the files are replaced while the server runs; a new
// connection must see the new certificate without a restart (within 15 s).
func TestRotationWithoutRestart(t *testing.T) {
	dir := t.TempDir()
	if err := WriteDev(DevOptions{Dir: dir, Hosts: []string{"127.0.0.1", "localhost"}}); err != nil {
		t.Fatal(err)
	}
	addr, src := serve(t, dir, time.Second)
	roots := pool(t, dir)
	first := peerSerial(t, addr, roots)
	if err := src.Healthy(); err != nil {
		t.Fatal(err)
	}
	if err := WriteDev(DevOptions{Dir: dir, Hosts: []string{"127.0.0.1"}, ReuseCA: true}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		if s := peerSerial(t, addr, roots); s != first {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("new connections still get the old certificate 15 s after rotation")
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// The source reports its reloads and the expiry of the pair in use at scrape time.
func TestSourceMetrics(t *testing.T) {
	dir := t.TempDir()
	if err := WriteDev(DevOptions{Dir: dir, Hosts: []string{"127.0.0.1"}, Validity: 48 * time.Hour}); err != nil {
		t.Fatal(err)
	}
	src, err := NewFileSource(filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"), time.Hour, nil)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(src)
	gather := func() (loaded, failed, notAfter float64) {
		t.Helper()
		families, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range families {
			for _, m := range f.GetMetric() {
				switch {
				case f.GetName() == "credential_webhook_certificate_not_after_timestamp_seconds":
					notAfter = m.GetGauge().GetValue()
				case m.GetLabel()[0].GetValue() == "loaded":
					loaded = m.GetCounter().GetValue()
				case m.GetLabel()[0].GetValue() == "failed":
					failed = m.GetCounter().GetValue()
				}
			}
		}
		return loaded, failed, notAfter
	}
	first := src.cert.Leaf.NotAfter
	if l, f, na := gather(); l != 1 || f != 0 || na != float64(first.Unix()) {
		t.Fatalf("after the first load: loaded %v failed %v notAfter %v; want 1, 0, %d", l, f, na, first.Unix())
	}
	// A half-written rotation (certificate replaced, key not yet) keeps the old pair and counts.
	if err := os.WriteFile(filepath.Join(dir, "tls.key"), []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := src.reload(); err == nil {
		t.Fatal("a broken key loaded")
	}
	if l, f, na := gather(); l != 1 || f != 1 || na != float64(first.Unix()) {
		t.Fatalf("after a failed reload: loaded %v failed %v notAfter %v", l, f, na)
	}
	if err := WriteDev(DevOptions{Dir: dir, Hosts: []string{"127.0.0.1"}, ReuseCA: true, Validity: 96 * time.Hour}); err != nil {
		t.Fatal(err)
	}
	if swapped, err := src.reload(); !swapped || err != nil {
		t.Fatalf("reload after rotation = %v, %v", swapped, err)
	}
	if l, f, na := gather(); l != 2 || f != 1 || na != float64(src.cert.Leaf.NotAfter.Unix()) || na <= float64(first.Unix()) {
		t.Fatalf("after the rotation: loaded %v failed %v notAfter %v (first %d)", l, f, na, first.Unix())
	}
}

// Kubernetes swaps Secret volumes through a "..data" symlink; a swap must be picked up too.
func TestRotationBySymlinkSwap(t *testing.T) {
	root := t.TempDir()
	v1, v2 := filepath.Join(root, "..v1"), filepath.Join(root, "..v2")
	if err := WriteDev(DevOptions{Dir: v1, Hosts: []string{"127.0.0.1"}}); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("..v1", filepath.Join(root, "..data")); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"tls.crt", "tls.key", "ca.crt"} {
		if err := os.Symlink(filepath.Join("..data", f), filepath.Join(root, f)); err != nil {
			t.Fatal(err)
		}
	}
	addr, _ := serve(t, root, time.Second)
	roots := pool(t, v1)
	first := peerSerial(t, addr, roots)
	// New pair signed by the same CA in a new folder, then an atomic symlink swap.
	if err := os.MkdirAll(v2, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"ca.crt", "ca.key"} {
		b, _ := os.ReadFile(filepath.Join(v1, f))
		_ = os.WriteFile(filepath.Join(v2, f), b, 0o600)
	}
	if err := WriteDev(DevOptions{Dir: v2, Hosts: []string{"127.0.0.1"}, ReuseCA: true}); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(root, "..data_tmp")
	_ = os.Symlink("..v2", tmp)
	if err := os.Rename(tmp, filepath.Join(root, "..data")); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for peerSerial(t, addr, roots) == first {
		if time.Now().After(deadline) {
			t.Fatal("symlink swap not picked up within 15 s")
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// A half-written rotation (certificate without its key) keeps the previous pair in service.
func TestBrokenRotationKeepsServing(t *testing.T) {
	dir := t.TempDir()
	if err := WriteDev(DevOptions{Dir: dir, Hosts: []string{"127.0.0.1"}}); err != nil {
		t.Fatal(err)
	}
	addr, src := serve(t, dir, time.Hour)
	roots := pool(t, dir)
	first := peerSerial(t, addr, roots)
	if err := os.WriteFile(filepath.Join(dir, "tls.key"), []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := src.reload(); err == nil {
		t.Fatal("reload of a broken pair succeeded")
	}
	if got := peerSerial(t, addr, roots); got != first {
		t.Fatal("certificate changed after a broken rotation")
	}
	if err := src.Healthy(); err != nil {
		t.Fatalf("healthy should still hold the previous pair: %v", err)
	}
}

func TestOldTLSRefused(t *testing.T) {
	dir := t.TempDir()
	if err := WriteDev(DevOptions{Dir: dir, Hosts: []string{"127.0.0.1"}}); err != nil {
		t.Fatal(err)
	}
	addr, _ := serve(t, dir, time.Hour)
	for _, v := range []uint16{tls.VersionTLS10, tls.VersionTLS11} {
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr,
			&tls.Config{InsecureSkipVerify: true, MinVersion: v, MaxVersion: v}) //nolint:gosec // the point of the test
		if err == nil {
			conn.Close()
			t.Errorf("TLS version %x accepted", v)
		}
	}
	conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool(t, dir), ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12, MaxVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatalf("TLS 1.2 refused: %v", err)
	}
	if p := conn.ConnectionState().NegotiatedProtocol; p == "h2" {
		t.Errorf("HTTP/2 negotiated while off")
	}
	conn.Close()
}

func TestWriteDevErrors(t *testing.T) {
	if err := WriteDev(DevOptions{Dir: t.TempDir()}); err == nil {
		t.Error("no hosts accepted")
	}
	if err := WriteDev(DevOptions{Dir: t.TempDir(), Hosts: []string{"x"}, ReuseCA: true}); err == nil {
		t.Error("reuse of a missing CA accepted")
	}
	if _, err := NewFileSource("/nonexistent/tls.crt", "/nonexistent/tls.key", 0, nil); err == nil {
		t.Error("missing files accepted")
	}
}
