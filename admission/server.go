// Package admission serves AdmissionReview v1 over HTTP: it decodes reviews, runs the plugins
// registered for a route, and answers with a JSON patch, warnings or a denial.
//
// The checklist follows controller-runtime's webhook server: the response always echoes
// apiVersion, kind and uid; the body is size-limited; content type and JSON are validated with a
// message naming the problem; kinds a route does not serve are allowed untouched; a panicking
// plugin answers 500 (still carrying the uid) and the process keeps serving.
//
// Memory is bounded whatever is posted (issue 16): each route reads at most its own body limit
// (Route.MaxBodyBytes: a ServiceAccount or Job review is small, a Pod's may be large), refusing a
// larger body with 413 as soon as its Content-Length or its bytes say so; and the bodies of the
// reviews read or answered at once share a byte budget (Options.MaxInFlightBytes), each taking
// the bytes it has sent as they arrive (at least minReviewWeight once read), so a review that
// does not fit is answered 429 as soon as its bytes say so. The budget is in bytes, not
// reviews, because a review waiting on the API or IAM (a lock, an outage) holds a few KiB while a
// maximum-size Pod review holds megabytes: counting reviews would either refuse ordinary
// traffic during an outage or let large bodies exhaust memory. Peak memory is about the budget
// times a small factor (the body, the raw object copied out of it, the plugins' decode).
//
// Neither limit is taken for a body that has not arrived: a review takes the budget for the bytes
// it sent, and a slot (Options.MaxInFlight) once its whole body is read. Both used to be taken
// from the headers, before a byte of the body was read, and anyone who could reach the port (no
// client certificate is asked for without --client-ca-file) held the whole byte budget with 8
// requests declaring 4 MiB Pod bodies and sending nothing, or every slot with 512 trickling ones,
// for the 10 s a body could take: every review was answered 429 for as long as they kept at it.
// Now a body must also arrive at a rate a real apiserver never comes near (bodyReadTime), so
// holding the budget takes as many bytes as the budget, sent again every few seconds.
package admission

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"reflect"
	"runtime/debug"
	"strconv"
	"sync"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/semaphore"

	"go.klusters.dev/credential-webhook/patches"
)

// DefaultMaxBodyBytes limits a review's size on a route without a limit of its own. etcd stores
// objects up to 1.5 MiB and a review carries the object twice plus metadata; 7 MiB leaves room
// and still bounds memory per request.
const DefaultMaxBodyBytes = 7 << 20

// DefaultMaxInFlightBytes is the byte budget of the review bodies read or answered at once
// (--max-inflight-review-bytes). The chart's memory limit is 256 MiB (GOMEMLIMIT follows it) and
// the largest route body limit is the Pods' 4 MiB. Measured on the binary
// (BenchmarkServeRSSUnderMaxBodies: 200 clients posting maximum-size reviews at once,
// GOMEMLIMIT=256MiB), a body costs about 3.5 times its size at peak (the body, the raw object
// copied out of it, garbage collector headroom): 32 MiB of bodies (eight 4 MiB Pod reviews)
// peak at about 150 MiB, leaving the rest of the limit to the informer caches (about 64 MiB
// with 10,000 ServiceAccounts). Ordinary reviews are a few KiB, so the budget admits
// thousands of them; the apiserver applies failurePolicy to a 429.
const DefaultMaxInFlightBytes = 32 << 20

// DefaultMaxInFlight bounds the number of reviews in flight whatever their size
// (--max-inflight-reviews): goroutines and API or IAM work in progress, not memory.
const DefaultMaxInFlight = 512

// minReviewWeight is the least a review takes of the byte budget: its decoded request, the
// plugins' state and the response cost something even for a tiny body.
const minReviewWeight = 16 << 10

// envelopeBytes is what a review carries besides its objects (uid, kinds, userInfo, options).
const envelopeBytes = 64 << 10

