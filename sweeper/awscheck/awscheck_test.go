package awscheck

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/iam"
	iamtypes "github.com/aws/aws-sdk-go-v2/service/iam/types"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/testenv/iamproxy"
	"go.klusters.dev/credential-webhook/testenv/moto"
)

const testIssuer = "https://oidc.eks.us-east-1.amazonaws.com/id/0A1B2C3D4E5F60718293A4B5C6D7E8F9"

// signer mints ServiceAccount tokens the way kube-apiserver does (RS256 JWTs), signed with the
// key the iamproxy trusts, so the proxy's STS behaves like real STS towards them.
type signer struct {
	key    *rsa.PrivateKey
	issuer string
	calls  int
	// audiences and ttls are what each call asked for.
	audiences []string
	ttls      []time.Duration
}

func (s *signer) Token(_ context.Context, ns, name, audience string, ttl time.Duration) (string, error) {
	s.calls++
	s.audiences = append(s.audiences, audience)
	s.ttls = append(s.ttls, ttl)
	now := time.Now()
	enc := func(v any) string {
		b, _ := json.Marshal(v)
		return base64.RawURLEncoding.EncodeToString(b)
	}
	signed := enc(map[string]string{"alg": "RS256", "typ": "JWT", "kid": "test"}) + "." + enc(map[string]any{
		"iss": s.issuer, "sub": "system:serviceaccount:" + ns + ":" + name, "aud": []string{audience},
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(ttl).Unix(),
	})
	digest := sha256.Sum256([]byte(signed))
	sig, err := rsa.SignPKCS1v15(rand.Reader, s.key, crypto.SHA256, digest[:])
	if err != nil {
		return "", err
	}
	return signed + "." + base64.RawURLEncoding.EncodeToString(sig), nil
}

type env struct {
	proxy   *iamproxy.Proxy
	motoURL string
	iam     *iam.Client
	sts     *sts.Client
	tokens  *signer
	seedARN string
	// providerARN is the OIDC provider the seed trusts.
	providerARN string
}

// newEnv starts moto behind the iamproxy (which checks web-identity tokens against trust
// policies like STS does) and builds the SDK clients through the standard configuration chain,
// pointed at the proxy by AWS_ENDPOINT_URL.
func newEnv(t *testing.T) *env {
	t.Helper()
	srv := moto.Start(t)
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	proxy, err := iamproxy.New(srv.Endpoint, iamproxy.Options{PublicKeys: []crypto.PublicKey{&key.PublicKey}})
	if err != nil {
		t.Fatal(err)
	}
	proxy.Start(t)
	for k, v := range map[string]string{
		"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1",
		"AWS_EC2_METADATA_DISABLED": "true", "AWS_ENDPOINT_URL": proxy.URL,
		"AWS_CONFIG_FILE": filepath.Join(t.TempDir(), "none"), "AWS_SHARED_CREDENTIALS_FILE": filepath.Join(t.TempDir(), "none"),
	} {
		t.Setenv(k, v)
	}
	ctx := t.Context()
	cfg, err := config.LoadDefaultConfig(ctx)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{proxy: proxy, motoURL: srv.Endpoint, iam: iam.NewFromConfig(cfg), tokens: &signer{key: key, issuer: testIssuer},
		// One attempt: a throttled call must surface as an error of the check, not be retried.
		sts: sts.NewFromConfig(cfg, func(o *sts.Options) { o.RetryMaxAttempts = 1 })}
	if e.seedARN, err = moto.CreateSeedRole(ctx, cfg, "kubestash-selfhost", "/", testIssuer); err != nil {
		t.Fatal(err)
	}
	account := strings.Split(e.seedARN, ":")[4]
	e.providerARN = "arn:aws:iam::" + account + ":oidc-provider/" + moto.IssuerHost(testIssuer)
	return e
}

// derivedRole creates "<seed>-<i>" trusting subjects, tagged as ours unless untagged.
func (e *env) derivedRole(t *testing.T, i string, tagged bool, subjects ...string) string {
	t.Helper()
	in := &iam.CreateRoleInput{
		RoleName:                 aws.String("kubestash-selfhost-" + i),
		AssumeRolePolicyDocument: aws.String(moto.TrustPolicy(e.providerARN, testIssuer, subjects...)),
	}
	if tagged {
		in.Tags = []iamtypes.Tag{{Key: aws.String(annotations.SeedTag), Value: aws.String(e.seedARN)}}
	}
	out, err := e.iam.CreateRole(t.Context(), in)
	if err != nil {
		t.Fatal(err)
	}
	return aws.ToString(out.Role.Arn)
}

