// Package arm serves Azure Resource Manager's managed identity reads and a managed-identity token
// endpoint on 127.0.0.1, for tests and the demo. It is test support and never linked into the
// product binary.
//
// ARM's behaviour is not ours: every identity read is handed to the Azure SDK's own fake server
// (armmsi/fake.UserAssignedIdentitiesServer through fake.NewUserAssignedIdentitiesServerTransport)
// and the fake's answer is written back over HTTPS. What this package adds is only what the
// fake cannot do over the wire: a TLS listener with a throw-away CA (CAFile, for SSL_CERT_FILE),
// bearer-token and api-version checks, injected throttling (429 with Retry-After) and 5xx, and
// call counts.
//
// The token endpoint speaks the App Service managed-identity protocol (IDENTITY_ENDPOINT and
// IDENTITY_HEADER, API version 2019-08-01). azidentity v1.15.0 selects its source through MSAL's
// managedidentity.GetSource: IDENTITY_ENDPOINT and IDENTITY_HEADER both set (and
// IDENTITY_SERVER_THUMBPRINT empty, else Service Fabric) means App Service, checked before
// MSI_ENDPOINT (Cloud Shell, Azure ML), Azure Arc and the IMDS default; only the IMDS source ever
// probes 169.254.169.254. Env also sets AZURE_TOKEN_CREDENTIALS=ManagedIdentityCredential, so
// DefaultAzureCredential builds nothing but the managed-identity credential (no environment
// secrets, no Azure CLI, and no IMDS probe, which it only adds when the chain holds another
// credential), and empties AZURE_FEDERATED_TOKEN_FILE, so neither the product's credential choice
// nor the SDK ever picks workload identity, which would call login.microsoftonline.com.
package arm

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	azarm "github.com/Azure/azure-sdk-for-go/sdk/azcore/arm"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	azfake "github.com/Azure/azure-sdk-for-go/sdk/azcore/fake"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/msi/armmsi"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/msi/armmsi/fake"
)

// The identity the demo, the admission fixtures and scripts/ use. Its IDs are fixed so expected
// patches are deterministic.
const (
	DemoSubscriptionID = "00000000-0000-0000-0000-0000000000aa"
	DemoResourceGroup  = "backup-rg"
	DemoIdentityName   = "kubestash-mi"
	DemoClientID       = "00000000-0000-0000-0000-0000000000cc"
	DemoTenantID       = "00000000-0000-0000-0000-0000000000bb"
	DemoPrincipalID    = "00000000-0000-0000-0000-0000000000dd"
)

const (
	// Audience is the token audience the ARM endpoint accepts: the public cloud's, which is what
	// credential-webhook asks for when --azure-arm-audience is empty.
	Audience = "https://management.core.windows.net/"
	// TokenAPIVersion is the App Service managed-identity protocol version MSAL speaks.
	TokenAPIVersion = "2019-08-01"
	// TokenPath is the token endpoint's path (IDENTITY_ENDPOINT = TokenURL).
	TokenPath = "/msi/token"
)

// Demo is the demo identity with its fixed IDs.
func Demo() Identity {
	return Identity{
		SubscriptionID: DemoSubscriptionID, ResourceGroup: DemoResourceGroup, Name: DemoIdentityName,
		ClientID: DemoClientID, TenantID: DemoTenantID, PrincipalID: DemoPrincipalID,
	}
}

// Identity is a user-assigned managed identity the server knows.
type Identity struct {
	SubscriptionID, ResourceGroup, Name string
	ClientID, TenantID, PrincipalID     string
}

// ResourceID is the identity's ARM resource ID.
func (i Identity) ResourceID() string {
	return "/subscriptions/" + i.SubscriptionID + "/resourceGroups/" + i.ResourceGroup +
		"/providers/Microsoft.ManagedIdentity/userAssignedIdentities/" + i.Name
}

// key folds case like ARM, whose resource names are case-insensitive.
func key(sub, rg, name string) string { return strings.ToLower(sub + "/" + rg + "/" + name) }

// Calls are the server's counters since start or the last ResetCalls.
type Calls struct {
	ARM          int64 // HTTP requests to the ARM endpoint, rejected ones included
	Gets         int64 // identity reads handed to the SDK fake (injected faults and 404s included)
	Faults       int64 // reads answered with an injected 429/5xx
	Unauthorized int64 // ARM requests without the expected bearer token
	Tokens       int64 // tokens issued by the managed-identity endpoint
}