// bodyReadTimeout bounds reading one review's body, whatever its size (bodyReadTime).
const bodyReadTimeout = 10 * time.Second

// bodyReadTime is how long a review's body may take to arrive once its headers are read: 2 s,
// plus a second per MiB it declares, at most bodyReadTimeout (also for a body of unknown length).
// The apiserver writes a review in one go, a few KiB that arrive within milliseconds; a client
// that trickles its body holds the bytes it sent for at most that.
func bodyReadTime(contentLength int64) time.Duration {
	if contentLength < 0 {
		return bodyReadTimeout
	}
	return min(bodyReadTimeout, 2*time.Second+time.Duration(contentLength)*time.Second/(1<<20))
}

// preGrowMax bounds how much of a declared Content-Length the body buffer is sized to before a
// byte arrives: every real review fits (a KubeStash Pod review is 5 KB), and a declared 4 MiB
// that never comes costs no memory.
const preGrowMax = 64 << 10

// Route binds a URL path to the kind it serves and the plugins that mutate it.
type Route struct {
	Path    string // e.g. "/mutate/pods"
	Name    string // metrics label, e.g. "pods"
	Group   string // "" for core, "batch" for Jobs
	Kind    string // "Pod", "Job", "ServiceAccount"
	Plugins []Plugin
	// MaxObjectBytes refuses objects larger than this before any plugin decodes them (0: no
	// limit beyond the body limit). The apiserver calls mutating webhooks before it enforces
	// its own size limits, so without this a ServiceAccount stuffed with a hundred thousand tiny
	// annotations costs every plugin a large decode.
	MaxObjectBytes int
	// MaxBodyBytes is the largest review body this route reads (413 beyond it). 0: twice
	// MaxObjectBytes (object and oldObject of an UPDATE) plus 64 KiB of envelope when
	// MaxObjectBytes is set, else Options.MaxBodyBytes. Never more than Options.MaxBodyBytes.
	MaxBodyBytes int64
}

// bodyLimit is the route's effective body limit under the server-wide one.
func (rt Route) bodyLimit(serverMax int64) int64 {
	limit := rt.MaxBodyBytes
	if limit <= 0 && rt.MaxObjectBytes > 0 {
		limit = 2*int64(rt.MaxObjectBytes) + envelopeBytes
	}
	if limit <= 0 || limit > serverMax {
		limit = serverMax
	}
	return limit
}

// Options configure the handler.
type Options struct {
	Routes       []Route
	Log          *slog.Logger
	Metrics      *Metrics
	MaxBodyBytes int64
	// MaxInFlight bounds the reviews decoded or answered at once, from when their body is read;
	// beyond it a review is answered 429. 0: DefaultMaxInFlight; negative: no limit.
	MaxInFlight int
	// MaxInFlightBytes is the byte budget the bodies of the reviews in flight share, taken as
	// their bytes arrive; a review whose bytes do not fit is answered 429 without reading the
	// rest. 0: DefaultMaxInFlightBytes; negative: no limit.
	MaxInFlightBytes int64
	// Ready reports whether the server can serve (certificate loaded, TLS answering).
	Ready func(context.Context) error
	// Authenticated says whether a review's HTTP request proves it came from the apiserver (a
	// verified client certificate with an allowed name); nil: never.
	Authenticated func(*http.Request) bool
}

type server struct {
	opts Options
	pool sync.Pool
	// encPool holds *encodeBuffers.
	encPool sync.Pool
	// slots holds one token per review in flight from when its body is read; nil: no limit.
	slots chan struct{}
	// bytes is the body budget (Options.MaxInFlightBytes); nil: no limit.
	bytes *semaphore.Weighted
}

// maxPooledBuffer: larger buffers are left to the garbage collector rather than kept in the pool,
// so a burst of large reviews does not pin their memory.
const maxPooledBuffer = 256 << 10

