package harness

import (
	"bufio"
	"encoding/pem"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// echoServer answers every line with the same line.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	return ln.Addr().String()
}

// roundTrip writes a line on c and reads it back.
func roundTrip(c net.Conn, line string) (string, error) {
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, line+"\n"); err != nil {
		return "", err
	}
	got, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSuffix(got, "\n"), err
}

func TestHarnessAPIProxyCutAndRestore(t *testing.T) {
	p, err := NewAPIProxy(echoServer(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })

	open, err := net.Dial("tcp", p.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	if got, err := roundTrip(open, "before"); err != nil || got != "before" {
		t.Fatalf("through the proxy: %q, %v", got, err)
	}

	p.Cut()
	if !p.IsCut() {
		t.Error("IsCut = false after Cut")
	}
	// The open connection is gone: its next exchange fails instead of hanging.
	if got, err := roundTrip(open, "during"); err == nil {
		t.Errorf("open connection still answers after Cut: %q", got)
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Errorf("open connection hangs after Cut instead of failing: %v", err)
	}
	// New connections are accepted by the kernel and reset by the proxy.
	for range 3 {
		c, err := net.Dial("tcp", p.Addr)
		if err != nil {
			continue // refused is fine too: nothing gets through
		}
		if got, err := roundTrip(c, "new during"); err == nil {
			t.Errorf("new connection forwarded while cut: %q", got)
		} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Errorf("new connection hangs while cut instead of failing: %v", err)
		}
		c.Close()
	}

	p.Restore()
	c, err := net.Dial("tcp", p.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got, err := roundTrip(c, "after"); err != nil || got != "after" {
		t.Fatalf("after Restore: %q, %v", got, err)
	}

	st := p.Stats()
	if st.Forwarded != 2 || st.Severed != 1 || st.Reset < 1 || st.Reset > 3 {
		t.Errorf("stats = %+v; want 2 forwarded, 1 severed, 1-3 reset", st)
	}
	if err := p.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if c, err := net.DialTimeout("tcp", p.Addr, time.Second); err == nil {
		c.Close()
		t.Error("the proxy still accepts connections after Close")
	}
}

// The kubeconfig APIServerProxy writes reaches a TLS server through the proxy with the
// certificate still verified, and fails while the proxy is cut.
func TestHarnessAPIServerProxyKubeconfig(t *testing.T) {
	ts := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer secret-token" {
			http.Error(w, "no token", http.StatusUnauthorized)
			return
		}
		_, _ = io.WriteString(w, "ok")
	}))
	t.Cleanup(ts.Close)
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ts.Certificate().Raw})

	tests := []struct {
		name       string
		server     string // as the original kubeconfig names the server
		serverName string // want TLSServerName in the copy
	}{
		{"by address", ts.URL, ""},
		// httptest's certificate is valid for example.com; the original kubeconfig reaching it by
		// that name must keep verifying that name through the proxy.
		{"by name", strings.Replace(ts.URL, "127.0.0.1", "example.com", 1), "example.com"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			c := &Cluster{Dir: dir, APIServerURL: ts.URL, WebhookKubeconfig: filepath.Join(dir, "webhook.kubeconfig")}
			if err := writeKubeconfig(c.WebhookKubeconfig, tc.server, caPEM, "sa", clientAuth{token: "secret-token"}); err != nil {
				t.Fatal(err)
			}
			p, path := c.APIServerProxy(t)

			cfg, err := clientcmd.LoadFromFile(path)
			if err != nil {
				t.Fatal(err)
			}
			cl := cfg.Clusters["e2e"]
			if cl == nil || cl.Server != "https://"+p.Addr || cl.TLSServerName != tc.serverName {
				t.Fatalf("proxied cluster = %+v; want server https://%s, tls-server-name %q", cl, p.Addr, tc.serverName)
			}
			rc, err := clientcmd.BuildConfigFromFlags("", path)
			if err != nil {
				t.Fatal(err)
			}
			hc, err := rest.HTTPClientFor(rc)
			if err != nil {
				t.Fatal(err)
			}
			hc.Timeout = 5 * time.Second
			get := func() (int, error) {
				resp, err := hc.Get(rc.Host + "/")
				if err != nil {
					return 0, err
				}
				defer resp.Body.Close()
				_, _ = io.Copy(io.Discard, resp.Body)
				return resp.StatusCode, nil
			}
			if code, err := get(); err != nil || code != http.StatusOK {
				t.Fatalf("GET through the proxy: %d, %v", code, err)
			}
			p.Cut()
			if code, err := get(); err == nil {
				t.Fatalf("GET while cut answered %d", code)
			}
			p.Restore()
			if code, err := get(); err != nil || code != http.StatusOK {
				t.Fatalf("GET after Restore: %d, %v", code, err)
			}
		})
	}
}
