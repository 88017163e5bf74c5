package azure

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/arm"
	azfake "github.com/Azure/azure-sdk-for-go/sdk/azcore/fake"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/msi/armmsi"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/msi/armmsi/fake"
)

const (
	testTenant    = "72f988bf-86f1-41af-91ab-2d7cd011db47"
	testClientID  = "3f6b1c2d-8e4a-4b7f-9c1d-5a2e7f8b9c0d"
	testPrincipal = "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d"
)

// fakeARM configures the SDK's own armmsi fake server. The behaviour per request is decided by
// next, which may block (to hold a call in flight) or return an error status.
type fakeARM struct {
	gets atomic.Int64 // Get requests the fake served
	mu   sync.Mutex
	// status to answer with (0 = 200 with the identity); consumed front to back, then ok.
	statuses []int
	// clientIDs per lower-case "rg/name"; missing means 404.
	clientIDs map[string]string
	block     chan struct{} // when non-nil, Get waits for it to close
	entered   chan struct{} // when non-nil, receives once per Get
	paths     []string      // request paths seen by the recording transport or relay
	authz     string        // last Authorization header the relay saw
	query     string        // last query the relay saw
}

func newFakeARM() *fakeARM {
	return &fakeARM{clientIDs: map[string]string{strings.ToLower(testRG + "/" + testMI): testClientID}}
}

func (f *fakeARM) server() *fake.UserAssignedIdentitiesServer {
	return &fake.UserAssignedIdentitiesServer{
		Get: func(ctx context.Context, rg, name string, _ *armmsi.UserAssignedIdentitiesClientGetOptions) (resp azfake.Responder[armmsi.UserAssignedIdentitiesClientGetResponse], errResp azfake.ErrorResponder) {
			f.gets.Add(1)
			if f.entered != nil {
				f.entered <- struct{}{}
			}
			if f.block != nil {
				<-f.block
			}
			f.mu.Lock()
			status := 0
			if len(f.statuses) > 0 {
				status, f.statuses = f.statuses[0], f.statuses[1:]
			}
			cid, ok := f.clientIDs[strings.ToLower(rg+"/"+name)]
			f.mu.Unlock()
			switch {
			case status == http.StatusTooManyRequests:
				errResp.SetResponseError(status, "TooManyRequests")
			case status != 0:
				errResp.SetResponseError(status, fmt.Sprintf("Status%d", status))
			case !ok:
				errResp.SetResponseError(http.StatusNotFound, "ResourceNotFound")
			default:
				resp.SetResponse(http.StatusOK, armmsi.UserAssignedIdentitiesClientGetResponse{Identity: armmsi.Identity{
					ID:       to.Ptr("/subscriptions/" + testSub + "/resourcegroups/" + rg + "/providers/Microsoft.ManagedIdentity/userAssignedIdentities/" + name),
					Name:     to.Ptr(name),
					Location: to.Ptr("westeurope"),
					Properties: &armmsi.UserAssignedIdentityProperties{
						ClientID: to.Ptr(cid), TenantID: to.Ptr(testTenant), PrincipalID: to.Ptr(testPrincipal),
					},
				}}, nil)
			}
			return
		},
	}
}

func (f *fakeARM) set(rg, name, clientID string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.clientIDs[strings.ToLower(rg+"/"+name)] = clientID
}

func (f *fakeARM) failNext(statuses ...int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.statuses = append(f.statuses, statuses...)
}

// recorder is a transport that notes each request path before handing it to the fake, so tests
// can see which subscription a request went to (the fake's Get does not receive it).
type recorder struct {
	f    *fakeARM
	next policy.Transporter
}

func (r recorder) Do(req *http.Request) (*http.Response, error) {
	r.f.mu.Lock()
	r.f.paths = append(r.f.paths, req.URL.Path)
	r.f.mu.Unlock()
	return r.next.Do(req)
}

// testClock is a manually advanced clock.
type testClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *testClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// testOptions: the fake transport, and SDK retries kept (2 retries) but without real delays.
func testOptions(f *fakeARM) arm.ClientOptions {
	return arm.ClientOptions{ClientOptions: azcore.ClientOptions{
		Transport: recorder{f: f, next: fake.NewUserAssignedIdentitiesServerTransport(f.server())},
		Retry:     policy.RetryOptions{MaxRetries: 2, RetryDelay: time.Millisecond, MaxRetryDelay: time.Millisecond},
	}}
}