// NewHandler returns the router with one POST endpoint per route plus /healthz and /readyz.
func NewHandler(opts Options) http.Handler {
	if opts.MaxBodyBytes <= 0 {
		opts.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.MaxInFlight == 0 {
		opts.MaxInFlight = DefaultMaxInFlight
	}
	if opts.MaxInFlightBytes == 0 {
		opts.MaxInFlightBytes = DefaultMaxInFlightBytes
	}
	s := &server{opts: opts, pool: sync.Pool{New: func() any { return new(bytes.Buffer) }},
		encPool: sync.Pool{New: func() any { return new(encodeBuffers) }}}
	if opts.MaxInFlight > 0 {
		s.slots = make(chan struct{}, opts.MaxInFlight)
	}
	if opts.MaxInFlightBytes > 0 {
		s.bytes = semaphore.NewWeighted(opts.MaxInFlightBytes)
	}
	r := chi.NewRouter()
	for _, rt := range opts.Routes {
		r.Post(rt.Path, s.review(rt))
	}
	r.Get("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	r.Get("/readyz", func(w http.ResponseWriter, req *http.Request) {
		if opts.Ready != nil {
			if err := opts.Ready(req.Context()); err != nil {
				http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
				return
			}
		}
		_, _ = io.WriteString(w, "ok\n")
	})
	return r
}

