// Package admission serves AdmissionReview v1 over HTTP: it decodes reviews, runs the plugins
// registered for a route, and answers with a JSON patch, warnings or a denial.
//
// The checklist follows controller-runtime's webhook server: the response always echoes
// apiVersion, kind and uid; the body is size-limited; content type and JSON are validated with a
// message naming the problem; kinds a route does not serve are allowed untouched; a panicking
// plugin answers 500 (still carrying the uid) and the process keeps serving.
package admission

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"runtime/debug"
	"strconv"
	"sync"
	"time"

	"github.com/go-chi/chi/v5"
	"gomodules.xyz/jsonpatch/v2"

	"go.klusters.dev/credential-webhook/patches"
)

// DefaultMaxBodyBytes limits a review's size. etcd stores objects up to 1.5 MiB and a review
// carries the object twice plus metadata; 7 MiB leaves room and still bounds memory per request.
const DefaultMaxBodyBytes = 7 << 20

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
}

// Options configure the handler.
type Options struct {
	Routes       []Route
	Log          *slog.Logger
	Metrics      *Metrics
	MaxBodyBytes int64
	// Ready reports whether the server can serve (certificate loaded, TLS answering).
	Ready func(context.Context) error
	// Authenticated says whether a review's HTTP request proves it came from the apiserver (a
	// verified client certificate with an allowed name); nil: never.
	Authenticated func(*http.Request) bool
}

type server struct {
	opts Options
	pool sync.Pool
}

