package harness

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"sync"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
)

// frontend plays the part of the webhook's Service: the MutatingWebhookConfiguration points at
// its one URL, and it spreads reviews round-robin over the webhook replicas that are up, as
// kube-proxy does. With no replica up it drops the connection, so the apiserver sees the same
// call failure as with a Service without endpoints and applies the failurePolicy.
//
// It terminates TLS with the webhook's own dev certificate and records every AdmissionReview
// request and response as they crossed the wire, which is the only place the review uid the
// apiserver generated can be observed from outside.
type frontend struct {
	url      string
	listener net.Listener
	server   *http.Server
	client   *http.Client

	mu       sync.Mutex
	backends []backend
	next     int
	reviews  []WireReview
	changed  chan struct{} // closed and replaced whenever reviews grows
}

type backend struct {
	name string
	url  string // https://127.0.0.1:PORT
}

// WireReview is one AdmissionReview as the apiserver sent it and as the webhook answered.
type WireReview struct {
	Time    time.Time
	Path    string // e.g. /mutate/serviceaccounts
	Backend string // name of the webhook replica that answered; empty when none did

	UID       string
	Kind      string // e.g. ServiceAccount
	Namespace string
	Name      string // empty on CREATE with generateName
	Operation string
	DryRun    bool
	User      string   // userInfo.username of the requester
	Groups    []string // userInfo.groups

	// Err is set when no replica answered (none up, or every one failed at the transport).
	Err string
	// StatusCode is the HTTP status the webhook answered with (0 when Err is set).
	StatusCode int
	Allowed    bool
	Result     string // response.status.message, when set
	PatchOps   int
	Patch      json.RawMessage // decoded JSON patch (response.patch is base64 on the wire)
	Warnings   []string

	Request  json.RawMessage // the full AdmissionReview sent by the apiserver
	Response json.RawMessage // the full body the webhook answered
}

func newFrontend(certFile, keyFile, caFile string) (*frontend, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("frontend: load webhook certificate: %w", err)
	}
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("frontend: read CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("frontend: no certificate in %s", caFile)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("frontend: listen: %w", err)
	}
	f := &frontend{
		url:      "https://" + l.Addr().String(),
		listener: l,
		changed:  make(chan struct{}),
		client: &http.Client{
			Transport: &http.Transport{
				TLSClientConfig:     &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
				MaxIdleConnsPerHost: 32,
				DialContext:         (&net.Dialer{Timeout: 2 * time.Second}).DialContext,
			},
		},
	}
	f.server = &http.Server{
		Handler:           http.HandlerFunc(f.serve),
		ReadHeaderTimeout: 10 * time.Second,
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		// HTTP/1.1 only, like the webhook by default (--http2=false): the apiserver then speaks
		// to the frontend as it would to a replica, and a dropped call is a closed connection.
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){},
	}
	go func() { _ = f.server.ServeTLS(l, "", "") }()
	return f, nil
}

func (f *frontend) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = f.server.Shutdown(ctx)
	f.client.CloseIdleConnections()
}

func (f *frontend) add(b backend) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.backends = slices.DeleteFunc(f.backends, func(x backend) bool { return x.name == b.name })
	f.backends = append(f.backends, b)
}

func (f *frontend) remove(name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.backends = slices.DeleteFunc(f.backends, func(x backend) bool { return x.name == name })
}

// order returns the backends to try for one request, rotating the starting point.
func (f *frontend) order() []backend {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := len(f.backends)
	out := make([]backend, 0, n)
	for i := range n {
		out = append(out, f.backends[(f.next+i)%n])
	}
	if n > 0 {
		f.next = (f.next + 1) % n
	}
	return out
}

func (f *frontend) record(r WireReview) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reviews = append(f.reviews, r)
	close(f.changed)
	f.changed = make(chan struct{})
}

// snapshot returns the recorded reviews and a channel closed on the next one.
func (f *frontend) snapshot() ([]WireReview, <-chan struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.reviews), f.changed
}

func (f *frontend) serve(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 32<<20))
	if err != nil {
		http.Error(w, "read body: "+err.Error(), http.StatusBadRequest)
		return
	}
	rec := describeRequest(r.URL.Path, body)
	for _, b := range f.order() {
		resp, err := f.forward(r, b, body)
		if err != nil {
			// A replica that went away between the list and the dial: try the next, as a
			// client retrying another endpoint would.
			rec.Err = fmt.Sprintf("%s: %v", b.name, err)
			if r.Context().Err() != nil {
				break
			}
			continue
		}
		rec.Err = ""
		rec.Backend = b.name
		describeResponse(&rec, resp.StatusCode, resp.body)
		f.record(rec)
		for k, vs := range resp.header {
			for _, v := range vs {
				w.Header().Add(k, v)
			}
		}
		w.WriteHeader(resp.StatusCode)
		_, _ = w.Write(resp.body)
		return
	}
	if rec.Err == "" {
		rec.Err = "no webhook replica is up"
	}
	f.record(rec)
	// Drop the connection without an HTTP answer, like a Service without endpoints.
	panic(http.ErrAbortHandler)
}

type forwarded struct {
	StatusCode int
	header     http.Header
	body       []byte
}

func (f *frontend) forward(r *http.Request, b backend, body []byte) (*forwarded, error) {
	req, err := http.NewRequestWithContext(r.Context(), r.Method, b.url+r.URL.RequestURI(), bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header = r.Header.Clone()
	resp, err := f.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	rb, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("read answer: %w", err)
	}
	h := resp.Header.Clone()
	h.Del("Content-Length")
	return &forwarded{StatusCode: resp.StatusCode, header: h, body: rb}, nil
}

func describeRequest(path string, body []byte) WireReview {
	rec := WireReview{Time: time.Now(), Path: path, Request: json.RawMessage(bytes.Clone(body))}
	var rev admissionv1.AdmissionReview
	if err := json.Unmarshal(body, &rev); err != nil || rev.Request == nil {
		return rec
	}
	q := rev.Request
	rec.UID = string(q.UID)
	rec.Kind = q.Kind.Kind
	rec.Namespace = q.Namespace
	rec.Name = q.Name
	rec.Operation = string(q.Operation)
	rec.DryRun = q.DryRun != nil && *q.DryRun
	rec.User = q.UserInfo.Username
	rec.Groups = q.UserInfo.Groups
	return rec
}

func describeResponse(rec *WireReview, code int, body []byte) {
	rec.StatusCode = code
	rec.Response = json.RawMessage(bytes.Clone(body))
	var rev admissionv1.AdmissionReview
	if err := json.Unmarshal(body, &rev); err != nil || rev.Response == nil {
		return
	}
	a := rev.Response
	rec.Allowed = a.Allowed
	rec.Warnings = a.Warnings
	if a.Result != nil {
		rec.Result = a.Result.Message
	}
	if len(a.Patch) > 0 {
		rec.Patch = json.RawMessage(a.Patch)
		var ops []json.RawMessage
		if json.Unmarshal(a.Patch, &ops) == nil {
			rec.PatchOps = len(ops)
		}
	}
}

// waitReview waits until a recorded review satisfies match.
func (f *frontend) waitReview(ctx context.Context, match func(WireReview) bool) (WireReview, error) {
	for {
		all, changed := f.snapshot()
		for _, r := range all {
			if match(r) {
				return r, nil
			}
		}
		select {
		case <-ctx.Done():
			return WireReview{}, fmt.Errorf("no matching AdmissionReview reached the webhook frontend: %w", ctx.Err())
		case <-changed:
		}
	}
}
