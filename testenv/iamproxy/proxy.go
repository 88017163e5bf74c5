// Package iamproxy is a thin reverse proxy in front of moto that adds only
// the IAM and STS behaviours moto lacks and the webhook must cope with:
//
//   - the trust policy size quota (ACLSizePerRole): IAM's 409 LimitExceeded
//     on CreateRole and UpdateAssumeRolePolicy, and the quota reported by
//     GetAccountSummary;
//   - real web identity checks on sts:AssumeRoleWithWebIdentity: token
//     signature and expiry, the role's trust policy, and a propagation delay
//     after the trust policy changed;
//   - injected faults (throttling, 5xx, latency), deterministic by seed;
//   - per-action call counts;
//   - for S3, only what the readiness check's bucket proof must cope with: a
//     propagation delay after a role was created or its permissions changed
//     (S3 answers AccessDenied to the role's sessions meanwhile), faults on S3
//     actions named explicitly, and per-action counts (S3Calls).
//
// Everything else passes through untouched. It is test support only and must
// never be linked into the product binary.
package iamproxy

import (
	"bytes"
	"context"
	"crypto"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math/rand/v2"
	"mime"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/iam"
)

// Options configure a Proxy. The zero value proxies with no quota, no
// propagation delay, no faults and no token keys (so every
// AssumeRoleWithWebIdentity is denied until keys are set).
type Options struct {
	// TokenKeyFile is a PEM file of keys that sign ServiceAccount tokens,
	// i.e. the kube-apiserver's --service-account-key-file (public or
	// private keys, RSA or ECDSA).
	TokenKeyFile string
	// PublicKeys are more token verification keys (*rsa.PublicKey, *ecdsa.PublicKey).
	PublicKeys []crypto.PublicKey
	// Quota is the initial trust policy size quota (0 = not enforced).
	Quota int
	// PropagationDelay is the initial propagation delay, see SetPropagationDelay.
	PropagationDelay time.Duration
	// S3PropagationDelay is the initial S3 propagation delay, see SetS3PropagationDelay.
	S3PropagationDelay time.Duration
	// Faults are the initial injected faults, see SetFaults.
	Faults Faults
	// Logger receives one line per emulated rejection and injected fault (nil: discard).
	Logger *slog.Logger
}

// Faults describe injected failures. A request matching Actions first waits
// Latency, then draws one number from a generator seeded with Seed: below
// ThrottleRate it is answered with Throttling (HTTP 400), below
// ThrottleRate+ServerErrorRate with InternalFailure (HTTP 500); moto never
// sees it. Faults apply to IAM and STS requests, and to S3 requests only
// when Actions names them ("s3:GetObject", "s3:*"): S3 answers SlowDown
// (HTTP 503) and InternalError (HTTP 500).
type Faults struct {
	ThrottleRate    float64
	ServerErrorRate float64
	Latency         time.Duration
	// SlowRate, when above 0, delays only that fraction of matching requests by Latency
	// (drawn from the same seeded generator); 0 delays every one.
	SlowRate float64
	// LateAnswer moves the delay after moto answered: the request takes effect at once and
	// only its answer is late, which is what a caller that gives up on a slow IAM write
	// must cope with (the write landed although the call failed). Throttled and failed
	// requests are answered after the delay either way.
	LateAnswer bool
	// Actions limits faults to these actions, written "iam:UpdateAssumeRolePolicy",
	// "UpdateAssumeRolePolicy" or with StringLike wildcards ("iam:*"). Empty means all.
	Actions []string
	Seed    int64
}

// FaultCounts count injected faults by action ("iam:GetRole").
type FaultCounts struct {
	Throttled    map[string]int
	ServerErrors map[string]int
	Delayed      map[string]int
}

// Rejection records one request the proxy answered itself with an emulated
// IAM/STS error (LimitExceeded, AccessDenied), and why.
type Rejection struct {
	Action string // "sts:AssumeRoleWithWebIdentity"
	Code   string // "AccessDenied"
	Reason string // e.g. "token signature (RS256) does not verify ..."
	Role   string // role name the request was about
}

// maxRejections bounds the Rejections log of a long-running demo proxy.
const maxRejections = 1000