// Server is a running ARM endpoint and managed-identity token endpoint.
type Server struct {
	// URL is the ARM endpoint, https://127.0.0.1:PORT: the value of --azure-arm-endpoint.
	URL string
	// TokenURL is the managed-identity endpoint, http://127.0.0.1:PORT/msi/token: IDENTITY_ENDPOINT.
	TokenURL string
	// IdentityHeader is the secret the token endpoint requires: IDENTITY_HEADER.
	IdentityHeader string
	// CAPEM is the CA that signed URL's certificate; CAFile holds it (SSL_CERT_FILE).
	CAPEM  []byte
	CAFile string
	// TenantID is the tenant AddIdentity gives new identities (random per server).
	TenantID string

	fakeTransport *fake.UserAssignedIdentitiesServerTransport
	armSrv        *http.Server
	tokenSrv      *http.Server
	ownDir        string // removed by Stop (StartProcess only)

	mu         sync.Mutex
	identities map[string]Identity
	perID      map[string]int64 // Gets per identity key
	failNext   []int
	failAll    int
	latency    time.Duration
	retryAfter time.Duration

	arm, gets, faults, unauthorized, tokens atomic.Int64

	stopOnce sync.Once
	stopErr  error
}

// Start starts a server for tb and stops it in tb.Cleanup. Its CA file lives in tb.TempDir().
func Start(tb testing.TB) *Server {
	tb.Helper()
	s, err := start(tb.TempDir())
	if err != nil {
		tb.Fatalf("arm: %v", err)
	}
	tb.Cleanup(func() {
		if tb.Failed() {
			tb.Logf("arm server %s: calls %+v", s.URL, s.Calls())
		}
		if err := s.Stop(); err != nil {
			tb.Errorf("arm: stop: %v", err)
		}
	})
	return s
}

// StartProcess starts a server outside a test (the devenv command). The caller must call Stop,
// which also removes the temporary folder holding the CA file. ctx bounds only the start-up.
func StartProcess(ctx context.Context) (*Server, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("arm: %w", err)
	}
	dir, err := os.MkdirTemp("", "testenv-arm-")
	if err != nil {
		return nil, fmt.Errorf("arm: %w", err)
	}
	s, err := start(dir)
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	s.ownDir = dir
	return s, nil
}

func start(dir string) (*Server, error) {
	caPEM, cert, err := selfSigned()
	if err != nil {
		return nil, err
	}
	caFile := filepath.Join(dir, "arm-ca.crt")
	if err := os.WriteFile(caFile, caPEM, 0o600); err != nil {
		return nil, fmt.Errorf("arm: write CA: %w", err)
	}
	s := &Server{
		CAPEM: caPEM, CAFile: caFile,
		IdentityHeader: randomHex(16),
		TenantID:       NewGUID(),
		identities:     map[string]Identity{},
		perID:          map[string]int64{},
		retryAfter:     100 * time.Millisecond,
	}
	s.fakeTransport = fake.NewUserAssignedIdentitiesServerTransport(&fake.UserAssignedIdentitiesServer{Get: s.fakeGet})

	armLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("arm: listen: %w", err)
	}
	tokenLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		_ = armLn.Close()
		return nil, fmt.Errorf("arm: listen: %w", err)
	}
	s.URL = "https://" + armLn.Addr().String()
	s.TokenURL = "http://" + tokenLn.Addr().String() + TokenPath
	s.armSrv = &http.Server{
		Handler:           http.HandlerFunc(s.serveARM),
		ReadHeaderTimeout: 10 * time.Second,
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
	}
	mux := http.NewServeMux()
	mux.HandleFunc(TokenPath, s.serveToken)
	s.tokenSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = s.armSrv.ServeTLS(armLn, "", "") }()
	go func() { _ = s.tokenSrv.Serve(tokenLn) }()
	return s, nil
}

// Stop closes both listeners. It is safe to call more than once.
func (s *Server) Stop() error {
	s.stopOnce.Do(func() {
		// Close, not Shutdown: clients keep HTTP/2 connections open, and a test server has no
		// state worth draining requests for.
		var errs []error
		for _, srv := range []*http.Server{s.armSrv, s.tokenSrv} {
			errs = append(errs, srv.Close())
		}
		if s.ownDir != "" {
			errs = append(errs, os.RemoveAll(s.ownDir))
		}
		s.stopErr = errors.Join(errs...)
	})
	return s.stopErr
}

