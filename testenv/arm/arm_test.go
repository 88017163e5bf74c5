package arm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/msi/armmsi"

	"go.klusters.dev/credential-webhook/providers/azure"
)

const (
	sub = "6c1e3b5a-93f4-4d2b-8a7e-2f1c9d0b4e57"
	rg  = "kubestash-backup"
	mi  = "kubestash-selfhost"
)

// client is an armmsi client for the server, with fast SDK retries.
func client(t *testing.T, s *Server, subscription string) *armmsi.UserAssignedIdentitiesClient {
	t.Helper()
	o := s.ClientOptions()
	o.Retry = policy.RetryOptions{MaxRetries: 2, MaxRetryDelay: 200 * time.Millisecond}
	c, err := armmsi.NewUserAssignedIdentitiesClient(subscription, s.Credential(), &o)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestGetThroughTheSDKFake(t *testing.T) {
	s := Start(t)
	clientID, tenantID := s.AddIdentity(sub, rg, mi)
	if !azure.IsGUID(clientID) || tenantID != s.TenantID || !azure.IsGUID(tenantID) {
		t.Fatalf("AddIdentity = %q, %q", clientID, tenantID)
	}
	s.PutIdentity(Demo())
	ctx := context.Background()

	got, err := client(t, s, sub).Get(ctx, rg, mi, nil)
	if err != nil {
		t.Fatal(err)
	}
	if p := got.Properties; p == nil || *p.ClientID != clientID || *p.TenantID != tenantID || *got.ID != (Identity{SubscriptionID: sub, ResourceGroup: rg, Name: mi}).ResourceID() {
		t.Fatalf("got %+v %+v", got.Identity, got.Properties)
	}
	// ARM names are case-insensitive; the demo identity has its fixed IDs.
	got, err = client(t, s, strings.ToUpper(DemoSubscriptionID)).Get(ctx, "BACKUP-RG", "KubeStash-MI", nil)
	if err != nil || *got.Properties.ClientID != DemoClientID || *got.Properties.TenantID != DemoTenantID {
		t.Fatalf("demo identity: %v %+v", err, got.Properties)
	}
	// Same names, another subscription: not found.
	_, err = client(t, s, DemoSubscriptionID).Get(ctx, rg, mi, nil)
	if re := respErr(err); re == nil || re.StatusCode != http.StatusNotFound || re.ErrorCode != "ResourceNotFound" {
		t.Fatalf("other subscription: %v", err)
	}
	s.DeleteIdentity(sub, rg, mi)
	if _, err := client(t, s, sub).Get(ctx, rg, mi, nil); respErr(err) == nil || respErr(err).StatusCode != http.StatusNotFound {
		t.Fatalf("deleted identity: %v", err)
	}
	if c := s.Calls(); c.ARM != 4 || c.Gets != 4 || c.Faults != 0 || c.Unauthorized != 0 {
		t.Fatalf("calls %+v", c)
	}
	if n := s.GetsFor(sub, strings.ToUpper(rg), mi); n != 2 {
		t.Fatalf("GetsFor = %d, want 2", n)
	}
	s.ResetCalls()
	if c := s.Calls(); c != (Calls{}) || s.GetsFor(sub, rg, mi) != 0 {
		t.Fatalf("after reset %+v", c)
	}
}

func respErr(err error) *azcore.ResponseError {
	var re *azcore.ResponseError
	if errors.As(err, &re) {
		return re
	}
	return nil
}

func TestInjectedFaults(t *testing.T) {
	s := Start(t)
	s.AddIdentity(sub, rg, mi)
	c := client(t, s, sub)
	ctx := context.Background()

	// One 429: the SDK honours Retry-After and the retry succeeds.
	s.FailNext(http.StatusTooManyRequests)
	if _, err := c.Get(ctx, rg, mi, nil); err != nil {
		t.Fatalf("after one 429: %v", err)
	}
	if got := s.Calls(); got.Gets != 2 || got.Faults != 1 {
		t.Fatalf("calls %+v", got)
	}

	// A sustained outage outlasts the retries; the queued 429 comes first.
	s.ResetCalls()
	s.FailNext(http.StatusTooManyRequests)
	s.FailAll(http.StatusServiceUnavailable)
	_, err := c.Get(ctx, rg, mi, nil)
	if re := respErr(err); re == nil || re.StatusCode != http.StatusServiceUnavailable || re.ErrorCode != "ServiceUnavailable" {
		t.Fatalf("outage: %v", err)
	}
	if got := s.Calls(); got.Gets != 3 || got.Faults != 3 {
		t.Fatalf("calls %+v (one try and two retries)", got)
	}
	s.FailAll(0)
	if _, err := c.Get(ctx, rg, mi, nil); err != nil {
		t.Fatalf("after the outage: %v", err)
	}

	// The wire format: ARM's error body and both Retry-After headers.
	s.SetRetryAfter(1500 * time.Millisecond)
	s.FailNext(http.StatusTooManyRequests)
	resp := rawGet(t, s, "/subscriptions/"+sub+"/resourceGroups/"+rg+"/providers/Microsoft.ManagedIdentity/userAssignedIdentities/"+mi+"?api-version=2023-01-31", true)
	if resp.code != http.StatusTooManyRequests || resp.header.Get("Retry-After") != "2" || resp.header.Get("retry-after-ms") != "1500" ||
		resp.header.Get("x-ms-error-code") != "TooManyRequests" || !strings.Contains(resp.body, `"code":"TooManyRequests"`) {
		t.Fatalf("429 on the wire: %+v", resp)
	}
}

func TestLatency(t *testing.T) {
	s := Start(t)
	s.AddIdentity(sub, rg, mi)
	s.SetLatency(time.Hour)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	o := s.ClientOptions()
	o.Retry = policy.RetryOptions{MaxRetries: -1}
	c, _ := armmsi.NewUserAssignedIdentitiesClient(sub, s.Credential(), &o)
	if _, err := c.Get(ctx, rg, mi, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("slow ARM: err = %v, want the caller's deadline", err)
	}
	if s.Calls().Gets != 0 {
		t.Fatal("a read timed out by the caller still reached the fake")
	}
}

type rawResp struct {
	code   int
	header http.Header
	body   string
}

func rawGet(t *testing.T, s *Server, path string, withToken bool) rawResp {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, s.URL+path, nil)
	if withToken {
		tok, _ := s.Credential().GetToken(context.Background(), policy.TokenRequestOptions{Scopes: []string{Audience + ".default"}})
		req.Header.Set("Authorization", "Bearer "+tok.Token)
	}
	resp, err := s.HTTPClient().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return rawResp{resp.StatusCode, resp.Header, string(b)}
}