// maxFormBytes bounds how much of a form-encoded body is inspected; Query
// protocol bodies are a few KB. Larger bodies pass through unread.
const maxFormBytes = 1 << 20

// Proxy is the reverse proxy. Its methods are safe for concurrent use.
type Proxy struct {
	// URL is the proxy's base URL, http://127.0.0.1:PORT, set by Start or Listen.
	URL string

	upstream *url.URL
	rp       *httputil.ReverseProxy
	iam      *iam.Client // talks to moto directly, for trust policies
	log      *slog.Logger
	srv      *http.Server

	mu           sync.Mutex
	quota        int
	delay        time.Duration
	keys         []crypto.PublicKey
	faults       Faults
	rng          *rand.Rand
	trustChanged map[string]time.Time // role name -> last trust policy change through the proxy
	s3delay      time.Duration
	permsChanged map[string]time.Time // role name -> creation or last permissions change through the proxy
	sessions     map[string]string    // access key ID of an STS session -> its role name
	sessionOrder []string             // sessions' keys, oldest first, to bound the map
	calls        map[string]int
	s3calls      map[string]int
	faultCounts  FaultCounts
	rejections   []Rejection
}

// New returns a proxy for upstream (moto's endpoint, e.g. "http://127.0.0.1:5000").
func New(upstream string, opts Options) (*Proxy, error) {
	u, err := url.Parse(upstream)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("iamproxy: upstream %q is not an http(s) URL", upstream)
	}
	keys := append([]crypto.PublicKey(nil), opts.PublicKeys...)
	if opts.TokenKeyFile != "" {
		fileKeys, err := LoadTokenKeyFile(opts.TokenKeyFile)
		if err != nil {
			return nil, fmt.Errorf("iamproxy: %w", err)
		}
		keys = append(keys, fileKeys...)
	}
	if err := opts.Faults.validate(); err != nil {
		return nil, fmt.Errorf("iamproxy: %w", err)
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := &Proxy{
		upstream:     u,
		log:          log,
		quota:        opts.Quota,
		delay:        opts.PropagationDelay,
		s3delay:      opts.S3PropagationDelay,
		keys:         keys,
		trustChanged: map[string]time.Time{},
		permsChanged: map[string]time.Time{},
		sessions:     map[string]string{},
		iam: iam.NewFromConfig(aws.Config{
			Region:       "us-east-1",
			Credentials:  credentials.NewStaticCredentialsProvider("test", "test", ""),
			BaseEndpoint: aws.String(upstream),
		}),
	}
	p.setFaultsLocked(opts.Faults)
	p.resetCountsLocked()
	p.rp = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(u)
			// Keep the Host the client signed; moto does not care which.
			pr.Out.Host = pr.In.Host
			if responseHook(pr.In.Context()) != nil {
				// The hook edits the body, so have Go's transport negotiate
				// (and transparently undo) any compression.
				pr.Out.Header.Del("Accept-Encoding")
			}
		},
		ModifyResponse: func(resp *http.Response) error {
			if hook := responseHook(resp.Request.Context()); hook != nil {
				return hook(resp)
			}
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			p.log.Error("iamproxy: upstream failed", "err", err, "url", r.URL.String())
			http.Error(w, "iamproxy: upstream: "+err.Error(), http.StatusBadGateway)
		},
	}
	p.srv = &http.Server{Handler: p, ReadHeaderTimeout: 10 * time.Second}
	return p, nil
}

// Start serves on a free 127.0.0.1 port, sets p.URL and closes the proxy in
// tb.Cleanup.
func (p *Proxy) Start(tb testing.TB) {
	tb.Helper()
	if err := p.Listen("127.0.0.1:0"); err != nil {
		tb.Fatalf("iamproxy: %v", err)
	}
	tb.Cleanup(func() { _ = p.Close() })
}

// Listen binds addr, sets p.URL and serves in the background until Close.
func (p *Proxy) Listen(addr string) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("iamproxy: listen: %w", err)
	}
	p.URL = "http://" + l.Addr().String()
	go func() { _ = p.srv.Serve(l) }()
	return nil
}

