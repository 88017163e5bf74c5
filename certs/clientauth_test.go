package certs

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"log"
	"net/http"
	"path/filepath"
	"testing"
	"time"
)

// clientPair signs a client certificate with the development CA in dir.
func clientPair(t *testing.T, dir string) tls.Certificate {
	t.Helper()
	ca, caKey, err := readCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: serial(), Subject: pkix.Name{CommonName: "kube-apiserver"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func TestRequireClientCert(t *testing.T) {
	dir := t.TempDir()
	if err := WriteDev(DevOptions{Dir: dir, Hosts: []string{"127.0.0.1"}}); err != nil {
		t.Fatal(err)
	}
	src, err := NewFileSource(filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"), time.Hour, nil)
	if err != nil {
		t.Fatal(err)
	}
	cas, err := LoadClientCAs(filepath.Join(dir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	ok := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {})
	mux := http.NewServeMux()
	mux.Handle("/healthz", ok)
	mux.Handle("/mutate/", RequireClientCert(ok, nil))
	ln, err := tls.Listen("tcp", "127.0.0.1:0", ServerConfig(src, false, cas))
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: time.Second, ErrorLog: log.New(io.Discard, "", 0)}
	go func() { _ = hs.Serve(ln) }()
	defer hs.Close()
	url := "https://" + ln.Addr().String()

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
	if _, err := LoadClientCAs(filepath.Join(dir, "tls.key")); err == nil {
		t.Error("a key file was accepted as a CA bundle")
	}
}

func ptr[T any](v T) *T { return &v }
