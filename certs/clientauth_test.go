package certs

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"log"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// clientPair signs a client certificate for "kube-apiserver" with the development CA in dir.
func clientPair(t *testing.T, dir string) tls.Certificate {
	t.Helper()
	return namedClientPair(t, dir, "kube-apiserver")
}

// namedClientPair signs a client certificate with common name cn and DNS SANs dns.
func namedClientPair(t *testing.T, dir, cn string, dns ...string) tls.Certificate {
	t.Helper()
	ca, caKey, err := readCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: serial(), Subject: pkix.Name{CommonName: cn}, DNSNames: dns,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func TestRequireClientCert(t *testing.T) {
	url, dir := testServer(t, nil)

	// A client certificate from another CA must not pass.
	other := t.TempDir()
	if err := WriteDev(DevOptions{Dir: other, Hosts: []string{"x"}}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, path string
		cert       *tls.Certificate
		want       int // 0: handshake refused
	}{
		{"probe without a certificate", "/healthz", nil, 200},
		{"review without a certificate", "/mutate/pods", nil, 403},
		{"review with the apiserver's certificate", "/mutate/pods", ptr(clientPair(t, dir)), 200},
		{"review with a certificate from another CA", "/mutate/pods", ptr(clientPair(t, other)), 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := &tls.Config{RootCAs: pool(t, dir), ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
			if tc.cert != nil {
				cfg.Certificates = []tls.Certificate{*tc.cert}
			}
			c := &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}}
			res, err := c.Post(url+tc.path, "application/json", nil)
			if tc.want == 0 {
				if err == nil {
					res.Body.Close()
					t.Fatalf("accepted with HTTP %d", res.StatusCode)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			res.Body.Close()
			if res.StatusCode != tc.want {
				t.Fatalf("HTTP %d, want %d", res.StatusCode, tc.want)
			}
		})
	}
	if _, err := LoadClientCAs(filepath.Join(dir, "tls.key"), time.Hour, nil); err == nil {
		t.Error("a key file was accepted as a CA bundle")
	}
}

func ptr[T any](v T) *T { return &v }

// testServer serves ok on /healthz and, behind RequireClientCert(names), on /mutate/, over TLS
// with the development CA in a fresh directory as the client CA. It returns the URL and the
// directory (to sign client certificates with).
func testServer(t *testing.T, names map[string]bool) (url, dir string) {
	t.Helper()
	dir = t.TempDir()
	if err := WriteDev(DevOptions{Dir: dir, Hosts: []string{"127.0.0.1"}}); err != nil {
		t.Fatal(err)
	}
	src, err := NewFileSource(filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"), time.Hour, nil)
	if err != nil {
		t.Fatal(err)
	}
	cas, err := LoadClientCAs(filepath.Join(dir, "ca.crt"), time.Hour, nil)
	if err != nil {
		t.Fatal(err)
	}
	ok := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {})
	mux := http.NewServeMux()
	mux.Handle("/healthz", ok)
	mux.Handle("/mutate/", RequireClientCert(ok, names))
	ln, err := tls.Listen("tcp", "127.0.0.1:0", ServerConfig(src, false, cas))
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: time.Second, ErrorLog: log.New(io.Discard, "", 0)}
	go func() { _ = hs.Serve(ln) }()
	t.Cleanup(func() { _ = hs.Close() })
	return "https://" + ln.Addr().String(), dir
}