func newTestResolver(t *testing.T, f *fakeARM, cfg ResolverConfig) (*Resolver, *testClock) {
	t.Helper()
	clk := &testClock{now: time.Date(2026, 5, 6, 12, 0, 0, 0, time.UTC)}
	if cfg.Now == nil {
		cfg.Now = clk.Now
	}
	r, err := NewResolver(&azfake.TokenCredential{}, testOptions(f), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return r, clk
}

var testIdentity = Identity{SubscriptionID: testSub, ResourceGroup: testRG, Name: testMI}

func mustLookup(t *testing.T, r *Resolver, id Identity) Resolved {
	t.Helper()
	got, err := r.Lookup(context.Background(), id)
	if err != nil {
		t.Fatalf("Lookup(%s): %v", id, err)
	}
	return got
}

func TestLookupCachesAndCounts(t *testing.T) {
	f := newFakeARM()
	f.set(testRG, "second-mi", "0d9c8b7a-6f5e-4d3c-2b1a-0f9e8d7c6b5a")
	r, clk := newTestResolver(t, f, ResolverConfig{})

	got := mustLookup(t, r, testIdentity)
	want := Resolved{
		ResourceID: "/subscriptions/" + testSub + "/resourcegroups/" + testRG + "/providers/Microsoft.ManagedIdentity/userAssignedIdentities/" + testMI,
		ClientID:   testClientID, TenantID: testTenant, PrincipalID: testPrincipal,
	}
	if got != want {
		t.Fatalf("got %+v\nwant %+v", got, want)
	}
	if s := r.Stats(); s.ARMCalls != 1 || s.ARMRequests != 1 || s.Hits != 0 {
		t.Fatalf("after first lookup: %+v", s)
	}

	// Same identity, different casing (ARM is case-insensitive): a hit.
	upper := Identity{SubscriptionID: strings.ToUpper(testSub), ResourceGroup: strings.ToUpper(testRG), Name: strings.ToUpper(testMI)}
	mustLookup(t, r, testIdentity)
	if got := mustLookup(t, r, upper); got.ClientID != testClientID {
		t.Fatalf("upper-case lookup gave %+v", got)
	}
	if s := r.Stats(); s.ARMCalls != 1 || s.Hits != 2 || s.Lookups != 3 {
		t.Fatalf("after hits: %+v", s)
	}

	// Another identity: a miss.
	if got := mustLookup(t, r, Identity{testSub, testRG, "second-mi"}); got.ClientID != "0d9c8b7a-6f5e-4d3c-2b1a-0f9e8d7c6b5a" {
		t.Fatalf("second identity gave %+v", got)
	}
	if s := r.Stats(); s.ARMCalls != 2 {
		t.Fatalf("after second identity: %+v", s)
	}

	// The default positive TTL is one hour.
	clk.Advance(59 * time.Minute)
	mustLookup(t, r, testIdentity)
	if s := r.Stats(); s.ARMCalls != 2 {
		t.Fatalf("within TTL: %+v", s)
	}
	clk.Advance(2 * time.Minute)
	f.set(testRG, testMI, "11111111-2222-4333-8444-555555555555") // identity re-created
	if got := mustLookup(t, r, testIdentity); got.ClientID != "11111111-2222-4333-8444-555555555555" {
		t.Fatalf("after TTL got %+v", got)
	}
	if s := r.Stats(); s.ARMCalls != 3 || f.gets.Load() != 3 {
		t.Fatalf("after TTL: %+v, fake served %d", s, f.gets.Load())
	}

	// Forget makes the next lookup go to ARM.
	r.Forget(upper)
	mustLookup(t, r, testIdentity)
	if s := r.Stats(); s.ARMCalls != 4 {
		t.Fatalf("after Forget: %+v", s)
	}
}

func TestLookupNegativeTTL(t *testing.T) {
	f := newFakeARM()
	r, clk := newTestResolver(t, f, ResolverConfig{NegativeTTL: 30 * time.Second})
	missing := Identity{testSub, testRG, "not-yet-created"}

	_, err := r.Lookup(context.Background(), missing)
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("err = %v, want ErrNotFound", err)
	}
	if !strings.Contains(err.Error(), "ResourceNotFound") || !strings.Contains(err.Error(), missing.ResourceID()) {
		t.Errorf("error does not say what was not found: %v", err)
	}
	_, err = r.Lookup(context.Background(), missing)
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("cached err = %v, want ErrNotFound", err)
	}
	if s := r.Stats(); s.ARMCalls != 1 || s.NegativeHits != 1 || s.ARMRequests != 1 {
		t.Fatalf("404 must be answered once and not retried: %+v", s)
	}

	// The identity is created; the negative entry hides it until it expires.
	f.set(testRG, "not-yet-created", testClientID)
	clk.Advance(29 * time.Second)
	if _, err := r.Lookup(context.Background(), missing); !errors.Is(err, ErrNotFound) {
		t.Fatalf("within negative TTL: %v", err)
	}
	clk.Advance(2 * time.Second)
	if got := mustLookup(t, r, missing); got.ClientID != testClientID {
		t.Fatalf("after negative TTL: %+v", got)
	}
	if s := r.Stats(); s.ARMCalls != 2 {
		t.Fatalf("after negative TTL: %+v", s)
	}
}