func sessionSA(name string, ann map[string]string) *corev1.ServiceAccount {
	return &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: name, Annotations: ann}}
}

func TestCheckAgainstSTS(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	const (
		sa1 = "sample-backup-daemon-demo-session-1778072138"
		sa2 = "retention-policy-sample-backup-daemon-demo-session-1778072402"
		sa3 = "app-restore-restore"
	)
	role0 := e.derivedRole(t, "0", true, "system:serviceaccount:demo:"+sa1, "system:serviceaccount:demo:"+sa3)
	role1 := e.derivedRole(t, "1", false, "system:serviceaccount:demo:"+sa2)
	ann := func(role string, kv ...string) map[string]string {
		m := map[string]string{annotations.SeedRole: e.seedARN, annotations.AWSRoleARN: role}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	c := New(IAMRoleLister{IAM: e.iam}, e.tokens, e.sts, 3)

	for _, tc := range []struct {
		name      string
		sa        *corev1.ServiceAccount
		ready     bool
		reason    string // substring
		stsCalls  int
		tokenUsed bool
	}{
		{"listed derived role works", sessionSA(sa1, ann(role0)), true, "3 times in a row", 3, true},
		{"not listed", sessionSA(sa2, ann(role0)), false, "does not list system:serviceaccount:demo:" + sa2, 0, false},
		{"role without our seed tag", sessionSA(sa2, ann(role1)), false, "does not list", 0, false},
		{"seed itself is not derived", sessionSA(sa1, ann(e.seedARN)), false, "is not a derived role", 0, false},
		{"derived role that does not exist", sessionSA(sa1, ann(strings.TrimSuffix(role0, "0")+"7")), false, "does not list", 0, false},
		{"no role yet", sessionSA(sa1, map[string]string{annotations.SeedRole: e.seedARN}), false, "no eks.amazonaws.com/role-arn", 0, false},
		// The audience annotation is the user's: a token for it is never minted, and nothing
		// is asked of IAM or STS.
		{"user-chosen audience not minted", sessionSA(sa3, ann(role0, annotations.AWSAudience, "vault")), false,
			`asks for token audience "vault" (eks.amazonaws.com/audience); the readiness check mints tokens only for "sts.amazonaws.com"`, 0, false},
		{"API server audience not minted", sessionSA(sa3, ann(role0, annotations.AWSAudience, "https://kubernetes.default.svc")), false, "cannot prove this identity", 0, false},
		// Naming the STS audience explicitly is what IRSA does anyway.
		{"STS audience named explicitly", sessionSA(sa3, ann(role0, annotations.AWSAudience, DefaultAudience)), true, "3 times in a row", 3, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e.proxy.ResetCalls()
			tokens := e.tokens.calls
			ready, reason, err := c.Check(ctx, tc.sa)
			if err != nil {
				t.Fatalf("Check: %v", err)
			}
			if ready != tc.ready || !strings.Contains(reason, tc.reason) {
				t.Errorf("Check = %v %q; want %v, reason containing %q", ready, reason, tc.ready, tc.reason)
			}
			if got := e.proxy.Calls()["sts:AssumeRoleWithWebIdentity"]; got != tc.stsCalls {
				t.Errorf("STS calls = %d, want %d", got, tc.stsCalls)
			}
			if used := e.tokens.calls > tokens; used != tc.tokenUsed {
				t.Errorf("token minted = %v, want %v", used, tc.tokenUsed)
			}
			// Whatever the ServiceAccount says, a token is only ever minted for STS, short-lived.
			for i := tokens; i < e.tokens.calls; i++ {
				if e.tokens.audiences[i] != DefaultAudience || e.tokens.ttls[i] != DefaultTokenTTL {
					t.Errorf("token %d minted for audience %q, lifetime %v; want %q, %v", i, e.tokens.audiences[i], e.tokens.ttls[i], DefaultAudience, DefaultTokenTTL)
				}
			}
		})
	}

	t.Run("token from another issuer key", func(t *testing.T) {
		other, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			t.Fatal(err)
		}
		bad := New(IAMRoleLister{IAM: e.iam}, &signer{key: other, issuer: testIssuer}, e.sts, 2)
		ready, reason, err := bad.Check(ctx, sessionSA(sa1, ann(role0)))
		if err != nil || ready || !strings.Contains(reason, "AccessDenied") {
			t.Errorf("Check = %v %q %v; want not ready (AccessDenied)", ready, reason, err)
		}
	})

	// A trust policy written moments ago has not reached STS: not ready until it has.
	t.Run("propagation delay", func(t *testing.T) {
		e.proxy.SetPropagationDelay(time.Hour)
		defer e.proxy.SetPropagationDelay(0)
		_, err := e.iam.UpdateAssumeRolePolicy(ctx, &iam.UpdateAssumeRolePolicyInput{
			RoleName:       aws.String("kubestash-selfhost-0"),
			PolicyDocument: aws.String(moto.TrustPolicy(e.providerARN, testIssuer, "system:serviceaccount:demo:"+sa1, "system:serviceaccount:demo:"+sa2)),
		})
		if err != nil {
			t.Fatal(err)
		}
		ready, reason, err := c.Check(ctx, sessionSA(sa2, ann(role0)))
		if err != nil || ready || !strings.Contains(reason, "AccessDenied") {
			t.Fatalf("during propagation: Check = %v %q %v; want not ready", ready, reason, err)
		}
		e.proxy.SetPropagationDelay(0)
		if ready, reason, err := c.Check(ctx, sessionSA(sa2, ann(role0))); err != nil || !ready {
			t.Fatalf("after propagation: Check = %v %q %v; want ready", ready, reason, err)
		}
	})

	// Throttling is a failure of the check (retried by the sweeper), not a verdict on the identity.
	t.Run("throttled STS is an error", func(t *testing.T) {
		e.proxy.SetFaults(iamproxy.Faults{ThrottleRate: 1, Actions: []string{"sts:AssumeRoleWithWebIdentity"}})
		defer e.proxy.SetFaults(iamproxy.Faults{})
		ready, _, err := c.Check(ctx, sessionSA(sa1, ann(role0)))
		if err == nil || ready || !strings.Contains(err.Error(), "Throttling") {
			t.Errorf("Check = %v, %v; want an error naming Throttling", ready, err)
		}
	})

	// Every one of the N calls must succeed: a success followed by a refusal is not ready.
	t.Run("one success is not enough", func(t *testing.T) {
		e.proxy.SetFaults(iamproxy.Faults{ServerErrorRate: 0.5, Seed: 3, Actions: []string{"sts:AssumeRoleWithWebIdentity"}})
		defer e.proxy.SetFaults(iamproxy.Faults{})
		e.proxy.ResetCalls()
		ready, _, err := New(IAMRoleLister{IAM: e.iam}, e.tokens, e.sts, 8).Check(ctx, sessionSA(sa1, ann(role0)))
		faults := e.proxy.Faults().ServerErrors["sts:AssumeRoleWithWebIdentity"]
		calls := e.proxy.Calls()["sts:AssumeRoleWithWebIdentity"]
		if faults != 1 || calls < 2 {
			t.Fatalf("seed 3 gave %d calls with %d injected faults; the case needs successes before one fault: pick another seed", calls, faults)
		}
		if ready || err == nil {
			t.Errorf("Check = %v, %v after %d injected 5xx; want an error", ready, err, faults)
		}
	})
}