// post sends an empty POST to url presenting cert (nil: none) and returns the HTTP status.
func post(t *testing.T, dir, url string, cert *tls.Certificate) int {
	t.Helper()
	cfg := &tls.Config{RootCAs: pool(t, dir), ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	tr := &http.Transport{TLSClientConfig: cfg}
	defer tr.CloseIdleConnections()
	res, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Post(url, "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	return res.StatusCode
}

// With --allowed-client-names, a certificate the CA signed is not enough: any client the CA
// issued certificates to (the CA of a managed cluster signs many) could otherwise post reviews
// that count as the apiserver's (Authenticated, which lets a review write to IAM and RBAC).
func TestRequireClientCertNames(t *testing.T) {
	url, dir := testServer(t, ParseClientNames("kube-apiserver, webhook-client.kube-system.svc"))
	for _, tc := range []struct {
		name string
		cert *tls.Certificate
		want int
	}{
		{"listed common name", ptr(namedClientPair(t, dir, "kube-apiserver")), 200},
		{"listed DNS SAN, other common name", ptr(namedClientPair(t, dir, "apiserver-7f9c", "other.example", "webhook-client.kube-system.svc")), 200},
		{"signed by the CA, name not listed", ptr(namedClientPair(t, dir, "mallory")), 403},
		{"signed by the CA, unlisted DNS SAN", ptr(namedClientPair(t, dir, "mallory", "mallory.example")), 403},
		{"name extending a listed one", ptr(namedClientPair(t, dir, "kube-apiserver-x")), 403},
		{"listed name in another case", ptr(namedClientPair(t, dir, "Kube-Apiserver")), 403},
		{"empty common name", ptr(namedClientPair(t, dir, "")), 403},
		{"no certificate", nil, 403},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := post(t, dir, url+"/mutate/serviceaccounts", tc.cert); got != tc.want {
				t.Fatalf("HTTP %d, want %d", got, tc.want)
			}
		})
	}
	// Probes stay open without a certificate.
	if got := post(t, dir, url+"/healthz", nil); got != 200 {
		t.Fatalf("probe: HTTP %d", got)
	}
	// Without names, any certificate the CA signed passes (the names check is opt-in).
	url2, dir2 := testServer(t, nil)
	if got := post(t, dir2, url2+"/mutate/serviceaccounts", ptr(namedClientPair(t, dir2, "mallory"))); got != 200 {
		t.Fatalf("no names configured: HTTP %d, want 200", got)
	}
}

func TestParseClientNames(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
	}{
		{"", nil},
		{" , ,", nil},
		{"kube-apiserver", []string{"kube-apiserver"}},
		{" kube-apiserver , front-proxy-client,kube-apiserver", []string{"front-proxy-client", "kube-apiserver"}},
	} {
		got := ParseClientNames(tc.in)
		if len(got) != len(tc.want) {
			t.Errorf("ParseClientNames(%q) = %v, want %v", tc.in, got, tc.want)
			continue
		}
		for _, n := range tc.want {
			if !got[n] {
				t.Errorf("ParseClientNames(%q) = %v, lacks %q", tc.in, got, n)
			}
		}
		if got[""] {
			t.Errorf("ParseClientNames(%q) holds the empty name", tc.in)
		}
	}
}

// ClientNamed trusts only a verified chain: a certificate merely presented (PeerCertificates,
// as with tls.RequestClientCert) proves nothing about who holds it.
func TestClientNamed(t *testing.T) {
	leaf := func(cn string, dns ...string) *x509.Certificate {
		return &x509.Certificate{Subject: pkix.Name{CommonName: cn}, DNSNames: dns}
	}
	names := ParseClientNames("kube-apiserver,apiserver.example")
	for _, tc := range []struct {
		name  string
		state *tls.ConnectionState
		names map[string]bool
		want  bool
	}{
		{"no TLS", nil, names, false},
		{"TLS without a client certificate", &tls.ConnectionState{}, names, false},
		{"presented but not verified", &tls.ConnectionState{PeerCertificates: []*x509.Certificate{leaf("kube-apiserver")}}, names, false},
		{"verified, empty chain", &tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{}}}, names, false},
		{"verified, listed common name", &tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{leaf("kube-apiserver")}}}, names, true},
		{"verified, listed DNS SAN", &tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{leaf("x", "a.example", "apiserver.example")}}}, names, true},
		{"verified, unlisted", &tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{leaf("mallory", "mallory.example")}}}, names, false},
		// Only the leaf names the client; a listed name on the CA certificate does not count.
		{"listed name on the CA only", &tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{leaf("mallory"), leaf("kube-apiserver")}}}, names, false},
		{"no names configured", &tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{leaf("kube-apiserver")}}}, nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, _ := http.NewRequest(http.MethodPost, "https://127.0.0.1/mutate/serviceaccounts", nil)
			r.TLS = tc.state
			if got := ClientNamed(r, tc.names); got != tc.want {
				t.Fatalf("ClientNamed = %v, want %v", got, tc.want)
			}
		})
	}
}