// Env points azidentity's managed-identity credential at the token endpoint and makes the ARM
// endpoint's certificate trusted, leaving no path to IMDS or Entra ID (see the package comment).
// It is meant for a child process (exec.Cmd.Env, the webhook binary): Go reads SSL_CERT_FILE
// once per process, at the first TLS verification against system roots.
func (s *Server) Env() []string {
	return []string{
		"IDENTITY_ENDPOINT=" + s.TokenURL,
		"IDENTITY_HEADER=" + s.IdentityHeader,
		"IDENTITY_SERVER_THUMBPRINT=", // non-empty would select Service Fabric
		"AZURE_TOKEN_CREDENTIALS=ManagedIdentityCredential",
		"AZURE_FEDERATED_TOKEN_FILE=", // never workload identity (Entra ID on the internet)
		"SSL_CERT_FILE=" + s.CAFile,
	}
}

// SetEnv sets Env with tb.Setenv (not for parallel tests). In-process, SSL_CERT_FILE only takes
// effect if nothing in the test binary has verified a certificate against system roots yet;
// ClientOptions avoids depending on that.
func (s *Server) SetEnv(tb testing.TB) {
	tb.Helper()
	for _, kv := range s.Env() {
		k, v, _ := strings.Cut(kv, "=")
		tb.Setenv(k, v)
	}
}

// HTTPClient trusts the server's CA and nothing else.
func (s *Server) HTTPClient() *http.Client {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(s.CAPEM)
	return &http.Client{Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		ForceAttemptHTTP2: true,
	}}
}

// ClientOptions are ARM client options for in-process use: the cloud's ResourceManager endpoint
// is URL with audience Audience, and the transport trusts the server's CA.
func (s *Server) ClientOptions() azarm.ClientOptions {
	var o azarm.ClientOptions
	o.Cloud = cloud.Configuration{
		ActiveDirectoryAuthorityHost: cloud.AzurePublic.ActiveDirectoryAuthorityHost,
		Services: map[cloud.ServiceName]cloud.ServiceConfiguration{
			cloud.ResourceManager: {Endpoint: s.URL, Audience: Audience},
		},
	}
	o.Transport = s.HTTPClient()
	return o
}

// Credential returns the token the server accepts for any scope, without HTTP, for in-process
// clients that test ARM rather than the credential chain.
func (s *Server) Credential() azcore.TokenCredential { return staticCredential{} }

type staticCredential struct{}

func (staticCredential) GetToken(_ context.Context, o policy.TokenRequestOptions) (azcore.AccessToken, error) {
	if len(o.Scopes) == 0 {
		return azcore.AccessToken{}, errors.New("arm: no scope requested")
	}
	return azcore.AccessToken{Token: tokenFor(strings.TrimSuffix(o.Scopes[0], "/.default")), ExpiresOn: time.Now().Add(time.Hour)}, nil
}

// AddIdentity creates an identity with a new random client ID in the server's tenant.
func (s *Server) AddIdentity(sub, rg, name string) (clientID, tenantID string) {
	id := Identity{SubscriptionID: sub, ResourceGroup: rg, Name: name, ClientID: NewGUID(), TenantID: s.TenantID, PrincipalID: NewGUID()}
	s.PutIdentity(id)
	return id.ClientID, id.TenantID
}

// PutIdentity creates or replaces an identity with the given IDs (fixed IDs for deterministic
// fixtures). Empty ClientID, TenantID or PrincipalID are generated.
func (s *Server) PutIdentity(id Identity) {
	if id.ClientID == "" {
		id.ClientID = NewGUID()
	}
	if id.TenantID == "" {
		id.TenantID = s.TenantID
	}
	if id.PrincipalID == "" {
		id.PrincipalID = NewGUID()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.identities[key(id.SubscriptionID, id.ResourceGroup, id.Name)] = id
}

// DeleteIdentity removes an identity: reads answer 404 ResourceNotFound again.
func (s *Server) DeleteIdentity(sub, rg, name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.identities, key(sub, rg, name))
}