func TestDerivedFrom(t *testing.T) {
	const seed = "arn:aws:iam::748392615204:role/kubestash-selfhost"
	const pathSeed = "arn:aws:iam::748392615204:role/backup/team-a/kubestash"
	for _, tc := range []struct {
		seed, role string
		want       bool
	}{
		{seed, seed + "-0", true},
		{seed, seed + "-99", true},
		{seed, seed + "-01", false},
		{seed, seed + "-", false},
		{seed, seed + "-1a", false},
		{seed, seed + "--1", false},
		{seed, seed, false},
		{seed, "arn:aws:iam::111111111111:role/kubestash-selfhost-0", false},
		{seed, "arn:aws:iam::748392615204:role/other/kubestash-selfhost-0", false},
		{seed, "arn:aws-cn:iam::748392615204:role/kubestash-selfhost-0", false},
		{pathSeed, pathSeed + "-4", true},
		{pathSeed, "arn:aws:iam::748392615204:role/kubestash-4", false},
		{"", seed + "-0", false},
		{"not-an-arn", "not-an-arn-0", false},
		{"arn:aws:s3:::bucket/kubestash", "arn:aws:s3:::bucket/kubestash-0", false},
	} {
		if got := DerivedFrom(tc.seed, tc.role); got != tc.want {
			t.Errorf("DerivedFrom(%q, %q) = %v, want %v", tc.seed, tc.role, got, tc.want)
		}
	}
}