// Serve sets p.URL from l and serves on l until Close (blocking; it returns
// http.ErrServerClosed after Close).
func (p *Proxy) Serve(l net.Listener) error {
	p.URL = "http://" + l.Addr().String()
	return p.srv.Serve(l)
}

// ListenAndServe binds addr and serves until Close (blocking).
func (p *Proxy) ListenAndServe(addr string) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("iamproxy: listen: %w", err)
	}
	return p.Serve(l)
}

// Close stops serving and closes open connections.
func (p *Proxy) Close() error { return p.srv.Close() }

// SetQuota sets the trust policy size quota in characters (0 = not enforced).
func (p *Proxy) SetQuota(n int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.quota = n
}

// SetPropagationDelay makes AssumeRoleWithWebIdentity fail for d after a
// role's trust policy was created or updated through this proxy, as IAM
// changes take a while to reach STS.
func (p *Proxy) SetPropagationDelay(d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.delay = d
}

// SetS3PropagationDelay makes S3 answer AccessDenied, for d after a role was
// created or its permissions changed through this proxy (inline or attached
// policies, boundary), to requests signed with credentials of that role's
// sessions (AssumeRoleWithWebIdentity through this proxy): IAM changes take a
// while to reach S3 too, independently of STS.
func (p *Proxy) SetS3PropagationDelay(d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.s3delay = d
}

// SetTokenKeys replaces the token verification keys.
func (p *Proxy) SetTokenKeys(keys ...crypto.PublicKey) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.keys = append([]crypto.PublicKey(nil), keys...)
}

// SetFaults replaces the injected faults and reseeds their generator, so the
// same Faults give the same sequence of outcomes for the same requests. It
// panics on rates outside [0,1] (a test bug).
func (p *Proxy) SetFaults(f Faults) {
	if err := f.validate(); err != nil {
		panic("iamproxy: " + err.Error())
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.setFaultsLocked(f)
}

func (p *Proxy) setFaultsLocked(f Faults) {
	f.Actions = append([]string(nil), f.Actions...)
	p.faults = f
	p.rng = rand.New(rand.NewPCG(uint64(f.Seed), 0x5eed))
}

func (f Faults) validate() error {
	if f.ThrottleRate < 0 || f.ServerErrorRate < 0 || f.ThrottleRate+f.ServerErrorRate > 1 {
		return fmt.Errorf("fault rates %v+%v outside [0,1]", f.ThrottleRate, f.ServerErrorRate)
	}
	if f.SlowRate < 0 || f.SlowRate > 1 {
		return fmt.Errorf("slow rate %v outside [0,1]", f.SlowRate)
	}
	return nil
}

// Calls returns how many requests the proxy received per action
// ("iam:UpdateAssumeRolePolicy", "sts:AssumeRoleWithWebIdentity"), counting
// every attempt, including those it rejected or failed on purpose. Requests
// without an Action parameter (S3) are not counted.
func (p *Proxy) Calls() map[string]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return maps.Clone(p.calls)
}

// S3Calls returns how many S3 requests the proxy received per action
// ("s3:PutObject": the x-id the SDK sends, else "s3:HeadBucket",
// "s3:HeadObject" or "s3:<METHOD>"), counting those it refused or failed.
func (p *Proxy) S3Calls() map[string]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return maps.Clone(p.s3calls)
}

// Faults returns the injected faults per action.
func (p *Proxy) Faults() FaultCounts {
	p.mu.Lock()
	defer p.mu.Unlock()
	return FaultCounts{
		Throttled:    maps.Clone(p.faultCounts.Throttled),
		ServerErrors: maps.Clone(p.faultCounts.ServerErrors),
		Delayed:      maps.Clone(p.faultCounts.Delayed),
	}
}

// Rejections returns the emulated errors answered so far, oldest first.
func (p *Proxy) Rejections() []Rejection {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]Rejection(nil), p.rejections...)
}

// ResetCalls clears Calls, Faults and Rejections (not the settings).
func (p *Proxy) ResetCalls() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.resetCountsLocked()
}

func (p *Proxy) resetCountsLocked() {
	p.calls = map[string]int{}
	p.s3calls = map[string]int{}
	p.faultCounts = FaultCounts{Throttled: map[string]int{}, ServerErrors: map[string]int{}, Delayed: map[string]int{}}
	p.rejections = nil
}