// FailNext makes the next identity reads answer these HTTP statuses, in order (e.g. 429, 503).
func (s *Server) FailNext(statuses ...int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failNext = append(s.failNext, statuses...)
}

// FailAll makes every identity read answer status (an outage or sustained throttling) until
// FailAll(0). Queued FailNext statuses are consumed first.
func (s *Server) FailAll(status int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failAll = status
}

// SetLatency delays every ARM answer by d (0: none).
func (s *Server) SetLatency(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.latency = d
}

// SetRetryAfter sets the Retry-After sent with injected 429 and 503 answers (default 100ms;
// ARM sends whole seconds, the SDK honours milliseconds too).
func (s *Server) SetRetryAfter(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.retryAfter = d
}

// Calls returns the counters.
func (s *Server) Calls() Calls {
	return Calls{ARM: s.arm.Load(), Gets: s.gets.Load(), Faults: s.faults.Load(), Unauthorized: s.unauthorized.Load(), Tokens: s.tokens.Load()}
}

// GetsFor is how many reads of one identity reached the fake (case-insensitive names).
func (s *Server) GetsFor(sub, rg, name string) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.perID[key(sub, rg, name)]
}

// ResetCalls zeroes the counters.
func (s *Server) ResetCalls() {
	s.mu.Lock()
	s.perID = map[string]int64{}
	s.mu.Unlock()
	for _, c := range []*atomic.Int64{&s.arm, &s.gets, &s.faults, &s.unauthorized, &s.tokens} {
		c.Store(0)
	}
}

// ---------------------------------------------------------------------------------------------
// ARM front.

// identityPath is the path armmsi's Get sends (the fake's own pattern, with the subscription).
var identityPath = regexp.MustCompile(`^/subscriptions/([^/]+)/resourceGroups/[^/]+/providers/Microsoft\.ManagedIdentity/userAssignedIdentities/[^/]+$`)

type subscriptionKey struct{}

