package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"go.klusters.dev/credential-webhook/admission"
	"go.klusters.dev/credential-webhook/certs"
	"go.klusters.dev/credential-webhook/kube"
)

type serveConfig struct {
	listen, certFile, keyFile, kubeconfig, metricsListen string
	http2                                                bool
	logLevel                                             string
	certPoll, shutdownTimeout                            time.Duration
	selfUsernames                                        string
	clientCAFile, clientNames                            string
	maxInFlight                                          int
	maxInFlightBytes                                     byteSize
	kubeQPS                                              float64
	kubeBurst                                            int
	logFlush                                             time.Duration
}

// byteSize is a flag holding a byte count written as a Kubernetes quantity ("32Mi", "1G",
// "33554432"), like the chart's memory values; negative means no limit.
type byteSize int64

func (b *byteSize) String() string {
	return resource.NewQuantity(int64(*b), resource.BinarySI).String()
}

func (b *byteSize) Set(v string) error {
	q, err := resource.ParseQuantity(v)
	if err != nil {
		return fmt.Errorf("%q is not a byte size such as 32Mi: %w", v, err)
	}
	n, ok := q.AsInt64()
	if !ok || n == 0 {
		return fmt.Errorf("%q: want a whole number of bytes, negative for no limit (0 is not a limit)", v)
	}
	*b = byteSize(n)
	return nil
}

func (c *serveConfig) register(fs *flag.FlagSet) {
	fs.StringVar(&c.listen, "listen", ":8443", "address to serve admission reviews on (TLS)")
	fs.StringVar(&c.certFile, "tls-cert-file", "", "serving certificate (PEM); reloaded when it changes (required)")
	fs.StringVar(&c.keyFile, "tls-key-file", "", "serving key (PEM); reloaded when it changes (required)")
	fs.StringVar(&c.kubeconfig, "kubeconfig", "", "kubeconfig for the Kubernetes API; empty: in-cluster config if present, else no Kubernetes API (local runs)")
	fs.StringVar(&c.metricsListen, "metrics-listen", "", "address for plain-HTTP /metrics; empty: /metrics on the TLS listener")
	fs.BoolVar(&c.http2, "http2", false, "allow HTTP/2 on the TLS listener (off by default: HTTP/2 rapid-reset advisories)")
	fs.StringVar(&c.clientCAFile, "client-ca-file", "", "CA bundle for client certificates; when set, /mutate/* requires a client certificate it signed (configure the apiserver's AdmissionConfiguration to present one). Strongly recommended: without it anything that reaches the port can post a forged review")
	fs.StringVar(&c.clientNames, "allowed-client-names", "", "comma-separated client certificate names (common name or DNS SAN) allowed on /mutate/* with --client-ca-file; a review over such a connection is known to come from the apiserver, so admission writes IAM and RBAC at once instead of when the ServiceAccount is seen persisted. Empty: any certificate the CA signed is accepted, and admission only plans")
	fs.StringVar(&c.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.DurationVar(&c.logFlush, "log-flush-interval", logFlushInterval, "longest an INFO or DEBUG log line waits to be written with others (one write system call per batch; WARN and above are written at once, and every way out flushes): what a killed process can lose. 0 writes every line at once")
	fs.DurationVar(&c.certPoll, "tls-poll-interval", 10*time.Second, "how often to re-read the certificate files besides watching them")
	fs.DurationVar(&c.shutdownTimeout, "shutdown-timeout", 25*time.Second, "time to finish in-flight reviews after SIGTERM")
	fs.IntVar(&c.maxInFlight, "max-inflight-reviews", admission.DefaultMaxInFlight, "admission reviews decoded or answered at once, from when their whole body has arrived, whatever their size; beyond it a review is answered 429 (the apiserver applies the webhook's failurePolicy); negative: no limit")
	c.maxInFlightBytes = admission.DefaultMaxInFlightBytes
	fs.Var(&c.maxInFlightBytes, "max-inflight-review-bytes", "byte budget shared by the bodies of the reviews read or answered at once (a quantity: 32Mi); each body takes the bytes it has sent, as they arrive, and one that does not fit is answered 429 without reading the rest (a body must arrive within 2 s plus 1 s per MiB it declares, at most 10 s). A body costs about 3.5 times its size at peak: the default fits the chart's 256Mi memory limit with the caches; negative: no limit")
	fs.Float64Var(&c.kubeQPS, "kube-api-qps", 200, "sustained Kubernetes API requests per second this replica sends (client-side limit; the apiserver's priority and fairness still applies). The sweeper leader writes every new ServiceAccount of a burst: at 50, a burst of 1,000 waited ~20 s for its patches and Events")
	fs.IntVar(&c.kubeBurst, "kube-api-burst", 400, "Kubernetes API requests this replica may send at once above --kube-api-qps")
	fs.StringVar(&c.selfUsernames, "self-usernames", "", "comma-separated usernames this server acts as (its ServiceAccount, system:serviceaccount:NS:NAME); empty: derived from POD_NAMESPACE and SERVICE_ACCOUNT_NAME")
}

// validate checks the serving flags before anything starts (pure; table-tested with the
// providers' validate in wiring_test.go).
func (c *serveConfig) validate() error {
	var errs []error
	if c.certFile == "" || c.keyFile == "" {
		errs = append(errs, errors.New("--tls-cert-file and --tls-key-file are required (write development ones with: credential-webhook certs --dir DIR)"))
	}
	if c.clientNames != "" && c.clientCAFile == "" {
		errs = append(errs, errors.New("--allowed-client-names needs --client-ca-file"))
	}
	var l slog.Level
	if err := l.UnmarshalText([]byte(c.logLevel)); err != nil {
		errs = append(errs, fmt.Errorf("--log-level %q: want debug, info, warn or error", c.logLevel))
	}
	if c.certPoll <= 0 {
		errs = append(errs, fmt.Errorf("--tls-poll-interval %s: must be positive", c.certPoll))
	}
	if c.shutdownTimeout <= 0 {
		errs = append(errs, fmt.Errorf("--shutdown-timeout %s: must be positive", c.shutdownTimeout))
	}
	if c.logFlush < 0 {
		errs = append(errs, fmt.Errorf("--log-flush-interval %s: must not be negative", c.logFlush))
	}
	if c.kubeQPS <= 0 || c.kubeBurst < 1 {
		// client-go reads a QPS of 0 as its default of 5, which would starve the sweeper.
		errs = append(errs, fmt.Errorf("--kube-api-qps %v and --kube-api-burst %d: both must be positive", c.kubeQPS, c.kubeBurst))
	}
	return errors.Join(errs...)
}

func newLogger(w io.Writer, level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: %w", level, err)
	}
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: l})), nil
}

