package stscreds

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"
)

func apiErr(code string, status int) error {
	return &smithy.OperationError{ServiceID: "STS", OperationName: "AssumeRoleWithWebIdentity", Err: &awshttp.ResponseError{
		ResponseError: &smithyhttp.ResponseError{
			Response: &smithyhttp.Response{Response: &http.Response{StatusCode: status}},
			Err:      &smithy.GenericAPIError{Code: code, Message: "m"},
		},
	}}
}

func TestRetryable(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"access denied while trust propagates", apiErr("AccessDenied", 403), true},
		{"invalid token, maybe rotated meanwhile", apiErr("InvalidIdentityToken", 400), true},
		{"expired token", apiErr("ExpiredTokenException", 400), true},
		{"throttling", apiErr("Throttling", 400), true},
		{"IdP unreachable", apiErr("IDPCommunicationError", 400), true},
		{"internal failure", apiErr("InternalFailure", 500), true},
		{"unknown code, 503", apiErr("Weird", 503), true},
		{"unknown code, 429", apiErr("Weird", 429), true},
		{"validation error", apiErr("ValidationError", 400), false},
		{"malformed policy", apiErr("MalformedPolicyDocument", 400), false},
		{"rejected claim", apiErr("IDPRejectedClaim", 403), false},
		{"region disabled", apiErr("RegionDisabledException", 403), false},
		{"API error without HTTP status", &smithy.GenericAPIError{Code: "Weird"}, false},
		{"connection refused", fmt.Errorf("send request: %w", errors.New("dial tcp 127.0.0.1:1: connect: connection refused")), true},
		{"attempt timeout", fmt.Errorf("op: %w", context.DeadlineExceeded), true},
		{"cancelled", fmt.Errorf("op: %w", context.Canceled), false},
		{"token file missing", fmt.Errorf("read web identity token: %w", os.ErrNotExist), true},
	}
	for _, tt := range tests {
		if got := Retryable(tt.err); got != tt.want {
			t.Errorf("%s: Retryable = %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestBackoff(t *testing.T) {
	const base, max = 100 * time.Millisecond, 2 * time.Second
	tests := []struct {
		attempt int
		r       float64
		want    time.Duration
	}{
		{0, 0, 50 * time.Millisecond},
		{0, 0.999999, 99999950 * time.Nanosecond},
		{1, 0, 100 * time.Millisecond},
		{3, 0.5, 600 * time.Millisecond}, // 800ms: 400 + 200
		{4, 0, 800 * time.Millisecond},
		{5, 0, time.Second}, // capped at 2s: half fixed
		{5, 1, 2 * time.Second},
		{62, 0.5, 1500 * time.Millisecond}, // no overflow for large attempts
	}
	for _, tt := range tests {
		if got := Backoff(tt.attempt, base, max, tt.r); got != tt.want {
			t.Errorf("Backoff(%d, r=%v) = %v, want %v", tt.attempt, tt.r, got, tt.want)
		}
	}
}

func TestNextRefresh(t *testing.T) {
	t0 := time.Date(2026, 5, 6, 13, 0, 0, 0, time.UTC)
	tests := []struct {
		life time.Duration
		want time.Duration
	}{
		{time.Hour, 30 * time.Minute},         // half the lifetime is earlier than 15 min before
		{12 * time.Hour, 6 * time.Hour},       // same for the longest sessions
		{20 * time.Minute, 5 * time.Minute},   // 15 min before expiry is earlier
		{15 * time.Minute, 225 * time.Second}, // STS's shortest: a quarter, not at once
		{30 * time.Second, 7500 * time.Millisecond},
		{0, 5 * time.Second},          // bogus: no busy loop
		{-time.Hour, 5 * time.Second}, // expiry in the past: no busy loop
		{10 * time.Second, 5 * time.Second},
	}
	for _, tt := range tests {
		if got := NextRefresh(t0, t0.Add(tt.life)); got != tt.want {
			t.Errorf("NextRefresh(lifetime %v) = %v, want %v", tt.life, got, tt.want)
		}
	}
}

func TestSessionName(t *testing.T) {
	long := strings.Repeat("a", 70) + "-x7k2p"
	tests := []struct{ in, want string }{
		{"sample-backup-daemon-demo-session-1778072138-x7k2p", "sample-backup-daemon-demo-session-1778072138-x7k2p"},
		{"a b/c", "a-b-c"},
		{"user@example.com,x=y+z", "user@example.com,x=y+z"},
		{long, long[len(long)-64:]},
	}
	for _, tt := range tests {
		if got := SessionName(tt.in); got != tt.want {
			t.Errorf("SessionName(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
	for _, in := range []string{"", "x"} {
		got := SessionName(in)
		if !strings.HasPrefix(got, "credential-webhook-") || len(got) > 64 || got == SessionName(in) {
			t.Errorf("SessionName(%q) = %q, want a fresh random name", in, got)
		}
	}
}

func TestConfigFromEnv(t *testing.T) {
	full := map[string]string{
		EnvRoleARN: "arn:aws:iam::1:role/r", EnvTokenFile: "/t", EnvCredentialsFile: "/c", EnvPodName: "pod-1",
	}
	tests := []struct {
		name        string
		env         map[string]string
		wantSession string
		wantErr     string
	}{
		{"complete", full, "pod-1", ""},
		{"AWS_ROLE_SESSION_NAME wins", merge(full, map[string]string{EnvSessionName: "explicit"}), "explicit", ""},
		{"no pod name", merge(full, map[string]string{EnvPodName: ""}), "", ""},
		{"missing", map[string]string{EnvRoleARN: "arn"}, "", "AWS_WEB_IDENTITY_TOKEN_FILE, AWS_SHARED_CREDENTIALS_FILE"},
	}
	for _, tt := range tests {
		cfg, err := ConfigFromEnv(func(k string) string { return tt.env[k] })
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("%s: err = %v, want one naming %s", tt.name, err, tt.wantErr)
			}
			continue
		}
		if err != nil || cfg.SessionName != tt.wantSession || cfg.RoleARN != full[EnvRoleARN] ||
			cfg.TokenFile != "/t" || cfg.CredentialsFile != "/c" {
			t.Errorf("%s: ConfigFromEnv = %+v, %v", tt.name, cfg, err)
		}
	}
}

func merge(a, b map[string]string) map[string]string {
	m := map[string]string{}
	for k, v := range a {
		m[k] = v
	}
	for k, v := range b {
		m[k] = v
	}
	return m
}

var testCreds = Credentials{
	AccessKeyID: "ASIAEXAMPLEKEY", SecretAccessKey: "s3cr3t/KEY+value=", SessionToken: "FwoGZXIvYXdzEXAMPLE//token==",
	Expiration: time.Date(2026, 5, 6, 14, 0, 0, 0, time.UTC),
}

func TestWriteFileAndCheck(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "credentials")
	if err := Check(path); err == nil {
		t.Fatal("Check passed on a missing file")
	}
	if err := os.WriteFile(path, []byte("[default]\naws_access_key_id = A\naws_secret_access_key = \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := Check(path); err == nil || !strings.Contains(err.Error(), "aws_secret_access_key") {
		t.Fatalf("Check = %v on a file without a secret key, want an error naming it", err)
	}
	if err := WriteFile(path, testCreds); err != nil {
		t.Fatal(err)
	}
	if err := Check(path); err != nil {
		t.Fatalf("Check on a written file: %v", err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", fi.Mode().Perm())
	}
	next := testCreds
	next.AccessKeyID = "ASIANEXT"
	if err := WriteFile(path, next); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(path)
	if !bytes.Contains(got, []byte("aws_access_key_id = ASIANEXT\n")) || bytes.Contains(got, []byte("ASIAEXAMPLEKEY")) {
		t.Errorf("file not replaced:\n%s", got)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("temporary files left behind: %v", entries)
	}
	if err := WriteFile(filepath.Join(dir, "missing-dir", "credentials"), testCreds); err == nil {
		t.Error("WriteFile into a missing directory succeeded")
	}
}

func TestCredentialsNeverFormatSecrets(t *testing.T) {
	var buf bytes.Buffer
	slog.New(slog.NewTextHandler(&buf, nil)).Info("x", "creds", testCreds)
	out := buf.String() + fmt.Sprintf("%v %+v %s %#v", testCreds, testCreds, testCreds, testCreds)
	for _, secret := range []string{testCreds.SecretAccessKey, testCreds.SessionToken} {
		if strings.Contains(out, secret) {
			t.Errorf("secret %q in formatted output: %s", secret, out)
		}
	}
	if !strings.Contains(out, "2026-05-06T14:00:00Z") {
		t.Errorf("expiration missing from formatted output: %s", out)
	}
}

func TestCommand(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "credentials")
	if err := WriteFile(good, testCreds); err != nil {
		t.Fatal(err)
	}
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		wantErr string // "" means success
	}{
		{"check, file complete", []string{"--check"}, map[string]string{EnvCredentialsFile: good}, ""},
		{"check, file missing", []string{"--check"}, map[string]string{EnvCredentialsFile: filepath.Join(dir, "nope")}, "no such file"},
		{"check, env missing", []string{"--check"}, nil, EnvCredentialsFile},
		{"unknown argument", []string{"--frobnicate"}, nil, "usage"},
		{"run without env", nil, map[string]string{EnvCredentialsFile: good}, "AWS_ROLE_ARN"},
	}
	for _, tt := range tests {
		err := Command(context.Background(), tt.args, env(tt.env), slog.New(slog.DiscardHandler))
		if (tt.wantErr == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tt.wantErr)) {
			t.Errorf("%s: Command = %v, want %q", tt.name, err, tt.wantErr)
		}
	}
}
