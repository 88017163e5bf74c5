package stscreds

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/iam"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	miniocreds "github.com/minio/minio-go/v7/pkg/credentials"

	"go.klusters.dev/credential-webhook/testenv/iamproxy"
	"go.klusters.dev/credential-webhook/testenv/moto"
)

const (
	testIssuer = "https://oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLED539D4633E53DE1B71EXAMPLE"
	testSub    = "system:serviceaccount:demo:sample-backup-daemon-demo-session-1778072138"
)

// stsEnv is moto behind the iamproxy, which checks web identity tokens against key and the
// role's trust policy, and can delay trust propagation and inject throttling.
type stsEnv struct {
	proxy *iamproxy.Proxy
	iam   *iam.Client
	key   *rsa.PrivateKey
	dir   string
}

func newSTSEnv(t *testing.T) *stsEnv {
	t.Helper()
	m := moto.Start(t)
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	p, err := iamproxy.New(m.Endpoint, iamproxy.Options{PublicKeys: []crypto.PublicKey{&key.PublicKey}})
	if err != nil {
		t.Fatal(err)
	}
	p.Start(t)
	// The production client (newClient) is built from the environment: point it at the proxy,
	// and keep every other source of configuration out.
	dir := t.TempDir()
	t.Setenv("AWS_ENDPOINT_URL", p.URL)
	t.Setenv("AWS_REGION", moto.Region)
	t.Setenv("AWS_ACCESS_KEY_ID", "test")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "test")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(dir, "no-config"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(dir, "no-credentials"))
	t.Setenv("AWS_PROFILE", "")
	return &stsEnv{proxy: p, iam: iam.NewFromConfig(moto.ConfigFor(p.URL)), key: key, dir: dir}
}

// createRole creates a role trusting testSub through the proxy, which starts its propagation
// delay.
func (e *stsEnv) createRole(t *testing.T, name string) string {
	t.Helper()
	host := strings.TrimPrefix(testIssuer, "https://")
	policy := fmt.Sprintf(`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Federated":"arn:aws:iam::%s:oidc-provider/%s"},"Action":"sts:AssumeRoleWithWebIdentity","Condition":{"StringEquals":{"%s:aud":"sts.amazonaws.com"},"StringLike":{"%s:sub":["%s"]}}}]}`,
		moto.AccountID, host, host, host, testSub)
	out, err := e.iam.CreateRole(context.Background(), &iam.CreateRoleInput{
		RoleName: aws.String(name), AssumeRolePolicyDocument: aws.String(policy),
	})
	if err != nil {
		t.Fatalf("create role: %v", err)
	}
	return aws.ToString(out.Role.Arn)
}

// mintToken signs a ServiceAccount token like the kube-apiserver's (RS256).
func mintToken(t *testing.T, key *rsa.PrivateKey) string {
	t.Helper()
	now := time.Now()
	seg := func(v any) string {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return base64.RawURLEncoding.EncodeToString(b)
	}
	signed := seg(map[string]any{"alg": "RS256", "kid": "test"}) + "." + seg(map[string]any{
		"iss": testIssuer, "sub": testSub, "aud": []string{"sts.amazonaws.com"},
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(time.Hour).Unix(),
	})
	sum := sha256.Sum256([]byte(signed))
	sig, err := rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA256, sum[:])
	if err != nil {
		t.Fatal(err)
	}
	return signed + "." + base64.RawURLEncoding.EncodeToString(sig)
}

func writeToken(t *testing.T, path, token string) {
	t.Helper()
	// Like the kubelet's atomic writer: readers never see half a token.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// recordingClient is the real STS client; it remembers what STS returned, so the test can
// compare the file against it.
type recordingClient struct {
	STSClient
	mu   sync.Mutex
	outs []*sts.AssumeRoleWithWebIdentityOutput
}

func (r *recordingClient) AssumeRoleWithWebIdentity(ctx context.Context, in *sts.AssumeRoleWithWebIdentityInput, opts ...func(*sts.Options)) (*sts.AssumeRoleWithWebIdentityOutput, error) {
	out, err := r.STSClient.AssumeRoleWithWebIdentity(ctx, in, opts...)
	if err == nil {
		r.mu.Lock()
		r.outs = append(r.outs, out)
		r.mu.Unlock()
	}
	return out, err
}

func (r *recordingClient) last() *sts.AssumeRoleWithWebIdentityOutput {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.outs) == 0 {
		return nil
	}
	return r.outs[len(r.outs)-1]
}