// kubeClient builds a client from --kubeconfig, else the in-cluster config; nil when neither
// exists (local runs: no informers, local locks).
func kubeClient(path string, qps float32, burst int) (kube.Client, *rest.Config, error) {
	var cfg *rest.Config
	var err error
	switch {
	case path != "":
		cfg, err = clientcmd.BuildConfigFromFlags("", path)
	case os.Getenv("KUBERNETES_SERVICE_HOST") != "":
		cfg, err = rest.InClusterConfig()
	default:
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("kubernetes client config: %w", err)
	}
	cfg.UserAgent = "credential-webhook/" + version
	cfg.QPS, cfg.Burst = qps, burst
	cs, err := kube.NewClient(cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return cs, cfg, nil
}

func selfUsernames(flagValue string) map[string]bool {
	out := map[string]bool{}
	for _, u := range strings.Split(flagValue, ",") {
		if u = strings.TrimSpace(u); u != "" {
			out[u] = true
		}
	}
	if len(out) == 0 {
		ns, sa := os.Getenv("POD_NAMESPACE"), os.Getenv("SERVICE_ACCOUNT_NAME")
		if ns != "" && sa != "" {
			out["system:serviceaccount:"+ns+":"+sa] = true
		}
	}
	return out
}

func runServe(ctx context.Context, args []string, _ io.Writer, stderr io.Writer) error {
	fs := newFlagSet("serve", "Serve admission reviews over TLS on --listen: POST /mutate/serviceaccounts, /mutate/jobs,\n/mutate/pods; GET /healthz, /readyz, /metrics. SIGTERM finishes in-flight reviews, then exits.", stderr)
	var c serveConfig
	c.register(fs)
	var p providerConfig
	p.register(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := errors.Join(c.validate(), p.validateOnly()); err != nil {
		return err
	}
	// One write system call per batch of lines rather than per line (logsink.go); every way
	// out of serve flushes after its last line, and WARN and above are written at once. Tools
	// that read the log while the server runs (the e2e harness) set --log-flush-interval=0.
	var out io.Writer = stderr
	if c.logFlush > 0 {
		sink := newLineBuffer(stderr, c.logFlush, logFlushBytes)
		defer func() { _ = sink.Flush() }()
		out = sink
	}
	log, err := newLogger(out, c.logLevel)
	if err != nil {
		return err
	}
	if sink, ok := out.(*lineBuffer); ok {
		log = slog.New(flushOnLevel{Handler: log.Handler(), min: slog.LevelWarn, flush: sink.Flush})
	}
	src, err := certs.NewFileSource(c.certFile, c.keyFile, c.certPoll, log)
	if err != nil {
		return fmt.Errorf("serving certificate: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if tuneGC(os.Getenv) {
		startGCTuner(ctx, heapGoalFloor)
		log.Info("GOGC is unset: the GC percent follows the live heap so that the heap goal is at least the floor (GOMEMLIMIT still caps it)", "heapGoalFloorBytes", heapGoalFloor)
	}
	go src.Run(ctx)

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), src)
	metrics := admission.NewMetrics(reg)

	cs, restCfg, err := kubeClient(c.kubeconfig, float32(c.kubeQPS), c.kubeBurst)
	if err != nil {
		return err
	}
	if cs == nil {
		log.Warn("no Kubernetes API configured (no --kubeconfig, not in a cluster): local mode, in-process locks, no informers, no sweeper")
	}
	self := selfUsernames(c.selfUsernames)
	if len(self) == 0 {
		log.Warn("this server's own username is unknown (--self-usernames, or POD_NAMESPACE and SERVICE_ACCOUNT_NAME): annotations under our prefix are stripped from every writer")
	}

	ln, err := net.Listen("tcp", c.listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", c.listen, err)
	}
	ready := &tlsProbe{addr: ln.Addr().String(), src: src}

	d := deps{log: log, reg: reg, kube: cs, restConfig: restCfg, self: self}
	wiring, err := p.build(ctx, d)
	if err != nil {
		ln.Close()
		return err
	}
	var clientCAs *certs.CAFile
	names := certs.ParseClientNames(c.clientNames)
	var authenticated func(*http.Request) bool
	switch {
	case c.clientCAFile != "":
		if clientCAs, err = certs.LoadClientCAs(c.clientCAFile, c.certPoll, log); err != nil {
			ln.Close()
			return err
		}
		reg.MustRegister(clientCAs)
		go clientCAs.Run(ctx)
		if len(names) > 0 {
			authenticated = func(r *http.Request) bool { return certs.ClientNamed(r, names) }
		} else {
			log.Warn("--client-ca-file without --allowed-client-names: any certificate the CA signed is accepted, so reviews only plan; IAM and RBAC are written once the ServiceAccount is seen persisted")
		}
	default:
		log.Info("no --client-ca-file: reviews only plan; IAM and RBAC are written once the ServiceAccount is seen persisted")
	}
	handler := admission.NewHandler(admission.Options{
		Routes:           wiring.routes,
		Log:              log,
		Metrics:          metrics,
		Ready:            ready.check,
		Authenticated:    authenticated,
		MaxInFlight:      c.maxInFlight,
		MaxInFlightBytes: int64(c.maxInFlightBytes),
	})
	mux := http.NewServeMux()
	mux.Handle("/", handler)
	if clientCAs != nil {
		mux.Handle("/mutate/", certs.RequireClientCert(handler, names))
	}
	// Uncompressed: promhttp's gzip writer holds 1.2 MiB of compressor state per concurrent
	// scrape, pooled from one scrape to the next, to save a few tens of KiB on the pod network
	// (issue 18).
	metricsHandler := promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg, DisableCompression: true})
	if c.metricsListen == "" {
		mux.Handle("/metrics", metricsHandler)
	}

	srv := &http.Server{
		Handler:           mux,
		TLSConfig:         certs.ServerConfig(src, c.http2, clientCAs),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      35 * time.Second,
		IdleTimeout:       90 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	if !c.http2 {
		// An empty, non-nil map disables the automatic HTTP/2 upgrade.
		srv.TLSNextProto = map[string]func(*http.Server, *tls.Conn, http.Handler){}
	}

	var wg sync.WaitGroup
	errc := make(chan error, 2+len(wiring.background))
	var msrv *http.Server
	if c.metricsListen != "" {
		// Plain HTTP reachable from the pod network: the same timeouts as the TLS listener, so
		// idle or trickling connections cannot pile up (issue 16).
		msrv = &http.Server{
			Addr:              c.metricsListen,
			Handler:           metricsHandler,
			ReadHeaderTimeout: 5 * time.Second,
			ReadTimeout:       10 * time.Second,
			WriteTimeout:      30 * time.Second,
			IdleTimeout:       90 * time.Second,
			MaxHeaderBytes:    64 << 10,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := msrv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("metrics listener: %w", err)
			}
		}()
	}
	for _, r := range wiring.background {
		wg.Go(func() {
			if err := r.supervise(ctx); err != nil {
				errc <- err
			}
		})
	}
	go func() {
		log.Info("serving", "listen", ln.Addr().String(), "version", version, "http2", c.http2)
		if err := srv.ServeTLS(ln, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- err
		}
	}()

	select {
	case <-ctx.Done():
	case err := <-errc:
		log.Error("stopping: a part of the server failed", "error", err)
		cancel()
		if msrv != nil {
			_ = msrv.Close()
		}
		_ = srv.Close()
		return err
	}
	log.Info("shutting down: finishing in-flight reviews", "timeout", c.shutdownTimeout)
	sctx, scancel := context.WithTimeout(context.Background(), c.shutdownTimeout)
	defer scancel()
	err = srv.Shutdown(sctx)
	cancel()
	if msrv != nil {
		_ = msrv.Shutdown(sctx)
	}
	wg.Wait()
	if err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	log.Info("stopped")
	return nil
}