// NewHandler returns the router with one POST endpoint per route plus /healthz and /readyz.
func NewHandler(opts Options) http.Handler {
	if opts.MaxBodyBytes <= 0 {
		opts.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	s := &server{opts: opts, pool: sync.Pool{New: func() any { return new(bytes.Buffer) }}}
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
	return func(w http.ResponseWriter, hr *http.Request) {
		start := time.Now()
		code, decision, kind, op := http.StatusOK, "allowed", "", ""
		defer func() {
			if m := s.opts.Metrics; m != nil {
				m.Requests.WithLabelValues(rt.Name, kind, op, decision, strconv.Itoa(code)).Inc()
				m.Duration.WithLabelValues(rt.Name).Observe(time.Since(start).Seconds())
			}
		}()
		fail := func(c int, msg string) {
			code, decision = c, "error"
			s.opts.Log.Warn("bad review", "route", rt.Name, "code", c, "error", msg)
			http.Error(w, msg, c)
		}

		if ct := hr.Header.Get("Content-Type"); ct != "" {
			if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/json" {
				fail(http.StatusBadRequest, fmt.Sprintf("content type %q is not application/json", ct))
				return
			}
		} else {
			fail(http.StatusBadRequest, "missing content type: expected application/json")
			return
		}
		buf := s.pool.Get().(*bytes.Buffer)
		buf.Reset()
		defer s.pool.Put(buf)
		if _, err := buf.ReadFrom(http.MaxBytesReader(w, hr.Body, s.opts.MaxBodyBytes)); err != nil {
			var tooBig *http.MaxBytesError
			if errors.As(err, &tooBig) {
				fail(http.StatusRequestEntityTooLarge, fmt.Sprintf("review larger than %d bytes", tooBig.Limit))
				return
			}
			fail(http.StatusBadRequest, "reading body: "+err.Error())
			return
		}
		in, err := decodeReview(buf.Bytes())
		if err != nil {
			fail(http.StatusBadRequest, err.Error())
			return
		}
		kind, op = in.Kind.Kind, string(in.Operation)

		out := reviewOut{APIVersion: reviewAPIVersion, Kind: reviewKind, Response: responseOut{UID: in.UID, Allowed: true}}
		log := s.opts.Log.With("uid", in.UID)
		var patchOps int
		if in.Kind.Group == rt.Group && in.Kind.Kind == rt.Kind {
			authn := s.opts.Authenticated != nil && s.opts.Authenticated(hr)
			c, res, n := s.run(hr.Context(), rt, in, budget(hr.URL.Query()), authn, log)
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
		if m := s.opts.Metrics; m != nil && patchOps > 0 {
			m.PatchOps.WithLabelValues(rt.Name).Add(float64(patchOps))
		}

		body, err := json.Marshal(&out)
		if err != nil { // cannot happen with these types; answer something the apiserver reads
			fail(http.StatusInternalServerError, "encoding response: "+err.Error())
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		_, _ = w.Write(body)

		log.Info("review", "route", rt.Name, "kind", in.Kind.Kind, "namespace", in.Namespace, "name", in.Name,
			"operation", in.Operation, "user", in.UserInfo.Username, "dryRun", in.DryRun != nil && *in.DryRun,
			"decision", decision, "patchOps", patchOps, "warnings", len(out.Response.Warnings),
			"duration", time.Since(start))
	}
}

// run executes the route's plugins under the derived deadline and turns their outcome into a
// response. A panic becomes a 500 carrying the uid; the server goes on serving.
func (s *server) run(ctx context.Context, rt Route, in *requestIn, budget time.Duration, authenticated bool, log *slog.Logger) (code int, res responseOut, nOps int) {
	deadline := time.Now().Add(budget)
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	req := &Request{
		UID: in.UID, Kind: in.Kind, Namespace: in.Namespace, Name: in.Name, Operation: in.Operation,
		DryRun: in.DryRun != nil && *in.DryRun, Object: in.Object, OldObject: in.OldObject,
		Deadline: deadline, Log: log.With("kind", in.Kind.Kind, "namespace", in.Namespace, "name", in.Name),
		Authenticated: authenticated,
	}
	req.UserInfo.Username, req.UserInfo.UID, req.UserInfo.Groups = in.UserInfo.Username, in.UserInfo.UID, in.UserInfo.Groups
	resp := &Response{Patch: patches.NewBuilder()}

	defer func() {
		if p := recover(); p != nil {
			if m := s.opts.Metrics; m != nil {
				m.Panics.WithLabelValues(rt.Name).Inc()
			}
			log.Error("panic in admission plugin", "route", rt.Name, "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
			code = http.StatusInternalServerError
			res = responseOut{Allowed: false, Status: &statusOut{Code: http.StatusInternalServerError, Message: "internal error in credential-webhook"}}
		}
	}()

	if rt.MaxObjectBytes > 0 && len(in.Object) > rt.MaxObjectBytes {
		return http.StatusOK, responseOut{Allowed: false, Status: &statusOut{Code: http.StatusRequestEntityTooLarge,
			Message: fmt.Sprintf("%s is %d bytes, more than the %d this webhook accepts", rt.Kind, len(in.Object), rt.MaxObjectBytes)}}, 0
	}
	for _, p := range rt.Plugins {
		if err := p.Admit(ctx, req, resp); err != nil {
			if d, ok := IsDenied(err); ok {
				return http.StatusOK, responseOut{Allowed: false, Status: &statusOut{Code: d.Code, Message: d.Message}, Warnings: resp.Warnings}, 0
			}
			log.Error("admission plugin failed", "plugin", p.Name(), "error", err)
			return http.StatusInternalServerError, responseOut{Allowed: false,
				Status: &statusOut{Code: http.StatusInternalServerError, Message: fmt.Sprintf("%s: %v", p.Name(), err)}}, 0
		}
	}
	res = responseOut{Allowed: true, Warnings: resp.Warnings}
	if ops := resp.Patch.Ops(); len(ops) > 0 {
		b, err := marshalOps(ops)
		if err != nil {
			return http.StatusInternalServerError, responseOut{Allowed: false,
				Status: &statusOut{Code: http.StatusInternalServerError, Message: "encoding patch: " + err.Error()}}, 0
		}
		pt := jsonPatchType
		res.Patch, res.PatchType = b, &pt
	}
	return http.StatusOK, res, len(resp.Patch.Ops())
}

// patchOp is the wire form of one operation. Marshalling these plain structs is several times
// cheaper than jsonpatch.Operation's own MarshalJSON, which builds a map per operation.
type patchOp struct {
	Op    string `json:"op"`
	Path  string `json:"path"`
	Value any    `json:"value,omitempty"`
}

func marshalOps(ops []jsonpatch.Operation) ([]byte, error) {
	out := make([]patchOp, len(ops))
	for i, o := range ops {
		out[i] = patchOp{Op: o.Operation, Path: o.Path, Value: o.Value}
	}
	return json.Marshal(out)
}