// ServeHTTP implements http.Handler.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	form, err := readForm(r)
	if err != nil {
		http.Error(w, "iamproxy: read request: "+err.Error(), http.StatusBadRequest)
		return
	}
	action := form.Get("Action")
	if action == "" {
		if scopeService(r.Header.Get("Authorization")) == "s3" {
			p.serveS3(w, r)
			return
		}
		p.rp.ServeHTTP(w, r) // other REST-style requests
		return
	}
	svc := serviceOf(r, action)
	key := svc + ":" + action
	p.mu.Lock()
	p.calls[key]++
	p.mu.Unlock()
	if svc != "iam" && svc != "sts" {
		p.rp.ServeHTTP(w, r)
		return
	}

	latency, fault, late := p.drawFault(key)
	if latency > 0 && late && fault == faultNone {
		// The request reaches moto now; the answer waits, even if the caller gave up.
		w = &lateWriter{ResponseWriter: w, delay: latency, done: r.Context().Done()}
	} else if latency > 0 {
		select {
		case <-time.After(latency):
		case <-r.Context().Done():
			return
		}
	}
	switch fault {
	case faultThrottle:
		p.log.Info("iamproxy: injected throttling", "action", key)
		writeAWSError(w, svc, http.StatusBadRequest, "Throttling", "Rate exceeded")
		return
	case faultServerError:
		p.log.Info("iamproxy: injected server error", "action", key)
		writeAWSError(w, svc, http.StatusInternalServerError, "InternalFailure", "We encountered an internal error. Please try again.")
		return
	}

	switch key {
	case "iam:CreateRole", "iam:UpdateAssumeRolePolicy":
		p.serveTrustPolicyWrite(w, r, key, form)
	case "iam:GetAccountSummary":
		p.serveAccountSummary(w, r)
	case "iam:PutRolePolicy", "iam:DeleteRolePolicy", "iam:AttachRolePolicy", "iam:DetachRolePolicy",
		"iam:PutRolePermissionsBoundary", "iam:DeleteRolePermissionsBoundary":
		p.rp.ServeHTTP(w, p.recordPermissionsChange(r, form.Get("RoleName")))
	case "sts:AssumeRoleWithWebIdentity":
		p.serveWebIdentity(w, r, key, form)
	default:
		p.rp.ServeHTTP(w, r)
	}
}

type faultKind int

const (
	faultNone faultKind = iota
	faultThrottle
	faultServerError
)

// drawFault decides, under the lock so the seeded sequence stays
// deterministic, what happens to one request for key.
// The third result says whether the delay holds back the answer (Faults.LateAnswer).
func (p *Proxy) drawFault(key string) (time.Duration, faultKind, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	f := p.faults
	if !f.applies(key) {
		return 0, faultNone, false
	}
	latency := f.Latency
	if latency > 0 && f.SlowRate > 0 && p.rng.Float64() >= f.SlowRate {
		latency = 0
	}
	if latency > 0 {
		p.faultCounts.Delayed[key]++
	}
	if f.ThrottleRate == 0 && f.ServerErrorRate == 0 {
		return latency, faultNone, f.LateAnswer
	}
	switch x := p.rng.Float64(); {
	case x < f.ThrottleRate:
		p.faultCounts.Throttled[key]++
		return latency, faultThrottle, f.LateAnswer
	case x < f.ThrottleRate+f.ServerErrorRate:
		p.faultCounts.ServerErrors[key]++
		return latency, faultServerError, f.LateAnswer
	}
	return latency, faultNone, f.LateAnswer
}

// lateWriter holds the answer back by delay: moto has already applied the request when the
// first header is written.
type lateWriter struct {
	http.ResponseWriter
	delay  time.Duration
	done   <-chan struct{} // the request's context
	waited bool
}

func (l *lateWriter) wait() {
	if !l.waited {
		l.waited = true
		select {
		case <-time.After(l.delay):
		case <-l.done: // the caller gave up: the write is applied, nobody reads the answer
		}
	}
}