func (s *server) review(rt Route) http.HandlerFunc {
	limit := rt.bodyLimit(s.opts.MaxBodyBytes)
	objectDecoder := routeObjectDecoder(rt)
	// The route's own series, looked up once rather than per review.
	var duration prometheus.Observer
	var patchOpsTotal prometheus.Counter
	if m := s.opts.Metrics; m != nil {
		duration, patchOpsTotal = m.Duration.WithLabelValues(rt.Name), m.PatchOps.WithLabelValues(rt.Name)
	}
	return func(w http.ResponseWriter, hr *http.Request) {
		start := time.Now()
		code, decision, kind, op := http.StatusOK, "allowed", "", ""
		defer func() {
			if m := s.opts.Metrics; m != nil {
				m.Requests.WithLabelValues(rt.Name, kindLabel(kind), operationLabel(op), decisionLabel(decision), codeLabel(code)).Inc()
				duration.Observe(time.Since(start).Seconds())
			}
		}()
		fail := func(c int, msg string) {
			code, decision = c, "error"
			s.opts.Log.Warn("bad review", "route", rt.Name, "code", c, "error", msg)
			http.Error(w, msg, c)
		}
		reject := func(c int, reason, msg string) {
			if m := s.opts.Metrics; m != nil {
				m.Rejected.WithLabelValues(rt.Name, reason).Inc()
			}
			if c == http.StatusTooManyRequests {
				w.Header().Set("Retry-After", "1")
			}
			// Whatever is left of the body is not read: close the connection rather than let
			// net/http drain it.
			w.Header().Set("Connection", "close")
			fail(c, msg)
		}

		// Nothing is taken from the limits for a body that has not arrived (see the package doc):
		// what the headers declare is checked against the route's limit, and the body is read
		// under the byte budget, taken as its bytes come.
		if hr.ContentLength > limit {
			reject(http.StatusRequestEntityTooLarge, RejectTooLarge, fmt.Sprintf(
				"credential-webhook: %s review of %d bytes is larger than the %d bytes this route accepts", rt.Name, hr.ContentLength, limit))
			return
		}
		if ct := hr.Header.Get("Content-Type"); ct != "" {
			// What the apiserver sends needs no parsing (ParseMediaType accepts it as is).
			if ct != "application/json" {
				if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/json" {
					fail(http.StatusBadRequest, fmt.Sprintf("content type %q is not application/json", ct))
					return
				}
			}
		} else {
			fail(http.StatusBadRequest, "missing content type: expected application/json")
			return
		}
		buf := s.pool.Get().(*bytes.Buffer)
		buf.Reset()
		defer func() {
			if buf.Cap() <= maxPooledBuffer {
				s.pool.Put(buf)
			}
		}()
		if hr.ContentLength > 0 {
			// Room for the whole body and the read that sees EOF, no doubling on the way, up to
			// preGrowMax: a larger body grows the buffer as its bytes come.
			buf.Grow(int(min(hr.ContentLength, preGrowMax)) + bytes.MinRead)
		}
		_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(bodyReadTime(hr.ContentLength))) // unsupported in tests: fine
		var body io.Reader = http.MaxBytesReader(w, hr.Body, limit)
		var charged *chargedReader
		if s.bytes != nil {
			charged = &chargedReader{r: body, budget: s.bytes}
			defer charged.release()
			body = charged
		}
		_, err := buf.ReadFrom(body)
		if err == nil && charged != nil {
			// A review costs something beyond its body: its decode, the plugins' state, the
			// response.
			err = charged.charge(minReviewWeight - charged.held)
		}
		if err != nil {
			var tooBig *http.MaxBytesError
			switch {
			case errors.As(err, &tooBig):
				reject(http.StatusRequestEntityTooLarge, RejectTooLarge, fmt.Sprintf(
					"credential-webhook: %s review larger than %d bytes, the limit of this route", rt.Name, tooBig.Limit))
			case errors.Is(err, errOverBudget):
				reject(http.StatusTooManyRequests, RejectInFlight, fmt.Sprintf(
					"credential-webhook: review bodies in flight would exceed %d bytes with this one (--max-inflight-review-bytes); retry later",
					s.opts.MaxInFlightBytes))
			default:
				fail(http.StatusBadRequest, "reading body: "+err.Error())
			}
			return
		}
		if s.slots != nil {
			select {
			case s.slots <- struct{}{}:
				defer func() { <-s.slots }()
			default:
				reject(http.StatusTooManyRequests, RejectInFlight, fmt.Sprintf(
					"credential-webhook: too many admission reviews in flight (limit %d, --max-inflight-reviews); retry later", cap(s.slots)))
				return
			}
		}
		if m := s.opts.Metrics; m != nil {
			m.InFlight.Inc()
			defer m.InFlight.Dec()
		}
		// The route's ObjectDecoder reads the object while the review is read, unless the body
		// could hold an object larger than the route accepts: that one is refused (run) before
		// any plugin decodes it.
		d := objectDecoder
		if rt.MaxObjectBytes > 0 && buf.Len() > rt.MaxObjectBytes {
			d = nil
		}
		in, err := decodeReview(buf.Bytes(), d)
		if err != nil {
			fail(http.StatusBadRequest, err.Error())
			return
		}
		kind, op = in.Kind.Kind, string(in.Operation)
		enc := s.encPool.Get().(*encodeBuffers)
		defer s.putEncodeBuffers(enc)

		out := reviewOut{APIVersion: reviewAPIVersion, Kind: reviewKind, Response: responseOut{UID: in.UID, Allowed: true}}
		// The plugins' logger and the server's own lines about this review carry the uid and the
		// object's coordinates; deferredAttrs formats them only if something is logged.
		rl := &reviewLog{attrs: [4]slog.Attr{
			slog.String("uid", string(in.UID)), slog.String("kind", in.Kind.Kind),
			slog.String("namespace", in.Namespace), slog.String("name", in.Name)}}
		rl.h = deferredAttrs{h: s.opts.Log.Handler(), attrs: rl.attrs[:]}
		var patchOps int
		var extra []slog.Attr
		if in.Kind.Group == rt.Group && in.Kind.Kind == rt.Kind {
			authn := s.opts.Authenticated != nil && s.opts.Authenticated(hr)
			c, res, n, attrs := s.run(hr.Context(), rt, in, budgetOf(queryGet(hr.URL.RawQuery, "timeout")), authn, rl, enc)
			extra = attrs
			code = c
			out.Response = res
			out.Response.UID = in.UID
			if !res.Allowed {
				decision = "denied"
				if c != http.StatusOK {
					decision = "error"
				}
			} else if len(res.Patch) > 0 {
				decision = "patched"
			}
			patchOps = n
		} else {
			decision = "ignored"
		}
		if patchOpsTotal != nil && patchOps > 0 {
			patchOpsTotal.Add(float64(patchOps))
		}

		enc.out = appendReview(enc.out[:0], &out)
		h := w.Header()
		h["Content-Type"] = jsonContentType
		// The length, known here, spares a patched answer (a Pod's is 2.5 KB) net/http's chunked
		// encoding past 2 KB: no chunk framing to write here nor to parse in the apiserver.
		h["Content-Length"] = []string{strconv.Itoa(len(enc.out))}
		w.WriteHeader(code)
		_, _ = w.Write(enc.out)

		// The one line per review: typed attributes, no reflection, nothing built when the level
		// is off.
		if lg := s.opts.Log; lg.Enabled(context.Background(), slog.LevelInfo) {
			attrs := append(make([]slog.Attr, 0, 12+len(extra)),
				slog.String("uid", string(in.UID)), slog.String("route", rt.Name), slog.String("kind", in.Kind.Kind),
				slog.String("namespace", in.Namespace), slog.String("name", in.Name), slog.String("operation", string(in.Operation)),
				slog.String("user", in.UserInfo.Username), slog.Bool("dryRun", in.DryRun != nil && *in.DryRun),
				slog.String("decision", decision), slog.Int("patchOps", patchOps), slog.Int("warnings", len(out.Response.Warnings)))
			attrs = append(attrs, extra...)
			attrs = append(attrs, slog.Duration("duration", time.Since(start)))
			lg.LogAttrs(context.Background(), slog.LevelInfo, "review", attrs...)
		}
	}
}