func TestTrustedSubjects(t *testing.T) {
	for _, tc := range []struct {
		name, doc string
		want      []string
		err       bool
	}{
		{"list under StringLike", moto.TrustPolicy("arn:aws:iam::1:oidc-provider/x", "https://x", "a", "b"), []string{"a", "b"}, false},
		{"single statement object, string value", `{"Statement":{"Effect":"Allow","Condition":{"StringEquals":{"x:sub":"a"}}}}`, []string{"a"}, false},
		{"deny statements and aud keys ignored", `{"Statement":[{"Effect":"Deny","Condition":{"StringLike":{"x:sub":"d"}}},{"Effect":"Allow","Condition":{"StringEquals":{"x:aud":"sts.amazonaws.com"}}}]}`, nil, false},
		{"no statements", `{"Version":"2012-10-17"}`, nil, false},
		{"malformed", `{"Statement":[`, nil, true},
		{"bad value type", `{"Statement":[{"Effect":"Allow","Condition":{"StringLike":{"x:sub":7}}}]}`, nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := TrustedSubjects(tc.doc)
			if (err != nil) != tc.err {
				t.Fatalf("err = %v, want error %v", err, tc.err)
			}
			if strings.Join(got, ",") != strings.Join(tc.want, ",") {
				t.Errorf("TrustedSubjects = %v, want %v", got, tc.want)
			}
		})
	}
}

type listsAll struct{}

func (listsAll) Lists(context.Context, string, string) (bool, error) { return true, nil }

type acceptsAll struct{ calls int }

func (a *acceptsAll) AssumeRoleWithWebIdentity(context.Context, *sts.AssumeRoleWithWebIdentityInput, ...func(*sts.Options)) (*sts.AssumeRoleWithWebIdentityOutput, error) {
	a.calls++
	return &sts.AssumeRoleWithWebIdentityOutput{}, nil
}

type audienceRecorder struct{ audiences []string }

func (r *audienceRecorder) Token(_ context.Context, _, _, audience string, _ time.Duration) (string, error) {
	r.audiences = append(r.audiences, audience)
	return "token", nil
}

// The configured audience is the only one minted; a zero Checker mints the STS audience.
func TestCheckMintsOnlyTheConfiguredAudience(t *testing.T) {
	const seed, role = "arn:aws-cn:iam::1:role/s", "arn:aws-cn:iam::1:role/s-0"
	sa := func(audience string) *corev1.ServiceAccount {
		ann := map[string]string{annotations.SeedRole: seed, annotations.AWSRoleARN: role}
		if audience != "" {
			ann[annotations.AWSAudience] = audience
		}
		return sessionSA("s", ann)
	}
	for _, tc := range []struct {
		configured, annotated string
		minted                string // "" when nothing may be minted
	}{
		{"", "", DefaultAudience},
		{"", DefaultAudience, DefaultAudience},
		{"", "sts.amazonaws.com.cn", ""},
		{"sts.amazonaws.com.cn", "", "sts.amazonaws.com.cn"},
		{"sts.amazonaws.com.cn", "sts.amazonaws.com.cn", "sts.amazonaws.com.cn"},
		{"sts.amazonaws.com.cn", DefaultAudience, ""},
	} {
		tokens, api := &audienceRecorder{}, &acceptsAll{}
		c := &Checker{Roles: listsAll{}, Tokens: tokens, STS: api, ChecksInARow: 1, Audience: tc.configured}
		ready, reason, err := c.Check(t.Context(), sa(tc.annotated))
		if err != nil {
			t.Fatalf("%+v: %v", tc, err)
		}
		if tc.minted == "" {
			if ready || len(tokens.audiences) != 0 || api.calls != 0 || !strings.Contains(reason, "cannot prove this identity") {
				t.Errorf("%+v: ready %v, reason %q, minted %v, STS calls %d; want not ready, nothing minted or called", tc, ready, reason, tokens.audiences, api.calls)
			}
			continue
		}
		if !ready || len(tokens.audiences) != 1 || tokens.audiences[0] != tc.minted {
			t.Errorf("%+v: ready %v (%s), minted %v; want ready, one token for %q", tc, ready, reason, tokens.audiences, tc.minted)
		}
	}
}