func TestFrontRefusesWhatARMRefuses(t *testing.T) {
	s := Start(t)
	s.AddIdentity(sub, rg, mi)
	p := "/subscriptions/" + sub + "/resourceGroups/" + rg + "/providers/Microsoft.ManagedIdentity/userAssignedIdentities/" + mi
	tests := []struct {
		name, path string
		token      bool
		code       int
		errCode    string
	}{
		{"no token", p + "?api-version=2023-01-31", false, http.StatusUnauthorized, "InvalidAuthenticationToken"},
		{"no api-version", p, true, http.StatusBadRequest, "MissingApiVersionParameter"},
		{"list is not served", "/subscriptions/" + sub + "/providers/Microsoft.ManagedIdentity/userAssignedIdentities?api-version=2023-01-31", true, http.StatusNotFound, "InvalidResourceType"},
		{"traversal", "/subscriptions/" + sub + "/resourceGroups/" + rg + "/providers/Microsoft.ManagedIdentity/userAssignedIdentities/a/../b?api-version=1", true, http.StatusNotFound, "InvalidResourceType"},
		{"ok", p + "?api-version=2023-01-31", true, http.StatusOK, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := rawGet(t, s, tc.path, tc.token)
			if r.code != tc.code || r.header.Get("x-ms-error-code") != tc.errCode {
				t.Fatalf("got %d %q: %s", r.code, r.header.Get("x-ms-error-code"), r.body)
			}
		})
	}
	if c := s.Calls(); c.Unauthorized != 1 || c.Gets != 1 || c.ARM != int64(len(tests)) {
		t.Fatalf("calls %+v", c)
	}
	// A token for another audience is refused too.
	req, _ := http.NewRequest(http.MethodGet, s.URL+p+"?api-version=1", nil)
	req.Header.Set("Authorization", "Bearer "+tokenFor("https://storage.azure.com/"))
	resp, err := s.HTTPClient().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("foreign-audience token: %d", resp.StatusCode)
	}
}