// syncBuffer collects log output written from Run's goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// waitFor polls cond until it holds; the bound only keeps a broken test from hanging.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestRunSurvivesPropagationAndThrottling: right after the role is created STS refuses the
// token (propagation delay) and throttles half the calls; Run keeps trying, writes the file, and
// minio-go's own shared-credentials provider (what restic uses) reads exactly what STS returned.
// Those credentials then really work against STS.
func TestRunSurvivesPropagationAndThrottling(t *testing.T) {
	e := newSTSEnv(t)
	e.proxy.SetPropagationDelay(1500 * time.Millisecond)
	e.proxy.SetFaults(iamproxy.Faults{ThrottleRate: 0.5, Actions: []string{"sts:AssumeRoleWithWebIdentity"}, Seed: 7})
	roleARN := e.createRole(t, "kubestash-selfhost-0")
	tokenFile := filepath.Join(e.dir, "token")
	token := mintToken(t, e.key)
	writeToken(t, tokenFile, token)
	credFile := filepath.Join(e.dir, "credentials")

	client, err := newClient(context.Background(), slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	rec := &recordingClient{STSClient: client}
	logs := &syncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Config{
			RoleARN: roleARN, TokenFile: tokenFile, CredentialsFile: credFile,
			SessionName:    "sample-backup-daemon-demo-session-1778072138-x7k2p",
			InitialBackoff: 50 * time.Millisecond, MaxBackoff: 400 * time.Millisecond, MaxWait: time.Minute,
			Client: rec, Log: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		})
	}()
	waitFor(t, "the credentials file", func() bool { return Check(credFile) == nil })
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run after cancel: %v", err)
	}

	propagation, throttled := 0, e.proxy.Faults().Throttled["sts:AssumeRoleWithWebIdentity"]
	for _, r := range e.proxy.Rejections() {
		if strings.Contains(r.Reason, "propagation delay") {
			propagation++
		}
	}
	if propagation == 0 || throttled == 0 {
		t.Fatalf("the test did not exercise what it claims: %d propagation denials, %d throttled calls", propagation, throttled)
	}

	fi, err := os.Stat(credFile)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("credentials file mode %v, want 0600", fi.Mode().Perm())
	}
	out := rec.last()
	if out == nil {
		t.Fatal("STS never answered")
	}
	v, err := (&miniocreds.FileAWSCredentials{Filename: credFile, Profile: "default"}).Retrieve()
	if err != nil {
		t.Fatalf("minio-go FileAWSCredentials: %v", err)
	}
	want := out.Credentials
	if v.AccessKeyID != *want.AccessKeyId || v.SecretAccessKey != *want.SecretAccessKey || v.SessionToken != *want.SessionToken {
		t.Errorf("minio-go read %+v, STS returned %s / %s", v, *want.AccessKeyId, *want.SessionToken)
	}

	// The credentials in the file are the assumed role's, with our session name.
	cfg := moto.ConfigFor(e.proxy.URL)
	cfg.Credentials = credentials.NewStaticCredentialsProvider(v.AccessKeyID, v.SecretAccessKey, v.SessionToken)
	id, err := sts.NewFromConfig(cfg).GetCallerIdentity(context.Background(), &sts.GetCallerIdentityInput{})
	if err != nil {
		t.Fatal(err)
	}
	if arn := aws.ToString(id.Arn); !strings.Contains(arn, "assumed-role/kubestash-selfhost-0/sample-backup-daemon-demo-session-1778072138-x7k2p") {
		t.Errorf("caller identity %s is not the assumed role session", arn)
	}

	log := logs.String()
	t.Logf("sidecar log:\n%s", log)
	if !strings.Contains(log, "retrying") || !strings.Contains(log, "wrote AWS credentials") {
		t.Errorf("log lacks the retries or the write:\n%s", log)
	}
	for _, secret := range []string{*want.SecretAccessKey, *want.SessionToken, token, strings.Split(token, ".")[2]} {
		if strings.Contains(log, secret) {
			t.Errorf("log contains a secret value")
		}
	}
}