// supervise runs r until ctx ends and says why it stopped early: its error, or, for a loop
// that must run until shutdown, that it returned at all. A panic is turned into an error too, so
// one loop's bug ends the process with its stack in the log instead of a silent dead loop.
func (r runnable) supervise(ctx context.Context) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = fmt.Errorf("%s panicked: %v\n%s", r.name, v, debug.Stack())
		}
	}()
	err = r.run(ctx)
	switch {
	case ctx.Err() != nil:
		return nil // shutdown: whatever it returned is the way out
	case err != nil:
		return fmt.Errorf("%s: %w", r.name, err)
	case r.untilDone:
		return fmt.Errorf("%s stopped while the server was running", r.name)
	}
	return nil
}

// tlsProbe makes /readyz honest: ready only when a certificate is loaded and a TLS handshake
// with our own listener succeeds. The result is cached briefly so probes cost nothing.
type tlsProbe struct {
	addr string
	src  *certs.FileSource

	mu      sync.Mutex
	checked time.Time
	err     error
}

func (p *tlsProbe) check(ctx context.Context) error {
	if err := p.src.Healthy(); err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if time.Since(p.checked) < 5*time.Second {
		return p.err
	}
	host, port, err := net.SplitHostPort(p.addr)
	if err != nil {
		return err
	}
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	d := tls.Dialer{Config: &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12}} //nolint:gosec // probing our own handshake, not trusting it
	dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	conn, err := d.DialContext(dctx, "tcp", net.JoinHostPort(host, port))
	if err == nil {
		conn.Close()
	}
	p.checked, p.err = time.Now(), err
	if err != nil {
		return fmt.Errorf("TLS handshake with own listener: %w", err)
	}
	return nil
}