func TestTokenEndpoint(t *testing.T) {
	s := Start(t)
	get := func(header, query string) (int, map[string]string) {
		req, _ := http.NewRequest(http.MethodGet, s.TokenURL+"?"+query, nil)
		if header != "" {
			req.Header.Set("X-IDENTITY-HEADER", header)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m map[string]string
		_ = json.NewDecoder(resp.Body).Decode(&m)
		return resp.StatusCode, m
	}
	ok := "api-version=" + TokenAPIVersion + "&resource=" + Audience
	if code, _ := get("", ok); code != http.StatusUnauthorized {
		t.Errorf("no secret: %d", code)
	}
	if code, _ := get("wrong", ok); code != http.StatusUnauthorized {
		t.Errorf("wrong secret: %d", code)
	}
	if code, _ := get(s.IdentityHeader, "api-version=2017-09-01&resource="+Audience); code != http.StatusBadRequest {
		t.Errorf("old api-version: %d", code)
	}
	if code, _ := get(s.IdentityHeader, "api-version="+TokenAPIVersion); code != http.StatusBadRequest {
		t.Errorf("no resource: %d", code)
	}
	code, tok := get(s.IdentityHeader, ok)
	if code != http.StatusOK || tok["access_token"] != tokenFor(Audience) || tok["token_type"] != "Bearer" || tok["expires_on"] == "" {
		t.Fatalf("token: %d %v", code, tok)
	}
	if s.Calls().Tokens != 1 {
		t.Fatalf("tokens issued: %d", s.Calls().Tokens)
	}
}

func TestEnvSelectsAppServiceAndTrust(t *testing.T) {
	s := Start(t)
	env := map[string]string{}
	for _, kv := range s.Env() {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	if env["IDENTITY_ENDPOINT"] != s.TokenURL || env["IDENTITY_HEADER"] == "" || env["SSL_CERT_FILE"] != s.CAFile ||
		env["AZURE_TOKEN_CREDENTIALS"] != "ManagedIdentityCredential" {
		t.Fatalf("env %v", env)
	}
	for _, k := range []string{"IDENTITY_SERVER_THUMBPRINT", "AZURE_FEDERATED_TOKEN_FILE"} {
		if v, ok := env[k]; !ok || v != "" {
			t.Errorf("%s must be present and empty, got %q (present %v)", k, v, ok)
		}
	}
	if got := azure.ChooseCredential(func(k string) string { return env[k] }); got != azure.DefaultChain {
		t.Errorf("credential-webhook would choose %s", got)
	}
	b, err := os.ReadFile(s.CAFile)
	if err != nil || string(b) != string(s.CAPEM) {
		t.Fatalf("CA file: %v", err)
	}
}

// ---------------------------------------------------------------------------------------------
// The real credential chain in a fresh process: the product's own NewCredential and Resolver,
// configured only by Env (a fresh process, so SSL_CERT_FILE is honoured like in the binary).
// Every HTTP request of the credential and the ARM client goes through a guard that refuses and
// records anything not on 127.0.0.1.

const childEnv = "TESTENV_ARM_CHILD"

type childResult struct {
	Kind     string   `json:"kind"`
	ClientID string   `json:"clientID"`
	TenantID string   `json:"tenantID"`
	Err      string   `json:"err"`
	Refused  []string `json:"refused"`
	Hosts    []string `json:"hosts"`
}

type guard struct {
	mu      sync.Mutex
	hosts   []string
	refused []string
	next    http.RoundTripper
}

func (g *guard) Do(r *http.Request) (*http.Response, error) {
	host := r.URL.Hostname()
	g.mu.Lock()
	if !slices.Contains(g.hosts, r.URL.Host) {
		g.hosts = append(g.hosts, r.URL.Host)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.Equal(net.IPv4(127, 0, 0, 1)) {
		g.refused = append(g.refused, r.URL.Host)
		g.mu.Unlock()
		return nil, fmt.Errorf("guard: refused request to %s", r.URL.Host)
	}
	g.mu.Unlock()
	return g.next.RoundTrip(r)
}

func TestChildProcess(t *testing.T) {
	if os.Getenv(childEnv) == "" {
		return // only a helper process for TestCredentialChainInAFreshProcess
	}
	// A transport with system roots: SSL_CERT_FILE decides what is trusted.
	g := &guard{next: &http.Transport{}}
	opts := azure.ClientOptions(os.Getenv("CHILD_ARM_ENDPOINT"), "")
	opts.Transport = g
	opts.Retry = policy.RetryOptions{MaxRetries: -1}
	res := childResult{}
	cred, kind, err := azure.NewCredential(opts.ClientOptions)
	res.Kind = string(kind)
	if err == nil {
		var r *azure.Resolver
		r, err = azure.NewResolver(cred, opts, azure.ResolverConfig{CallTimeout: 20 * time.Second})
		if err == nil {
			var got azure.Resolved
			got, err = r.Lookup(context.Background(), azure.Identity{SubscriptionID: sub, ResourceGroup: rg, Name: mi})
			res.ClientID, res.TenantID = got.ClientID, got.TenantID
		}
	}
	if err != nil {
		res.Err = err.Error()
	}
	g.mu.Lock()
	res.Refused, res.Hosts = g.refused, g.hosts
	g.mu.Unlock()
	b, _ := json.Marshal(res)
	fmt.Printf("CHILD-RESULT %s\n", b)
}

func runChild(t *testing.T, env []string) childResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestChildProcess$", "-test.count=1", "-test.v")
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir(), childEnv + "=1"}, env...)
	out, err := cmd.CombinedOutput()
	for _, line := range strings.Split(string(out), "\n") {
		if j, ok := strings.CutPrefix(line, "CHILD-RESULT "); ok {
			var r childResult
			if err := json.Unmarshal([]byte(j), &r); err != nil {
				t.Fatalf("child result %q: %v", j, err)
			}
			return r
		}
	}
	t.Fatalf("child printed no result (%v):\n%s", err, out)
	return childResult{}
}

