package iamproxy

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/service/iam"
	"github.com/aws/aws-sdk-go-v2/service/iam/types"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	"github.com/aws/smithy-go"

	"go.klusters.dev/credential-webhook/testenv/moto"
)

const (
	testIssuer = "https://oidc.test.local/id/CLUSTER1"
	operatorSA = moto.SeedSubject
)

// env is one moto server shared by the subtests of a test, with a fresh
// proxy per subtest; role names are unique per subtest.
type env struct {
	moto   *moto.Server
	proxy  *Proxy
	iam    *iam.Client // through the proxy
	sts    *sts.Client // through the proxy
	direct *iam.Client // straight to moto, to see what really changed
}

func newEnv(t *testing.T, srv *moto.Server, opts Options) *env {
	t.Helper()
	p, err := New(srv.Endpoint, opts)
	if err != nil {
		t.Fatal(err)
	}
	p.Start(t)
	cfg := moto.ConfigFor(p.URL)
	// No backoff between retries: tests count attempts, not seconds.
	cfg.Retryer = func() aws.Retryer {
		return retry.NewStandard(func(o *retry.StandardOptions) {
			o.MaxAttempts = 3
			o.Backoff = noBackoff{}
			o.RateLimiter = noRateLimit{}
		})
	}
	return &env{
		moto: srv, proxy: p,
		iam:    iam.NewFromConfig(cfg),
		sts:    sts.NewFromConfig(cfg),
		direct: iam.NewFromConfig(moto.ConfigFor(srv.Endpoint)),
	}
}

type noBackoff struct{}

func (noBackoff) BackoffDelay(int, error) (time.Duration, error) { return 0, nil }

type noRateLimit struct{}

func (noRateLimit) GetToken(context.Context, uint) (func() error, error) {
	return func() error { return nil }, nil
}
func (noRateLimit) AddTokens(uint) error { return nil }

func trustDoc(subjects ...string) string {
	return moto.TrustPolicy("arn:aws:iam::"+moto.AccountID+":oidc-provider/"+moto.IssuerHost(testIssuer), testIssuer, subjects...)
}

func (e *env) trustPolicy(t *testing.T, role string) string {
	t.Helper()
	out, err := e.direct.GetRole(t.Context(), &iam.GetRoleInput{RoleName: aws.String(role)})
	if err != nil {
		t.Fatalf("GetRole %s from moto: %v", role, err)
	}
	doc, err := url.QueryUnescape(aws.ToString(out.Role.AssumeRolePolicyDocument))
	if err != nil {
		t.Fatal(err)
	}
	return doc
}

func httpStatus(err error) int {
	var re *awshttp.ResponseError
	if errors.As(err, &re) {
		return re.HTTPStatusCode()
	}
	return 0
}