// TestRunRefreshRereadsToken: the loop refreshes (the schedule is shortened to milliseconds) and
// reads the token afresh each time: after the token is replaced by one STS rejects, refreshes
// fail and are retried, and once the kubelet (here the test) rotates in a good token, new
// credentials land in the file.
func TestRunRefreshRereadsToken(t *testing.T) {
	e := newSTSEnv(t)
	roleARN := e.createRole(t, "kubestash-selfhost-1")
	tokenFile := filepath.Join(e.dir, "token")
	writeToken(t, tokenFile, mintToken(t, e.key))
	credFile := filepath.Join(e.dir, "credentials")
	rec := &recordingClient{}
	client, err := newClient(context.Background(), slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	rec.STSClient = client

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Config{
			RoleARN: roleARN, TokenFile: tokenFile, CredentialsFile: credFile, SessionName: "refresh-test",
			InitialBackoff: 20 * time.Millisecond, MaxBackoff: 100 * time.Millisecond,
			Client: rec, Log: slog.New(slog.DiscardHandler),
			refreshIn: func(time.Time, time.Time) time.Duration { return 30 * time.Millisecond },
		})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run after cancel: %v", err)
		}
	}()
	readKey := func() string {
		v, err := (&miniocreds.FileAWSCredentials{Filename: credFile, Profile: "default"}).Retrieve()
		if err != nil {
			return ""
		}
		return v.AccessKeyID
	}
	waitFor(t, "the first credentials", func() bool { return readKey() != "" })

	// A token signed by a key the provider does not know.
	other, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	writeToken(t, tokenFile, mintToken(t, other))
	badReads := func() int {
		n := 0
		for _, r := range e.proxy.Rejections() {
			if strings.Contains(r.Reason, "does not verify") {
				n++
			}
		}
		return n
	}
	waitFor(t, "a refresh with the rotated-in bad token", func() bool { return badReads() >= 2 })
	stale := readKey()

	writeToken(t, tokenFile, mintToken(t, e.key))
	waitFor(t, "new credentials after the good token returned", func() bool {
		k := readKey()
		return k != "" && k != stale
	})
	if got, last := readKey(), rec.last(); last == nil || got == "" {
		t.Fatal("no credentials")
	}
}

// TestRunGivesUp: a role that never trusts the token makes Run fail after MaxWait instead of
// waiting forever, so the sidecar exits and the Pod shows why.
func TestRunGivesUp(t *testing.T) {
	e := newSTSEnv(t)
	tokenFile := filepath.Join(e.dir, "token")
	writeToken(t, tokenFile, mintToken(t, e.key))
	err := Run(context.Background(), Config{
		RoleARN:   "arn:aws:iam::" + moto.AccountID + ":role/does-not-exist",
		TokenFile: tokenFile, CredentialsFile: filepath.Join(e.dir, "credentials"),
		InitialBackoff: 20 * time.Millisecond, MaxBackoff: 100 * time.Millisecond, MaxWait: 500 * time.Millisecond,
		Log: slog.New(slog.DiscardHandler),
	})
	if err == nil || !strings.Contains(err.Error(), "giving up") || !strings.Contains(err.Error(), "AccessDenied") {
		t.Fatalf("Run = %v, want giving up on AccessDenied", err)
	}
	if _, statErr := os.Stat(filepath.Join(e.dir, "credentials")); statErr == nil {
		t.Error("a credentials file was written without credentials")
	}
	// How many attempts fit into MaxWait depends on the machine; that STS was asked at all
	// (rather than Run failing on its own) is what matters here. Retries are shown by
	// TestRunSurvivesPropagationAndThrottling.
	if n := e.proxy.Calls()["sts:AssumeRoleWithWebIdentity"]; n < 1 {
		t.Errorf("%d STS calls", n)
	}
}