func TestCredentialChainInAFreshProcess(t *testing.T) {
	s := Start(t)
	clientID, tenantID := s.AddIdentity(sub, rg, mi)

	t.Run("Env: managed identity via the token endpoint, ARM over trusted TLS", func(t *testing.T) {
		r := runChild(t, append(s.Env(), "CHILD_ARM_ENDPOINT="+s.URL))
		if r.Err != "" || r.ClientID != clientID || r.TenantID != tenantID || r.Kind != string(azure.DefaultChain) {
			t.Fatalf("child: %+v", r)
		}
		if len(r.Refused) != 0 {
			t.Fatalf("the chain tried to leave 127.0.0.1: %v", r.Refused)
		}
		if c := s.Calls(); c.Tokens != 1 || c.Gets != 1 || c.Unauthorized != 0 {
			t.Fatalf("calls %+v", c)
		}
	})

	// Without SSL_CERT_FILE the ARM certificate is not trusted: the variable is what makes the
	// binary accept the server, not some leftover trust.
	t.Run("without SSL_CERT_FILE the certificate is refused", func(t *testing.T) {
		env := slices.DeleteFunc(s.Env(), func(kv string) bool { return strings.HasPrefix(kv, "SSL_CERT_FILE=") })
		env = append(env, "SSL_CERT_FILE=/nonexistent", "SSL_CERT_DIR=/nonexistent")
		r := runChild(t, append(env, "CHILD_ARM_ENDPOINT="+s.URL))
		if !strings.Contains(r.Err, "certificate") {
			t.Fatalf("child: %+v, want a certificate error", r)
		}
	})

	// The guard is what proves the first case: with no IDENTITY_* variables the same chain falls
	// through to IMDS, and the guard sees (and refuses) exactly that.
	t.Run("guard catches an IMDS fall-through", func(t *testing.T) {
		r := runChild(t, []string{"AZURE_TOKEN_CREDENTIALS=ManagedIdentityCredential", "CHILD_ARM_ENDPOINT=" + s.URL})
		if !slices.Contains(r.Refused, "169.254.169.254") || r.Err == "" {
			t.Fatalf("child: %+v, want a refused IMDS request", r)
		}
	})
}