// Throttling, server errors and authorization failures are not cached: the next lookup asks again.
// (The in-process fake transport reports error statuses as non-retriable errors, so the SDK does
// not retry here; TestLookupThrottlingOverHTTP covers the retries.)
func TestLookupErrorsNotCached(t *testing.T) {
	for _, status := range []int{http.StatusTooManyRequests, http.StatusInternalServerError, http.StatusServiceUnavailable, http.StatusForbidden} {
		t.Run(http.StatusText(status), func(t *testing.T) {
			f := newFakeARM()
			f.failNext(status)
			r, _ := newTestResolver(t, f, ResolverConfig{})

			_, err := r.Lookup(context.Background(), testIdentity)
			var re *azcore.ResponseError
			if !errors.As(err, &re) || re.StatusCode != status {
				t.Fatalf("err = %v, want a ResponseError with status %d", err, status)
			}
			if errors.Is(err, ErrNotFound) {
				t.Fatalf("%d reported as not found", status)
			}
			s := r.Stats()
			wantThrottled := int64(0)
			if status == http.StatusTooManyRequests {
				wantThrottled = 1
			}
			if s.ARMCalls != 1 || s.ARMRequests != 1 || s.Throttled != wantThrottled {
				t.Fatalf("stats %+v", s)
			}
			// ARM has recovered: the next lookup asks again and succeeds.
			if got := mustLookup(t, r, testIdentity); got.ClientID != testClientID {
				t.Fatalf("after recovery: %+v", got)
			}
			if s := r.Stats(); s.ARMCalls != 2 || s.NegativeHits != 0 || f.gets.Load() != 2 {
				t.Fatalf("error was cached: %+v", s)
			}
		})
	}
}

// newRelay serves the SDK's fake over real HTTPS on 127.0.0.1, turning the fake's error
// responses into real HTTP responses, so the SDK's pipeline (retries on 429/5xx, bearer token,
// endpoint) runs as against ARM. ARM's behaviour is still the SDK fake's, not ours.
func newRelay(t *testing.T, f *fakeARM) *httptest.Server {
	t.Helper()
	tr := fake.NewUserAssignedIdentitiesServerTransport(f.server())
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		f.mu.Lock()
		f.paths = append(f.paths, req.URL.Path)
		f.authz = req.Header.Get("Authorization")
		f.query = req.URL.RawQuery
		f.mu.Unlock()
		// The fake dispatches on the API name the client puts in the request context.
		ctx := context.WithValue(req.Context(), runtime.CtxAPINameKey{}, "UserAssignedIdentitiesClient.Get")
		out := req.Clone(ctx)
		out.URL.Host, out.URL.Scheme = req.Host, "https"
		resp, err := tr.Do(out)
		var re *azcore.ResponseError
		if err != nil && errors.As(err, &re) && re.RawResponse != nil {
			resp, err = re.RawResponse, nil
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		for k, v := range resp.Header {
			w.Header()[k] = v
		}
		w.WriteHeader(resp.StatusCode)
		_, _ = io.Copy(w, resp.Body)
	}))
	t.Cleanup(srv.Close)
	return srv
}