// Unwrap lets http.ResponseController reach the real writer.
func (l *lateWriter) Unwrap() http.ResponseWriter { return l.ResponseWriter }

func (l *lateWriter) WriteHeader(code int) { l.wait(); l.ResponseWriter.WriteHeader(code) }

func (l *lateWriter) Write(b []byte) (int, error) { l.wait(); return l.ResponseWriter.Write(b) }

func (f Faults) applies(key string) bool {
	if f.ThrottleRate == 0 && f.ServerErrorRate == 0 && f.Latency == 0 {
		return false
	}
	svc, action, _ := strings.Cut(key, ":")
	if svc == "s3" {
		// Only faults that name S3 reach it: the IAM and STS tests' faults leave the
		// bucket proof alone.
		for _, a := range f.Actions {
			if strings.HasPrefix(a, "s3:") && globMatch(a, key) {
				return true
			}
		}
		return false
	}
	if len(f.Actions) == 0 {
		return true
	}
	for _, a := range f.Actions {
		if globMatch(a, key) || globMatch(a, action) {
			return true
		}
	}
	return false
}

// serveTrustPolicyWrite enforces the trust policy quota and records when a
// role's trust policy changed, for the propagation delay.
func (p *Proxy) serveTrustPolicyWrite(w http.ResponseWriter, r *http.Request, key string, form url.Values) {
	doc := form.Get("AssumeRolePolicyDocument") // CreateRole
	if key == "iam:UpdateAssumeRolePolicy" {
		doc = form.Get("PolicyDocument")
	}
	role := form.Get("RoleName")
	p.mu.Lock()
	quota := p.quota
	p.mu.Unlock()
	if size := policySize(doc); quota > 0 && size > quota {
		p.reject(w, "iam", Rejection{
			Action: key, Code: "LimitExceeded", Role: role,
			Reason: fmt.Sprintf("trust policy is %d characters without whitespace, quota %d", size, quota),
		}, http.StatusConflict, fmt.Sprintf("Cannot exceed quota for ACLSizePerRole: %d", quota))
		return
	}
	r = withResponseHook(r, func(resp *http.Response) error {
		if resp.StatusCode == http.StatusOK {
			p.mu.Lock()
			p.trustChanged[role] = time.Now()
			if key == "iam:CreateRole" {
				p.permsChanged[role] = time.Now() // a new role's permissions start propagating
			}
			p.mu.Unlock()
		}
		return nil
	})
	p.rp.ServeHTTP(w, r)
}

// serveWebIdentity lets AssumeRoleWithWebIdentity through to moto only when
// real STS would accept it.
func (p *Proxy) serveWebIdentity(w http.ResponseWriter, r *http.Request, key string, form url.Values) {
	role := roleNameFromARN(form.Get("RoleArn"))
	reason, err := p.webIdentityDenial(r.Context(), role, form.Get("WebIdentityToken"))
	if err != nil {
		p.log.Error("iamproxy: web identity check failed", "role", role, "err", err)
		writeAWSError(w, "sts", http.StatusInternalServerError, "InternalFailure", "iamproxy: "+err.Error())
		return
	}
	if reason != "" {
		p.reject(w, "sts", Rejection{Action: key, Code: "AccessDenied", Role: role, Reason: reason},
			http.StatusForbidden, "Not authorized to perform sts:AssumeRoleWithWebIdentity")
		return
	}
	p.rp.ServeHTTP(w, p.recordSession(r, role))
}