func TestQuota(t *testing.T) {
	srv := moto.Start(t)
	ctx := t.Context()
	e := newEnv(t, srv, Options{Quota: 600})

	// The seed's trust policy (about 300 characters) is under the quota.
	if _, err := moto.CreateSeedRole(ctx, moto.ConfigFor(e.proxy.URL), "seed", "/", testIssuer); err != nil {
		t.Fatalf("seed under quota: %v", err)
	}

	subjects := func(n int) []string {
		var s []string
		for i := range n {
			s = append(s, fmt.Sprintf("system:serviceaccount:backup:session-%010d", i))
		}
		return s
	}
	fits := trustDoc(subjects(4)...)
	tooBig := trustDoc(subjects(10)...)
	if policySize(fits) > 600 || policySize(tooBig) <= 600 {
		t.Fatalf("fixture sizes %d/%d do not straddle 600", policySize(fits), policySize(tooBig))
	}

	t.Run("update over quota is LimitExceeded and changes nothing", func(t *testing.T) {
		before := e.trustPolicy(t, "seed")
		e.proxy.ResetCalls()
		_, err := e.iam.UpdateAssumeRolePolicy(ctx, &iam.UpdateAssumeRolePolicyInput{
			RoleName: aws.String("seed"), PolicyDocument: aws.String(tooBig),
		})
		var lee *types.LimitExceededException
		if !errors.As(err, &lee) {
			t.Fatalf("err = %v (%T), want *types.LimitExceededException", err, err)
		}
		if got := lee.ErrorMessage(); got != "Cannot exceed quota for ACLSizePerRole: 600" {
			t.Errorf("message = %q", got)
		}
		if got := httpStatus(err); got != http.StatusConflict {
			t.Errorf("HTTP status = %d, want 409", got)
		}
		if after := e.trustPolicy(t, "seed"); after != before {
			t.Errorf("moto's trust policy changed despite LimitExceeded:\n%s\n->\n%s", before, after)
		}
		// LimitExceeded is not retryable: exactly one attempt.
		if got := e.proxy.Calls()["iam:UpdateAssumeRolePolicy"]; got != 1 {
			t.Errorf("UpdateAssumeRolePolicy attempts = %d, want 1", got)
		}
		rej := e.proxy.Rejections()
		if len(rej) != 1 || rej[0].Code != "LimitExceeded" || rej[0].Role != "seed" {
			t.Errorf("Rejections = %+v", rej)
		}
	})

	t.Run("whitespace is not counted", func(t *testing.T) {
		// Indented, the fitting document is well over the quota in bytes.
		var pretty bytes.Buffer
		if err := json.Indent(&pretty, []byte(fits), "", "    "); err != nil {
			t.Fatal(err)
		}
		if pretty.Len() <= 600 {
			t.Fatalf("indented fixture only %d bytes", pretty.Len())
		}
		if _, err := e.iam.UpdateAssumeRolePolicy(ctx, &iam.UpdateAssumeRolePolicyInput{
			RoleName: aws.String("seed"), PolicyDocument: aws.String(pretty.String()),
		}); err != nil {
			t.Fatalf("update under quota: %v", err)
		}
		if got := e.trustPolicy(t, "seed"); !strings.Contains(got, "session-0000000003") {
			t.Errorf("moto did not receive the update: %s", got)
		}
	})

	t.Run("CreateRole over quota creates nothing", func(t *testing.T) {
		_, err := e.iam.CreateRole(ctx, &iam.CreateRoleInput{
			RoleName: aws.String("seed-1"), AssumeRolePolicyDocument: aws.String(tooBig),
		})
		var lee *types.LimitExceededException
		if !errors.As(err, &lee) {
			t.Fatalf("err = %v, want LimitExceededException", err)
		}
		_, err = e.direct.GetRole(ctx, &iam.GetRoleInput{RoleName: aws.String("seed-1")})
		var nse *types.NoSuchEntityException
		if !errors.As(err, &nse) {
			t.Fatalf("role exists in moto after LimitExceeded (err = %v)", err)
		}
	})

	t.Run("quota off passes everything", func(t *testing.T) {
		e.proxy.SetQuota(0)
		if _, err := e.iam.CreateRole(ctx, &iam.CreateRoleInput{
			RoleName: aws.String("seed-1"), AssumeRolePolicyDocument: aws.String(tooBig),
		}); err != nil {
			t.Fatalf("CreateRole with quota off: %v", err)
		}
		// The body reached moto byte for byte.
		if got := e.trustPolicy(t, "seed-1"); got != tooBig {
			t.Errorf("moto stored\n%s\nwant\n%s", got, tooBig)
		}
	})

	t.Run("GetAccountSummary reports the quota", func(t *testing.T) {
		summary := func() map[string]int32 {
			out, err := e.iam.GetAccountSummary(ctx, &iam.GetAccountSummaryInput{})
			if err != nil {
				t.Fatal(err)
			}
			return out.SummaryMap
		}
		if got := summary()["AssumeRolePolicySizeQuota"]; got != 2048 {
			t.Errorf("quota off: AssumeRolePolicySizeQuota = %d, want moto's 2048", got)
		}
		e.proxy.SetQuota(4096)
		m := summary()
		if got := m["AssumeRolePolicySizeQuota"]; got != 4096 {
			t.Errorf("AssumeRolePolicySizeQuota = %d, want 4096", got)
		}
		if m["RolesQuota"] != 1000 || m["Roles"] != 2 {
			t.Errorf("other summary entries damaged: RolesQuota=%d Roles=%d", m["RolesQuota"], m["Roles"])
		}
	})
}

