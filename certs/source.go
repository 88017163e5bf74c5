package certs

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/prometheus/client_golang/prometheus"
)

// FileSource serves the certificate pair found at two paths and reloads it when the files change.
//
// Kubernetes updates a Secret volume by writing a new timestamped folder and swapping the
// "..data" symlink, so watching the files themselves misses rotations: the watch is on the
// folders, and a periodic poll backs it up (watches can be lost, and some filesystems have none).
// A pair that fails to load (a half-written rotation) leaves the previous one in service.
type FileSource struct {
	certFile, keyFile string
	poll              time.Duration
	log               *slog.Logger

	mu      sync.RWMutex
	cert    *tls.Certificate
	raw     []byte // cert+key bytes of the loaded pair, to skip reloads that change nothing
	loadErr error
	loaded  time.Time
	loads   uint64 // pairs swapped in, the first included
	fails   uint64 // reloads that kept the previous pair
}

// NewFileSource loads the pair once; it fails when the first load fails.
func NewFileSource(certFile, keyFile string, poll time.Duration, log *slog.Logger) (*FileSource, error) {
	if poll <= 0 {
		poll = 10 * time.Second
	}
	s := &FileSource{certFile: certFile, keyFile: keyFile, poll: poll, log: log}
	if _, err := s.reload(); err != nil {
		return nil, err
	}
	return s, nil
}

// GetCertificate is for tls.Config.GetCertificate: every new connection gets the current pair.
func (s *FileSource) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.cert == nil {
		return nil, errors.New("no serving certificate loaded")
	}
	return s.cert, nil
}

// Healthy reports an error when no certificate is loaded or the loaded one has expired.
func (s *FileSource) Healthy() error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.cert == nil {
		return errors.New("no serving certificate loaded")
	}
	if s.cert.Leaf != nil && time.Now().After(s.cert.Leaf.NotAfter) {
		return fmt.Errorf("serving certificate expired at %s", s.cert.Leaf.NotAfter.Format(time.RFC3339))
	}
	return nil
}

// reload reads the pair and swaps it in when it changed. It reports whether it swapped.
func (s *FileSource) reload() (bool, error) {
	certPEM, err := os.ReadFile(s.certFile)
	if err != nil {
		return false, s.fail(fmt.Errorf("reading certificate: %w", err))
	}
	keyPEM, err := os.ReadFile(s.keyFile)
	if err != nil {
		return false, s.fail(fmt.Errorf("reading key: %w", err))
	}
	raw := append(append([]byte{}, certPEM...), keyPEM...)
	s.mu.RLock()
	same := bytes.Equal(raw, s.raw)
	s.mu.RUnlock()
	if same {
		return false, nil
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return false, s.fail(fmt.Errorf("loading key pair: %w", err))
	}
	if pair.Leaf == nil {
		pair.Leaf, _ = x509.ParseCertificate(pair.Certificate[0])
	}
	s.mu.Lock()
	s.cert, s.raw, s.loadErr, s.loaded = &pair, raw, nil, time.Now()
	s.loads++
	s.mu.Unlock()
	if s.log != nil {
		s.log.Info("serving certificate loaded", "file", s.certFile, "notAfter", pair.Leaf.NotAfter, "serial", pair.Leaf.SerialNumber.String())
	}
	return true, nil
}

func (s *FileSource) fail(err error) error {
	s.mu.Lock()
	s.loadErr = err
	s.fails++
	s.mu.Unlock()
	if s.log != nil {
		s.log.Warn("serving certificate not reloaded; keeping the previous one", "error", err)
	}
	return err
}

var (
	reloadsDesc = prometheus.NewDesc("credential_webhook_certificate_reloads_total",
		"Serving certificate pairs read from disk: loaded (swapped in, the first included) or failed (the previous pair kept serving).",
		[]string{"result"}, nil)
	notAfterDesc = prometheus.NewDesc("credential_webhook_certificate_not_after_timestamp_seconds",
		"Expiry of the serving certificate in use (Unix seconds): alert when it comes near, cert-manager did not rotate it.",
		nil, nil)
)

// Describe implements prometheus.Collector.
func (s *FileSource) Describe(ch chan<- *prometheus.Desc) {
	ch <- reloadsDesc
	ch <- notAfterDesc
}