func (s *Server) serveARM(w http.ResponseWriter, r *http.Request) {
	s.arm.Add(1)
	if r.Header.Get("Authorization") != "Bearer "+tokenFor(Audience) {
		s.unauthorized.Add(1)
		writeARMError(w, http.StatusUnauthorized, "InvalidAuthenticationToken", "the access token is missing or was not issued for "+Audience, 0)
		return
	}
	if r.URL.Query().Get("api-version") == "" {
		writeARMError(w, http.StatusBadRequest, "MissingApiVersionParameter", "the api-version query parameter is required", 0)
		return
	}
	m := identityPath.FindStringSubmatch(r.URL.EscapedPath())
	if m == nil {
		writeARMError(w, http.StatusNotFound, "InvalidResourceType", "this test server serves managed identity reads only: "+r.URL.Path, 0)
		return
	}
	if r.Method != http.MethodGet {
		writeARMError(w, http.StatusMethodNotAllowed, "MethodNotAllowed", "this test server serves managed identity reads only", 0)
		return
	}
	s.mu.Lock()
	latency, retryAfter := s.latency, s.retryAfter
	s.mu.Unlock()
	if latency > 0 {
		t := time.NewTimer(latency)
		select {
		case <-r.Context().Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
	// The fake dispatches on the API name a client puts in the request context; its Get
	// receives this context, which carries the subscription the fake does not pass on.
	ctx := context.WithValue(r.Context(), runtime.CtxAPINameKey{}, "UserAssignedIdentitiesClient.Get")
	ctx = context.WithValue(ctx, subscriptionKey{}, m[1])
	out := r.Clone(ctx)
	out.URL.Scheme, out.URL.Host = "https", r.Host
	resp, err := s.fakeTransport.Do(out)
	if err != nil {
		var re *azcore.ResponseError
		if errors.As(err, &re) {
			writeARMError(w, re.StatusCode, re.ErrorCode, http.StatusText(re.StatusCode), retryAfter)
			return
		}
		writeARMError(w, http.StatusInternalServerError, "InternalServerError", err.Error(), 0)
		return
	}
	defer resp.Body.Close()
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	w.WriteHeader(resp.StatusCode)
	_, _ = io.Copy(w, resp.Body)
}

// fakeGet is the SDK fake's Get: the identity store plus injected faults.
func (s *Server) fakeGet(ctx context.Context, rg, name string, _ *armmsi.UserAssignedIdentitiesClientGetOptions) (resp azfake.Responder[armmsi.UserAssignedIdentitiesClientGetResponse], errResp azfake.ErrorResponder) {
	sub, _ := ctx.Value(subscriptionKey{}).(string)
	k := key(sub, rg, name)
	s.gets.Add(1)
	s.mu.Lock()
	s.perID[k]++
	status := s.failAll
	if len(s.failNext) > 0 {
		status, s.failNext = s.failNext[0], s.failNext[1:]
	}
	id, ok := s.identities[k]
	s.mu.Unlock()
	switch {
	case status != 0:
		s.faults.Add(1)
		errResp.SetResponseError(status, errorCode(status))
	case !ok:
		errResp.SetResponseError(http.StatusNotFound, "ResourceNotFound")
	default:
		resp.SetResponse(http.StatusOK, armmsi.UserAssignedIdentitiesClientGetResponse{Identity: armmsi.Identity{
			ID:       to.Ptr(id.ResourceID()),
			Name:     to.Ptr(id.Name),
			Type:     to.Ptr("Microsoft.ManagedIdentity/userAssignedIdentities"),
			Location: to.Ptr("westeurope"),
			Properties: &armmsi.UserAssignedIdentityProperties{
				ClientID: to.Ptr(id.ClientID), TenantID: to.Ptr(id.TenantID), PrincipalID: to.Ptr(id.PrincipalID),
			},
		}}, nil)
	}
	return
}

func errorCode(status int) string {
	switch status {
	case http.StatusTooManyRequests:
		return "TooManyRequests"
	case http.StatusNotFound:
		return "ResourceNotFound"
	default:
		return strings.ReplaceAll(http.StatusText(status), " ", "")
	}
}

// writeARMError writes ARM's error shape. 429 and 503 carry Retry-After like ARM's (whole
// seconds) plus retry-after-ms, which the SDK prefers, so tests need not wait seconds.
func writeARMError(w http.ResponseWriter, status int, code, msg string, retryAfter time.Duration) {
	h := w.Header()
	h.Set("Content-Type", "application/json; charset=utf-8")
	h.Set("x-ms-error-code", code)
	if status == http.StatusTooManyRequests || status == http.StatusServiceUnavailable {
		h.Set("Retry-After", strconv.FormatInt(int64((retryAfter+time.Second-1)/time.Second), 10))
		h.Set("retry-after-ms", strconv.FormatInt(retryAfter.Milliseconds(), 10))
	}
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"error": map[string]string{"code": code, "message": msg}})
}

// ---------------------------------------------------------------------------------------------
// Managed-identity token endpoint (App Service protocol).

func (s *Server) serveToken(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	switch {
	case r.Method != http.MethodGet:
		http.Error(w, `{"error":"method not allowed"}`, http.StatusMethodNotAllowed)
		return
	case r.Header.Get("X-IDENTITY-HEADER") != s.IdentityHeader:
		// App Service refuses a request without the secret; MSAL reports the body.
		http.Error(w, `{"statusCode":401,"message":"X-IDENTITY-HEADER is missing or wrong"}`, http.StatusUnauthorized)
		return
	case q.Get("api-version") != TokenAPIVersion:
		http.Error(w, `{"statusCode":400,"message":"api-version must be `+TokenAPIVersion+`"}`, http.StatusBadRequest)
		return
	case q.Get("resource") == "":
		http.Error(w, `{"statusCode":400,"message":"resource is required"}`, http.StatusBadRequest)
		return
	}
	s.tokens.Add(1)
	resource := q.Get("resource")
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]string{
		"access_token": tokenFor(resource),
		"expires_on":   strconv.FormatInt(time.Now().Add(time.Hour).Unix(), 10),
		"resource":     resource,
		"token_type":   "Bearer",
		"client_id":    q.Get("client_id"),
	})
}

// tokenFor is the bearer token for an audience. It depends on the audience only, not on the
// server: MSAL caches managed-identity tokens per process, so a test binary starting several
// servers may present one server's token to another.
func tokenFor(audience string) string {
	sum := sha256.Sum256([]byte(strings.TrimSuffix(audience, "/")))
	return "testenv-arm." + hex.EncodeToString(sum[:16])
}

// NewGUID returns a random version-4 GUID in ARM's lower-case form.
func NewGUID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}