func newRelayResolver(t *testing.T, srv *httptest.Server) *Resolver {
	t.Helper()
	opts := ClientOptions(srv.URL+"/", "https://arm.test.local/")
	opts.Transport = srv.Client()
	opts.Retry = policy.RetryOptions{MaxRetries: 2, RetryDelay: time.Millisecond, MaxRetryDelay: time.Millisecond}
	r, err := NewResolver(&azfake.TokenCredential{}, opts, ResolverConfig{})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestLookupThrottlingOverHTTP(t *testing.T) {
	t.Run("throttled throughout", func(t *testing.T) {
		f := newFakeARM()
		f.failNext(http.StatusTooManyRequests, http.StatusTooManyRequests, http.StatusTooManyRequests)
		r := newRelayResolver(t, newRelay(t, f))
		_, err := r.Lookup(context.Background(), testIdentity)
		var re *azcore.ResponseError
		if !errors.As(err, &re) || re.StatusCode != http.StatusTooManyRequests {
			t.Fatalf("err = %v, want 429", err)
		}
		// One operation, three HTTP requests (one try, MaxRetries 2), all throttled.
		if s := r.Stats(); s.ARMCalls != 1 || s.ARMRequests != 3 || s.Throttled != 3 || f.gets.Load() != 3 {
			t.Fatalf("stats %+v, fake served %d", s, f.gets.Load())
		}
		if got := mustLookup(t, r, testIdentity); got.ClientID != testClientID {
			t.Fatalf("after recovery: %+v", got)
		}
		if s := r.Stats(); s.ARMCalls != 2 || s.Hits != 0 {
			t.Fatalf("throttling was cached: %+v", s)
		}
	})
	t.Run("throttled once", func(t *testing.T) {
		f := newFakeARM()
		f.failNext(http.StatusTooManyRequests)
		r := newRelayResolver(t, newRelay(t, f))
		if got := mustLookup(t, r, testIdentity); got.ClientID != testClientID {
			t.Fatalf("got %+v", got)
		}
		if s := r.Stats(); s.ARMCalls != 1 || s.ARMRequests != 2 || s.Throttled != 1 {
			t.Fatalf("stats %+v", s)
		}
	})
}

func TestLookupConcurrentMissesShareOneCall(t *testing.T) {
	f := newFakeARM()
	f.block = make(chan struct{})
	f.entered = make(chan struct{}, 200)
	r, _ := newTestResolver(t, f, ResolverConfig{})

	const n = 100
	var wg sync.WaitGroup
	results := make([]Resolved, n)
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() { results[i], errs[i] = r.Lookup(context.Background(), testIdentity) })
	}
	// Hold ARM's answer until every caller is inside Lookup; the cache is still empty, so each
	// of them must either join the call in flight or (having raced past it) find its answer.
	<-f.entered
	deadline := time.Now().Add(30 * time.Second)
	for r.Stats().Lookups < n {
		if time.Now().After(deadline) {
			t.Fatalf("only %d lookups started", r.Stats().Lookups)
		}
		time.Sleep(time.Millisecond)
	}
	close(f.block)
	wg.Wait()
	for i := range n {
		if errs[i] != nil || results[i].ClientID != testClientID {
			t.Fatalf("caller %d: %+v, %v", i, results[i], errs[i])
		}
	}
	if s := r.Stats(); s.ARMCalls != 1 || s.ARMRequests != 1 || f.gets.Load() != 1 {
		t.Fatalf("stats %+v, fake served %d; want exactly one ARM call", s, f.gets.Load())
	}
}

// A caller that gives up (admission deadline) neither fails the others waiting on the same call
// nor keeps the answer out of the cache.
func TestLookupCallerCancelDoesNotCancelSharedCall(t *testing.T) {
	f := newFakeARM()
	f.block = make(chan struct{})
	f.entered = make(chan struct{}, 10)
	r, _ := newTestResolver(t, f, ResolverConfig{})

	ctx, cancel := context.WithCancel(context.Background())
	firstErr := make(chan error, 1)
	go func() { _, err := r.Lookup(ctx, testIdentity); firstErr <- err }()
	<-f.entered // the first caller's call is in flight
	second := make(chan error, 1)
	go func() {
		got, err := r.Lookup(context.Background(), testIdentity)
		if err == nil && got.ClientID != testClientID {
			err = fmt.Errorf("got %+v", got)
		}
		second <- err
	}()
	cancel()
	if err := <-firstErr; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled caller: %v, want context.Canceled", err)
	}
	close(f.block)
	if err := <-second; err != nil {
		t.Fatalf("second caller: %v", err)
	}
	mustLookup(t, r, testIdentity)
	if s := r.Stats(); s.ARMCalls != 1 || s.Hits < 1 {
		t.Fatalf("stats %+v; the shared answer should be cached", s)
	}
}