func TestWebIdentity(t *testing.T) {
	srv := moto.Start(t)
	ctx := t.Context()
	key := rsaKey(t)
	// The proxy reads the key like kube-apiserver's --service-account-key-file.
	der, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(t.TempDir(), "sa.pub")
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, srv, Options{TokenKeyFile: keyFile})
	seedARN, err := moto.CreateSeedRole(ctx, moto.ConfigFor(e.proxy.URL), "seed", "/kubestash/", testIssuer)
	if err != nil {
		t.Fatal(err)
	}
	claims := func(mod func(map[string]any)) map[string]any {
		c := map[string]any{
			"iss": testIssuer, "sub": operatorSA, "aud": []string{"sts.amazonaws.com"},
			"iat": time.Now().Unix(), "nbf": time.Now().Unix(), "exp": time.Now().Add(time.Hour).Unix(),
		}
		if mod != nil {
			mod(c)
		}
		return c
	}
	assume := func(role, token string) (*sts.AssumeRoleWithWebIdentityOutput, error) {
		return e.sts.AssumeRoleWithWebIdentity(ctx, &sts.AssumeRoleWithWebIdentityInput{
			RoleArn: aws.String(role), RoleSessionName: aws.String("test-session"), WebIdentityToken: aws.String(token),
		})
	}
	wantDenied := func(t *testing.T, err error, reason string) {
		t.Helper()
		var ae smithy.APIError
		if !errors.As(err, &ae) || ae.ErrorCode() != "AccessDenied" || ae.ErrorMessage() != "Not authorized to perform sts:AssumeRoleWithWebIdentity" {
			t.Fatalf("err = %v, want AccessDenied", err)
		}
		if got := httpStatus(err); got != http.StatusForbidden {
			t.Errorf("HTTP status = %d, want 403", got)
		}
		rej := e.proxy.Rejections()
		if len(rej) == 0 || !strings.Contains(rej[len(rej)-1].Reason, reason) {
			t.Fatalf("last rejection %+v, want reason containing %q", rej, reason)
		}
	}

	t.Run("valid token gets credentials", func(t *testing.T) {
		out, err := assume(seedARN, signJWT(t, key, claims(nil)))
		if err != nil {
			t.Fatal(err)
		}
		if c := out.Credentials; c == nil || aws.ToString(c.AccessKeyId) == "" || aws.ToString(c.SessionToken) == "" {
			t.Fatalf("no credentials from moto: %+v", out)
		}
	})

	denied := []struct {
		name   string
		role   string
		token  func() string
		reason string
	}{
		{"bad signature", seedARN, func() string { return signJWT(t, rsaKey(t), claims(nil)) }, "does not verify"},
		{"expired", seedARN, func() string {
			return signJWT(t, key, claims(func(c map[string]any) { c["exp"] = time.Now().Add(-time.Minute).Unix() }))
		}, "expired"},
		{"sub not in trust policy", seedARN, func() string {
			return signJWT(t, key, claims(func(c map[string]any) { c["sub"] = "system:serviceaccount:kubestash:intruder" }))
		}, "does not match"},
		{"wrong audience", seedARN, func() string {
			return signJWT(t, key, claims(func(c map[string]any) { c["aud"] = []string{"vault"} }))
		}, ":aud"},
		{"other issuer", seedARN, func() string {
			return signJWT(t, key, claims(func(c map[string]any) { c["iss"] = "https://other.example" }))
		}, "oidc-provider/other.example"},
		{"unknown role", "arn:aws:iam::123456789012:role/nope", func() string { return signJWT(t, key, claims(nil)) }, "does not exist"},
	}
	for _, tc := range denied {
		t.Run(tc.name, func(t *testing.T) {
			_, err := assume(tc.role, tc.token())
			wantDenied(t, err, tc.reason)
		})
	}

	t.Run("propagation delay after trust policy change", func(t *testing.T) {
		const sa = "system:serviceaccount:backup:session-1778072138"
		token := signJWT(t, key, claims(func(c map[string]any) { c["sub"] = sa }))
		e.proxy.SetPropagationDelay(time.Hour)
		if _, err := e.iam.UpdateAssumeRolePolicy(ctx, &iam.UpdateAssumeRolePolicyInput{
			RoleName: aws.String("seed"), PolicyDocument: aws.String(trustDoc(operatorSA, sa)),
		}); err != nil {
			t.Fatal(err)
		}
		_, err := assume(seedARN, token)
		wantDenied(t, err, "propagation delay")
		e.proxy.SetPropagationDelay(0)
		if _, err := assume(seedARN, token); err != nil {
			t.Fatalf("after the delay: %v", err)
		}
	})

	t.Run("keys replaced at runtime", func(t *testing.T) {
		other := rsaKey(t)
		e.proxy.SetTokenKeys(other.Public())
		_, err := assume(seedARN, signJWT(t, key, claims(nil)))
		wantDenied(t, err, "does not verify")
		if _, err := assume(seedARN, signJWT(t, other, claims(nil))); err != nil {
			t.Fatalf("token from the new key: %v", err)
		}
	})

	t.Run("counts", func(t *testing.T) {
		e.proxy.ResetCalls()
		_, _ = assume(seedARN, "not-a-jwt")
		_, _ = e.sts.GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{})
		_, _ = e.iam.GetRole(ctx, &iam.GetRoleInput{RoleName: aws.String("seed")})
		want := map[string]int{"sts:AssumeRoleWithWebIdentity": 1, "sts:GetCallerIdentity": 1, "iam:GetRole": 1}
		if got := e.proxy.Calls(); !maps.Equal(got, want) {
			t.Errorf("Calls = %v, want %v (the proxy's own GetRole to moto must not count)", got, want)
		}
		e.proxy.ResetCalls()
		if got := e.proxy.Calls(); len(got) != 0 || len(e.proxy.Rejections()) != 0 {
			t.Errorf("after ResetCalls: %v %v", got, e.proxy.Rejections())
		}
	})
}