// The client CA bundle is reloaded like the serving pair: after the CA that signs the
// apiserver's client certificate rotates, the new CA's certificates pass and the withdrawn
// CA's are refused, without a restart; a bundle that fails to parse keeps the previous one.
func TestClientCAReload(t *testing.T) {
	dir := t.TempDir()
	if err := WriteDev(DevOptions{Dir: dir, Hosts: []string{"127.0.0.1"}}); err != nil {
		t.Fatal(err)
	}
	next := t.TempDir()
	if err := WriteDev(DevOptions{Dir: next, Hosts: []string{"x"}}); err != nil {
		t.Fatal(err)
	}
	src, err := NewFileSource(filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"), time.Hour, nil)
	if err != nil {
		t.Fatal(err)
	}
	caDir := t.TempDir()
	caPath := filepath.Join(caDir, "ca.crt")
	copyFile(t, filepath.Join(dir, "ca.crt"), caPath)
	cas, err := LoadClientCAs(caPath, 20*time.Millisecond, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go cas.Run(ctx)

	ok := http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})
	ln, err := tls.Listen("tcp", "127.0.0.1:0", ServerConfig(src, false, cas))
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: RequireClientCert(ok, nil), ReadHeaderTimeout: time.Second, ErrorLog: log.New(io.Discard, "", 0)}
	go func() { _ = hs.Serve(ln) }()
	t.Cleanup(func() { _ = hs.Close() })
	url := "https://" + ln.Addr().String() + "/mutate/pods"

	oldCert, newCert := clientPair(t, dir), clientPair(t, next)
	if got := tryPost(t, dir, url, &oldCert); got != 200 {
		t.Fatalf("certificate of the loaded CA: %d, want 200", got)
	}
	if got := tryPost(t, dir, url, &newCert); got != 0 {
		t.Fatalf("certificate of a CA not yet loaded: %d, want a refused handshake", got)
	}

	// A broken bundle (a half-written rotation) keeps the old CA in service.
	if err := os.WriteFile(caPath, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		cas.mu.RLock()
		defer cas.mu.RUnlock()
		return cas.fails > 0
	})
	if got := tryPost(t, dir, url, &oldCert); got != 200 {
		t.Fatalf("after a broken bundle, the previous CA: %d, want 200", got)
	}

	copyFile(t, filepath.Join(next, "ca.crt"), caPath)
	waitFor(t, func() bool { return tryPost(t, dir, url, &newCert) == 200 })
	if got := tryPost(t, dir, url, &oldCert); got != 0 {
		t.Fatalf("certificate of the withdrawn CA: %d, want a refused handshake", got)
	}
}

// tryPost is post without failing the test on a refused handshake: 0 means refused.
func tryPost(t *testing.T, dir, url string, cert *tls.Certificate) int {
	t.Helper()
	cfg := &tls.Config{RootCAs: pool(t, dir), ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{*cert}}
	tr := &http.Transport{TLSClientConfig: cfg}
	defer tr.CloseIdleConnections()
	res, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Post(url, "application/json", nil)
	if err != nil {
		return 0
	}
	res.Body.Close()
	return res.StatusCode
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	// Write beside and rename, as a Secret volume swaps its files.
	tmp := to + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, to); err != nil {
		t.Fatal(err)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
