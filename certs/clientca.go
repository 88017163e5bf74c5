package certs

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// CAFile is the bundle of CAs trusted to sign client certificates (--client-ca-file), reloaded
// from disk like the serving pair: the CA that signs the apiserver's client certificate rotates
// too, and a server that kept the old bundle would refuse the apiserver after the rotation (or
// keep accepting a CA that was withdrawn). A bundle that fails to parse leaves the previous one
// in service (counted in credential_webhook_client_ca_reloads_total{result="failed"}): failing
// readiness instead would take every replica out at once over one bad Secret.
type CAFile struct {
	path string
	poll time.Duration
	log  *slog.Logger

	mu    sync.RWMutex
	pool  *x509.CertPool
	raw   []byte
	loads uint64
	fails uint64
	// derived caches the per-handshake configuration for the current pool.
	derived     *tls.Config
	derivedFrom *x509.CertPool
}

// LoadClientCAs reads the bundle once; it fails when the first read fails or holds no
// certificate.
func LoadClientCAs(path string, poll time.Duration, log *slog.Logger) (*CAFile, error) {
	if poll <= 0 {
		poll = 10 * time.Second
	}
	c := &CAFile{path: path, poll: poll, log: log}
	if err := c.reload(); err != nil {
		return nil, err
	}
	return c, nil
}

// Pool returns the bundle in service.
func (c *CAFile) Pool() *x509.CertPool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.pool
}

// Run watches and polls until ctx ends.
func (c *CAFile) Run(ctx context.Context) {
	watchFiles(ctx, c.poll, c.log, func() { _ = c.reload() }, c.path)
}

func (c *CAFile) reload() error {
	pem, err := os.ReadFile(c.path)
	if err != nil {
		return c.fail(fmt.Errorf("reading client CA file: %w", err))
	}
	c.mu.RLock()
	same := c.pool != nil && bytes.Equal(pem, c.raw)
	c.mu.RUnlock()
	if same {
		return nil
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return c.fail(fmt.Errorf("client CA file %s holds no PEM certificate", c.path))
	}
	c.mu.Lock()
	c.pool, c.raw = pool, pem
	c.loads++
	c.mu.Unlock()
	if c.log != nil {
		c.log.Info("client CA bundle loaded", "file", c.path)
	}
	return nil
}

func (c *CAFile) fail(err error) error {
	c.mu.Lock()
	c.fails++
	first := c.pool == nil
	c.mu.Unlock()
	if c.log != nil && !first {
		c.log.Warn("client CA bundle not reloaded; keeping the previous one", "error", err)
	}
	return err
}

// configFor returns a tls.Config.GetConfigForClient that serves base with the current pool as
// ClientCAs. The derived configuration is rebuilt only when the pool changed, so a handshake
// does not clone a tls.Config.
func (c *CAFile) configFor(base *tls.Config) func(*tls.ClientHelloInfo) (*tls.Config, error) {
	return func(*tls.ClientHelloInfo) (*tls.Config, error) {
		c.mu.RLock()
		pool, cfg, from := c.pool, c.derived, c.derivedFrom
		c.mu.RUnlock()
		if pool == nil {
			return nil, errors.New("no client CA bundle loaded")
		}
		if cfg != nil && from == pool {
			return cfg, nil
		}
		cfg = base.Clone()
		cfg.ClientCAs = pool
		c.mu.Lock()
		if c.pool == pool {
			c.derived, c.derivedFrom = cfg, pool
		}
		c.mu.Unlock()
		return cfg, nil
	}
}

var caReloadsDesc = prometheus.NewDesc("credential_webhook_client_ca_reloads_total",
	"Client CA bundles read from disk: loaded (swapped in, the first included) or failed (the previous bundle kept serving).",
	[]string{"result"}, nil)

// Describe implements prometheus.Collector.
func (c *CAFile) Describe(ch chan<- *prometheus.Desc) { ch <- caReloadsDesc }

// Collect implements prometheus.Collector.
func (c *CAFile) Collect(ch chan<- prometheus.Metric) {
	c.mu.RLock()
	loads, fails := c.loads, c.fails
	c.mu.RUnlock()
	ch <- prometheus.MustNewConstMetric(caReloadsDesc, prometheus.CounterValue, float64(loads), "loaded")
	ch <- prometheus.MustNewConstMetric(caReloadsDesc, prometheus.CounterValue, float64(fails), "failed")
}