func TestFaults(t *testing.T) {
	srv := moto.Start(t)
	ctx := t.Context()
	e := newEnv(t, srv, Options{})
	if _, err := e.iam.CreateRole(ctx, &iam.CreateRoleInput{
		RoleName: aws.String("r"), AssumeRolePolicyDocument: aws.String(`{"Version":"2012-10-17","Statement":[]}`),
	}); err != nil {
		t.Fatal(err)
	}

	t.Run("throttling is a retryable throttle error", func(t *testing.T) {
		e.proxy.ResetCalls()
		e.proxy.SetFaults(Faults{ThrottleRate: 1, Actions: []string{"iam:GetRole"}})
		defer e.proxy.SetFaults(Faults{})
		_, err := e.iam.GetRole(ctx, &iam.GetRoleInput{RoleName: aws.String("r")})
		var ae smithy.APIError
		if !errors.As(err, &ae) || ae.ErrorCode() != "Throttling" || ae.ErrorMessage() != "Rate exceeded" {
			t.Fatalf("err = %v, want Throttling", err)
		}
		if httpStatus(err) != http.StatusBadRequest {
			t.Errorf("HTTP status = %d, want 400", httpStatus(err))
		}
		if retry.IsErrorThrottles(retry.DefaultThrottles).IsErrorThrottle(err) != aws.TrueTernary {
			t.Error("SDK does not classify the injected error as throttling")
		}
		// The SDK retried: 3 attempts, each counted and each throttled.
		if got := e.proxy.Calls()["iam:GetRole"]; got != 3 {
			t.Errorf("GetRole calls = %d, want 3 attempts", got)
		}
		if got := e.proxy.Faults().Throttled["iam:GetRole"]; got != 3 {
			t.Errorf("throttled = %d, want 3", got)
		}
		// Actions limits the faults.
		if _, err := e.iam.ListRoles(ctx, &iam.ListRolesInput{}); err != nil {
			t.Errorf("ListRoles is not in Actions but failed: %v", err)
		}
	})

	t.Run("server errors are retried then surface as 500", func(t *testing.T) {
		e.proxy.ResetCalls()
		e.proxy.SetFaults(Faults{ServerErrorRate: 1, Actions: []string{"sts:*"}})
		defer e.proxy.SetFaults(Faults{})
		_, err := e.sts.GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{})
		var ae smithy.APIError
		if !errors.As(err, &ae) || ae.ErrorCode() != "InternalFailure" || httpStatus(err) != http.StatusInternalServerError {
			t.Fatalf("err = %v, want 500 InternalFailure", err)
		}
		if f := e.proxy.Faults(); f.ServerErrors["sts:GetCallerIdentity"] != 3 || len(f.Throttled) != 0 {
			t.Errorf("Faults = %+v, want 3 server errors", f)
		}
	})

	t.Run("a throttle within the retry budget is invisible to the caller", func(t *testing.T) {
		e.proxy.ResetCalls()
		e.proxy.SetFaults(Faults{ThrottleRate: 0.5, Seed: 1})
		defer e.proxy.SetFaults(Faults{})
		var ok, failed int
		for range 20 {
			if _, err := e.iam.GetRole(ctx, &iam.GetRoleInput{RoleName: aws.String("r")}); err == nil {
				ok++
			} else {
				failed++
			}
		}
		calls, throttled := e.proxy.Calls()["iam:GetRole"], e.proxy.Faults().Throttled["iam:GetRole"]
		if throttled == 0 || ok == 0 {
			t.Fatalf("ok=%d throttled=%d, want both", ok, throttled)
		}
		// Every attempt is a call; successes are exactly the unthrottled ones.
		if calls-throttled != ok {
			t.Errorf("calls %d - throttled %d != successes %d", calls, throttled, ok)
		}
		if calls != 20+throttled-failed {
			t.Errorf("calls = %d, want 20 + %d retries", calls, throttled-failed)
		}
	})

	t.Run("slow rate delays only a fraction", func(t *testing.T) {
		e.proxy.ResetCalls()
		e.proxy.SetFaults(Faults{Latency: time.Millisecond, SlowRate: 0.25, Actions: []string{"GetRole"}, Seed: 3})
		defer e.proxy.SetFaults(Faults{})
		const n = 80
		for range n {
			if _, err := e.iam.GetRole(ctx, &iam.GetRoleInput{RoleName: aws.String("r")}); err != nil {
				t.Fatal(err)
			}
		}
		// 80 draws at 25 %: 20 expected; [8, 32] is beyond four standard deviations.
		if got := e.proxy.Faults().Delayed["iam:GetRole"]; got < 8 || got > 32 {
			t.Errorf("Delayed = %d of %d at slow rate 0.25", got, n)
		}
	})

	t.Run("a late answer still lands the write", func(t *testing.T) {
		e.proxy.SetFaults(Faults{Latency: 3 * time.Second, LateAnswer: true, Actions: []string{"UpdateAssumeRolePolicy"}})
		defer e.proxy.SetFaults(Faults{})
		doc := `{"Version":"2012-10-17","Statement":[{"Effect":"Deny","Principal":{"AWS":"*"},"Action":"sts:AssumeRole"}]}`
		short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		_, err := e.iam.UpdateAssumeRolePolicy(short, &iam.UpdateAssumeRolePolicyInput{RoleName: aws.String("r"), PolicyDocument: aws.String(doc)})
		if err == nil {
			t.Fatal("UpdateAssumeRolePolicy answered within 300 ms despite a 3 s late answer")
		}
		// The caller gave up, but moto (read directly) applied the write.
		role, err := iam.NewFromConfig(moto.ConfigFor(srv.Endpoint)).GetRole(ctx, &iam.GetRoleInput{RoleName: aws.String("r")})
		if err != nil {
			t.Fatal(err)
		}
		if policy, _ := url.QueryUnescape(aws.ToString(role.Role.AssumeRolePolicyDocument)); !strings.Contains(policy, `"Deny"`) {
			t.Errorf("moto has %s; the late-answered write did not land", policy)
		}
	})

	t.Run("latency is counted", func(t *testing.T) {
		e.proxy.ResetCalls()
		e.proxy.SetFaults(Faults{Latency: time.Millisecond, Actions: []string{"GetRole"}})
		defer e.proxy.SetFaults(Faults{})
		if _, err := e.iam.GetRole(ctx, &iam.GetRoleInput{RoleName: aws.String("r")}); err != nil {
			t.Fatal(err)
		}
		if got := e.proxy.Faults().Delayed["iam:GetRole"]; got != 1 {
			t.Errorf("Delayed = %d, want 1", got)
		}
	})
}