// jsonPatchTypeValue is every patched answer's patchType (never written through).
var jsonPatchTypeValue = jsonPatchType

// jsonContentType is the answer's Content-Type header value, shared (Header.Set would make and
// canonicalise one per review; nothing appends to it in place).
var jsonContentType = []string{"application/json"}

// reviewLog holds the loggers of one review, made on first use: the plugins' (uid and the
// object's coordinates) and the server's own (uid).
type reviewLog struct {
	attrs           [4]slog.Attr
	h               deferredAttrs
	plugins, server *slog.Logger
}

func (l *reviewLog) forPlugins() *slog.Logger {
	if l.plugins == nil {
		l.plugins = slog.New(&l.h)
	}
	return l.plugins
}

func (l *reviewLog) forServer() *slog.Logger {
	if l.server == nil {
		l.server = slog.New(&deferredAttrs{h: l.h.h, attrs: l.h.attrs[:1:1]})
	}
	return l.server
}

// run executes the route's plugins under the derived deadline and turns their outcome into a
// response. A panic becomes a 500 carrying the uid; the server goes on serving.
func (s *server) run(ctx context.Context, rt Route, in *requestIn, budget time.Duration, authenticated bool, rl *reviewLog, enc *encodeBuffers) (code int, res responseOut, nOps int, logAttrs []slog.Attr) {
	deadline := time.Now().Add(budget)
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	req := &Request{
		UID: in.UID, Kind: in.Kind, Namespace: in.Namespace, Name: in.Name, Operation: in.Operation,
		DryRun: in.DryRun != nil && *in.DryRun, Object: in.Object, OldObject: in.OldObject,
		Deadline: deadline, Log: rl.forPlugins(),
		Authenticated: authenticated,
	}
	if v := in.RawObject.view; v != nil {
		req.decodedBy, req.decoded = in.RawObject.decode, v
	}
	req.UserInfo.Username, req.UserInfo.UID, req.UserInfo.Groups = in.UserInfo.Username, in.UserInfo.UID, in.UserInfo.Groups
	resp := &Response{Patch: patches.NewBuilder()}

	defer func() {
		if p := recover(); p != nil {
			if m := s.opts.Metrics; m != nil {
				m.Panics.WithLabelValues(rt.Name).Inc()
			}
			rl.forServer().Error("panic in admission plugin", "route", rt.Name, "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
			code = http.StatusInternalServerError
			res = responseOut{Allowed: false, Status: &statusOut{Code: http.StatusInternalServerError, Message: "internal error in credential-webhook"}}
		}
	}()

	if rt.MaxObjectBytes > 0 && len(in.Object) > rt.MaxObjectBytes {
		return http.StatusOK, responseOut{Allowed: false, Status: &statusOut{Code: http.StatusRequestEntityTooLarge,
			Message: fmt.Sprintf("%s is %d bytes, more than the %d this webhook accepts", rt.Kind, len(in.Object), rt.MaxObjectBytes)}}, 0, nil
	}
	for _, p := range rt.Plugins {
		if err := p.Admit(ctx, req, resp); err != nil {
			if d, ok := IsDenied(err); ok {
				return http.StatusOK, responseOut{Allowed: false, Status: &statusOut{Code: d.Code, Message: d.Message}, Warnings: resp.Warnings}, 0, resp.LogAttrs
			}
			rl.forServer().Error("admission plugin failed", "plugin", p.Name(), "error", err)
			return http.StatusInternalServerError, responseOut{Allowed: false,
				Status: &statusOut{Code: http.StatusInternalServerError, Message: fmt.Sprintf("%s: %v", p.Name(), err)}}, 0, resp.LogAttrs
		}
	}
	res = responseOut{Allowed: true, Warnings: resp.Warnings}
	if ops := resp.Patch.Ops(); len(ops) > 0 {
		b, err := appendPatch(enc.patch[:0], ops)
		if err != nil {
			return http.StatusInternalServerError, responseOut{Allowed: false,
				Status: &statusOut{Code: http.StatusInternalServerError, Message: "encoding patch: " + err.Error()}}, 0, resp.LogAttrs
		}
		enc.patch = b
		res.Patch, res.PatchType = b, &jsonPatchTypeValue
	}
	return http.StatusOK, res, len(resp.Patch.Ops()), resp.LogAttrs
}

// routeObjectDecoder is the decoder of the route's first ObjectReader, if any. Request.Decoded
// compares decoders as interface values, so a decoder of a type that cannot be compared is not
// used.
func routeObjectDecoder(rt Route) ObjectDecoder {
	for _, p := range rt.Plugins {
		if r, ok := p.(ObjectReader); ok {
			if d := r.ObjectDecoder(); d != nil && reflect.TypeOf(d).Comparable() {
				return d
			}
			return nil
		}
	}
	return nil
}

// encodeBuffers are the patch and the response of one review, reused across reviews.
type encodeBuffers struct{ patch, out []byte }

func (s *server) putEncodeBuffers(b *encodeBuffers) {
	if cap(b.patch)+cap(b.out) <= maxPooledBuffer {
		s.encPool.Put(b)
	}
}

// errOverBudget: the bytes of the reviews in flight would exceed Options.MaxInFlightBytes.
var errOverBudget = errors.New("over the in-flight byte budget")

// chargedReader takes from budget what it reads, as it reads it: a body is charged for the bytes
// it sent, never for what its headers declare.
type chargedReader struct {
	r      io.Reader
	budget *semaphore.Weighted
	held   int64
}

func (c *chargedReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if n > 0 {
		if cerr := c.charge(int64(n)); cerr != nil {
			return 0, cerr
		}
	}
	return n, err
}

// charge takes n more bytes of the budget (nothing when n <= 0), or fails with errOverBudget.
func (c *chargedReader) charge(n int64) error {
	if n <= 0 {
		return nil
	}
	if !c.budget.TryAcquire(n) {
		return errOverBudget
	}
	c.held += n
	return nil
}

// release gives back everything charged.
func (c *chargedReader) release() {
	if c.held > 0 {
		c.budget.Release(c.held)
		c.held = 0
	}
}