// Collect implements prometheus.Collector: the figures are read at scrape time, so the source
// needs no registry of its own.
func (s *FileSource) Collect(ch chan<- prometheus.Metric) {
	s.mu.RLock()
	loads, fails, cert := s.loads, s.fails, s.cert
	s.mu.RUnlock()
	ch <- prometheus.MustNewConstMetric(reloadsDesc, prometheus.CounterValue, float64(loads), "loaded")
	ch <- prometheus.MustNewConstMetric(reloadsDesc, prometheus.CounterValue, float64(fails), "failed")
	if cert != nil && cert.Leaf != nil {
		ch <- prometheus.MustNewConstMetric(notAfterDesc, prometheus.GaugeValue, float64(cert.Leaf.NotAfter.Unix()))
	}
}

// Run watches and polls until ctx ends.
func (s *FileSource) Run(ctx context.Context) {
	watchFiles(ctx, s.poll, s.log, func() { _, _ = s.reload() }, s.certFile, s.keyFile)
}

// watchFiles calls reload when a folder holding one of files changes, and every poll, until ctx
// ends.
func watchFiles(ctx context.Context, poll time.Duration, log *slog.Logger, reload func(), files ...string) {
	var events <-chan fsnotify.Event
	if w, err := fsnotify.NewWatcher(); err == nil {
		defer w.Close()
		for _, dir := range uniqueDirs(files...) {
			if err := w.Add(dir); err != nil && log != nil {
				log.Warn("cannot watch certificate folder; relying on polling", "dir", dir, "error", err)
			}
		}
		events = w.Events
	}
	t := time.NewTicker(poll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-events:
			// Let a multi-file update (key, then certificate, then symlink swap) settle.
			time.Sleep(100 * time.Millisecond)
			reload()
		case <-t.C:
			reload()
		}
	}
}

func uniqueDirs(paths ...string) []string {
	seen := map[string]bool{}
	var out []string
	for _, p := range paths {
		d := filepath.Dir(p)
		if !seen[d] {
			seen[d] = true
			out = append(out, d)
		}
	}
	return out
}

// ServerConfig is the TLS configuration for serving: TLS 1.2 or newer, certificates from src,
// and HTTP/1.1 only unless http2 is set (HTTP/2 rapid-reset and stream-exhaustion advisories made
// the Kubernetes webhooks turn it off by default).
//
// clientCAs, when not nil, makes the server verify client certificates signed by the bundle it
// currently holds, when a client presents one (the apiserver does, when its
// AdmissionConfiguration gives it a client certificate for this webhook); whether one is required
// is decided per route (RequireClientCert), so kubelet probes of /healthz and /readyz keep working
// without one. The bundle is read per handshake, so a rotated CA applies to the next connection.
func ServerConfig(src *FileSource, http2 bool, clientCAs *CAFile) *tls.Config {
	protos := []string{"http/1.1"}
	if http2 {
		protos = []string{"h2", "http/1.1"}
	}
	cfg := &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: src.GetCertificate,
		NextProtos:     protos,
	}
	if clientCAs != nil {
		base := cfg.Clone()
		base.ClientAuth = tls.VerifyClientCertIfGiven
		cfg.GetConfigForClient = clientCAs.configFor(base)
	}
	return cfg
}

// RequireClientCert refuses requests that did not present a client certificate verified
// against the configured client CAs and, when names is not empty, named by one of them (see
// ClientNamed). Without it, anything that can reach the port can post a forged AdmissionReview
// claiming to be any user.
func RequireClientCert(next http.Handler, names map[string]bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 {
			http.Error(w, "a client certificate signed by --client-ca-file is required", http.StatusForbidden)
			return
		}
		if len(names) > 0 && !ClientNamed(r, names) {
			http.Error(w, "the client certificate's name is not in --allowed-client-names", http.StatusForbidden)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// ParseClientNames reads --allowed-client-names (comma-separated, exact names).
func ParseClientNames(s string) map[string]bool {
	out := map[string]bool{}
	for _, n := range strings.Split(s, ",") {
		if n = strings.TrimSpace(n); n != "" {
			out[n] = true
		}
	}
	return out
}

// ClientNamed reports whether r came over TLS with a client certificate that verified against
// the client CAs and whose leaf names (common name or a DNS SAN) one of names.
func ClientNamed(r *http.Request, names map[string]bool) bool {
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 || len(r.TLS.VerifiedChains[0]) == 0 {
		return false
	}
	leaf := r.TLS.VerifiedChains[0][0]
	if names[leaf.Subject.CommonName] {
		return true
	}
	for _, n := range leaf.DNSNames {
		if names[n] {
			return true
		}
	}
	return false
}