func TestS3PassesThrough(t *testing.T) {
	srv := moto.Start(t)
	e := newEnv(t, srv, Options{Quota: 10, Faults: Faults{ThrottleRate: 1}})
	obj := make([]byte, 3<<20)
	if _, err := rand.Read(obj); err != nil {
		t.Fatal(err)
	}
	do := func(base, method, path, ctype string, body []byte) []byte {
		t.Helper()
		req, err := http.NewRequestWithContext(t.Context(), method, base+path, bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		if ctype != "" {
			req.Header.Set("Content-Type", ctype)
		}
		// An S3 SigV4 scope, as restic/minio-go send it.
		req.Header.Set("Authorization", "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s %s: HTTP %d: %s", method, path, resp.StatusCode, b)
		}
		return b
	}
	do(e.proxy.URL, http.MethodPut, "/bucket", "", nil)
	do(e.proxy.URL, http.MethodPut, "/bucket/repo/data", "application/octet-stream", obj)
	if got := do(srv.Endpoint, http.MethodGet, "/bucket/repo/data", "", nil); !bytes.Equal(got, obj) {
		t.Fatalf("object written through the proxy differs in moto (%d bytes, want %d)", len(got), len(obj))
	}
	if got := do(e.proxy.URL, http.MethodGet, "/bucket/repo/data", "", nil); !bytes.Equal(got, obj) {
		t.Fatalf("object read through the proxy differs (%d bytes, want %d)", len(got), len(obj))
	}
	// A form-typed PUT (moto itself drops such bodies) is stored exactly as
	// when sent to moto directly: the proxy neither parses nor alters it.
	do(srv.Endpoint, http.MethodPut, "/bucket/direct", "application/x-www-form-urlencoded", obj)
	do(e.proxy.URL, http.MethodPut, "/bucket/proxied", "application/x-www-form-urlencoded", obj)
	direct := do(srv.Endpoint, http.MethodGet, "/bucket/direct", "", nil)
	proxied := do(srv.Endpoint, http.MethodGet, "/bucket/proxied", "", nil)
	if !bytes.Equal(direct, proxied) {
		t.Errorf("form-typed PUT: proxied object %d bytes, direct %d", len(proxied), len(direct))
	}
	if calls := e.proxy.Calls(); len(calls) != 0 {
		t.Errorf("S3 requests counted as actions: %v", calls)
	}
	if got := e.proxy.S3Calls(); got["s3:PUT"] != 3 || got["s3:GET"] != 1 {
		t.Errorf("S3 calls through the proxy = %v, want s3:PUT 3, s3:GET 1", got)
	}
}