// webIdentityDenial returns why STS would refuse the token for role, or ""
// when it would issue credentials. err is for failures of the proxy itself.
func (p *Proxy) webIdentityDenial(ctx context.Context, role, token string) (reason string, err error) {
	p.mu.Lock()
	keys, delay, changed := p.keys, p.delay, p.trustChanged[role]
	p.mu.Unlock()

	claims, err := verifyToken(token, keys, time.Now())
	if err != nil {
		return err.Error(), nil
	}
	out, err := p.iam.GetRole(ctx, &iam.GetRoleInput{RoleName: aws.String(role)})
	if err != nil {
		var nse interface{ ErrorCode() string }
		if errors.As(err, &nse) && nse.ErrorCode() == "NoSuchEntity" {
			return fmt.Sprintf("role %q does not exist", role), nil
		}
		return "", fmt.Errorf("get role %q from moto: %w", role, err)
	}
	// IAM returns policy documents URL-encoded.
	doc, err := url.QueryUnescape(aws.ToString(out.Role.AssumeRolePolicyDocument))
	if err != nil {
		return "", fmt.Errorf("decode trust policy of %q: %w", role, err)
	}
	id := webIdentity{Issuer: issuerHost(claims.Iss), Sub: claims.Sub, Aud: claims.Aud}
	ok, why, err := trustDecision(doc, id)
	if err != nil {
		return fmt.Sprintf("trust policy of %q: %v", role, err), nil
	}
	if !ok {
		return why, nil
	}
	if age := time.Since(changed); !changed.IsZero() && age < delay {
		return fmt.Sprintf("trust policy changed %s ago, propagation delay %s", age.Round(time.Millisecond), delay), nil
	}
	return "", nil
}

// serveAccountSummary reports the configured quota as
// AssumeRolePolicySizeQuota (moto always says 2048).
func (p *Proxy) serveAccountSummary(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	quota := p.quota
	p.mu.Unlock()
	if quota > 0 {
		r = withResponseHook(r, func(resp *http.Response) error {
			if resp.StatusCode != http.StatusOK {
				return nil
			}
			body, err := io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			if err != nil {
				return fmt.Errorf("read GetAccountSummary response: %w", err)
			}
			body = setSummaryEntry(body, "AssumeRolePolicySizeQuota", quota)
			resp.Body = io.NopCloser(bytes.NewReader(body))
			resp.ContentLength = int64(len(body))
			resp.Header.Set("Content-Length", fmt.Sprint(len(body)))
			return nil
		})
	}
	p.rp.ServeHTTP(w, r)
}

func (p *Proxy) reject(w http.ResponseWriter, svc string, rej Rejection, status int, message string) {
	p.log.Info("iamproxy: rejected", "action", rej.Action, "code", rej.Code, "role", rej.Role, "reason", rej.Reason)
	p.mu.Lock()
	if len(p.rejections) >= maxRejections {
		p.rejections = p.rejections[1:]
	}
	p.rejections = append(p.rejections, rej)
	p.mu.Unlock()
	writeAWSError(w, svc, status, rej.Code, message)
}

// readForm returns the request's Query-protocol parameters (URL query and
// form-encoded body) and restores the body so moto receives it intact.
func readForm(r *http.Request) (url.Values, error) {
	vals := r.URL.Query()
	if r.Method != http.MethodPost || r.Body == nil {
		return vals, nil
	}
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/x-www-form-urlencoded" {
		return vals, nil
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxFormBytes+1))
	if err != nil {
		return nil, err
	}
	if len(body) > maxFormBytes {
		// Too big to be a Query API call: stitch it back together unread.
		r.Body = struct {
			io.Reader
			io.Closer
		}{io.MultiReader(bytes.NewReader(body), r.Body), r.Body}
		return vals, nil
	}
	_ = r.Body.Close()
	r.Body = io.NopCloser(bytes.NewReader(body))
	r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
	r.ContentLength = int64(len(body))
	r.TransferEncoding = nil
	form, err := url.ParseQuery(string(body))
	if err != nil {
		return nil, fmt.Errorf("parse form body: %w", err)
	}
	for k, v := range form {
		vals[k] = append(v, vals[k]...)
	}
	return vals, nil
}

type hookKey struct{}

func withResponseHook(r *http.Request, hook func(*http.Response) error) *http.Request {
	return r.WithContext(context.WithValue(r.Context(), hookKey{}, hook))
}

func responseHook(ctx context.Context) func(*http.Response) error {
	h, _ := ctx.Value(hookKey{}).(func(*http.Response) error)
	return h
}

func roleNameFromARN(arn string) string {
	// arn:aws:iam::123456789012:role/some/path/name: the name is the last segment.
	return arn[strings.LastIndex(arn, "/")+1:]
}

func issuerHost(iss string) string {
	iss = strings.TrimPrefix(iss, "https://")
	iss = strings.TrimPrefix(iss, "http://")
	return strings.TrimSuffix(iss, "/")
}