func TestLookupPerSubscriptionClients(t *testing.T) {
	const otherSub = "0b7f2d6e-1a3c-4e5f-9d8b-7c6a5e4d3c2b"
	f := newFakeARM()
	r, _ := newTestResolver(t, f, ResolverConfig{})
	mustLookup(t, r, testIdentity)
	mustLookup(t, r, Identity{otherSub, testRG, testMI})
	mustLookup(t, r, Identity{strings.ToUpper(otherSub), testRG, testMI}) // cached
	want := []string{
		"/subscriptions/" + testSub + "/resourceGroups/" + testRG + "/providers/Microsoft.ManagedIdentity/userAssignedIdentities/" + testMI,
		"/subscriptions/" + otherSub + "/resourceGroups/" + testRG + "/providers/Microsoft.ManagedIdentity/userAssignedIdentities/" + testMI,
	}
	if fmt.Sprint(f.paths) != fmt.Sprint(want) {
		t.Fatalf("paths %q\nwant %q", f.paths, want)
	}
	if len(r.clients) != 2 {
		t.Fatalf("%d clients, want one per subscription", len(r.clients))
	}
}

func TestLookupRejectsInvalidARMAnswer(t *testing.T) {
	f := newFakeARM()
	f.set(testRG, testMI, "use-mi-x; rm -rf")
	r, _ := newTestResolver(t, f, ResolverConfig{})
	if _, err := r.Lookup(context.Background(), testIdentity); err == nil || !strings.Contains(err.Error(), "clientId") {
		t.Fatalf("err = %v, want a clientId complaint", err)
	}
	f.set(testRG, testMI, testClientID)
	if got := mustLookup(t, r, testIdentity); got.ClientID != testClientID {
		t.Fatalf("invalid answer was cached: %+v", got)
	}
}

func TestCacheBounded(t *testing.T) {
	f := newFakeARM()
	r, _ := newTestResolver(t, f, ResolverConfig{MaxEntries: 3})
	for i := range 10 {
		_, _ = r.Lookup(context.Background(), Identity{testSub, testRG, fmt.Sprintf("missing-%d", i)})
	}
	if n := len(r.cache); n > 3 {
		t.Fatalf("cache holds %d entries, max 3", n)
	}
	if s := r.Stats(); s.ARMCalls != 10 {
		t.Fatalf("stats %+v", s)
	}
}

// The ARM endpoint is configurable: a local HTTPS server receives the request, with a bearer
// token and the api-version.
func TestLookupCustomEndpoint(t *testing.T) {
	f := newFakeARM()
	r := newRelayResolver(t, newRelay(t, f))
	if got := mustLookup(t, r, testIdentity); got.ClientID != testClientID {
		t.Fatalf("got %+v", got)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.paths) != 1 || f.paths[0] != testIdentity.ResourceID() {
		t.Errorf("server saw paths %q", f.paths)
	}
	if !strings.HasPrefix(f.authz, "Bearer ") {
		t.Errorf("server saw Authorization %q", f.authz)
	}
	if !strings.Contains(f.query, "api-version=") {
		t.Errorf("server saw query %q", f.query)
	}
	if s := r.Stats(); s.ARMRequests != 1 {
		t.Errorf("stats %+v", s)
	}
}

func TestClientOptionsDefaultIsPublicCloud(t *testing.T) {
	o := ClientOptions("", "")
	if len(o.Cloud.Services) != 0 {
		t.Fatalf("empty endpoint should leave the SDK's public-cloud default, got %+v", o.Cloud)
	}
	o = ClientOptions("https://management.usgovcloudapi.net", "https://management.core.usgovcloudapi.net/")
	if got := o.Cloud.Services["resourceManager"]; got.Endpoint != "https://management.usgovcloudapi.net" || got.Audience != "https://management.core.usgovcloudapi.net/" {
		t.Fatalf("got %+v", got)
	}
}

type nopPolicy struct{}

func (nopPolicy) Do(req *policy.Request) (*http.Response, error) { return req.Next() }

func TestNewResolverKeepsCallerPolicies(t *testing.T) {
	f := newFakeARM()
	opts := testOptions(f)
	backing := make([]policy.Policy, 1, 4)
	backing[0] = nopPolicy{}
	opts.PerRetryPolicies = backing[:1]
	r, err := NewResolver(&azfake.TokenCredential{}, opts, ResolverConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if backing[:2][1] != nil {
		t.Fatal("NewResolver appended into the caller's backing array")
	}
	mustLookup(t, r, testIdentity)
	if s := r.Stats(); s.ARMRequests != 1 {
		t.Fatalf("counting policy not installed: %+v", s)
	}
	if _, err := NewResolver(nil, opts, ResolverConfig{}); err == nil {
		t.Fatal("nil credential accepted")
	}
}
