package moto_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/iam"
	"github.com/aws/aws-sdk-go-v2/service/iam/types"

	"go.klusters.dev/credential-webhook/testenv/moto"
)

func TestStartProcessStopKillsProcessGroup(t *testing.T) {
	ctx := t.Context()
	s, err := moto.StartProcess(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Stop() })
	if !strings.HasPrefix(s.Endpoint, "http://127.0.0.1:") {
		t.Fatalf("Endpoint = %q, want http://127.0.0.1:PORT", s.Endpoint)
	}
	resp, err := http.Get(s.Endpoint + "/moto-api/")
	if err != nil {
		t.Fatalf("moto not answering after StartProcess: %v", err)
	}
	resp.Body.Close()

	pgid := s.Pid()
	if err := s.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if err := s.Stop(); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
	// Signal 0 to the group probes for any surviving member.
	if err := syscall.Kill(-pgid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Fatalf("process group %d still has members after Stop (kill -0: %v)", pgid, err)
	}
	client := &http.Client{Timeout: 2 * time.Second}
	if resp, err := client.Get(s.Endpoint + "/moto-api/"); err == nil {
		resp.Body.Close()
		t.Fatalf("%s still answers after Stop", s.Endpoint)
	}
}

func TestStartProcessNotInstalled(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	_, err := moto.StartProcess(t.Context(), nil)
	if !errors.Is(err, moto.ErrNotInstalled) {
		t.Fatalf("err = %v, want ErrNotInstalled", err)
	}
	if !strings.Contains(err.Error(), "pip install 'moto[server]==5.2.1'") {
		t.Fatalf("error %q lacks the install hint", err)
	}
}

func TestStartProcessReportsEarlyExit(t *testing.T) {
	// A moto_server that dies at once must be reported, not waited on for a minute.
	dir := t.TempDir()
	fake := filepath.Join(dir, moto.Binary)
	if err := os.WriteFile(fake, []byte("#!/bin/sh\necho boom >&2\nexit 3\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir)
	var logs strings.Builder
	_, err := moto.StartProcess(t.Context(), &logs)
	if err == nil || !strings.Contains(err.Error(), "exited before answering") {
		t.Fatalf("err = %v, want an early-exit error", err)
	}
	if !strings.Contains(logs.String(), "boom") {
		t.Fatalf("moto output not passed to logw: %q", logs.String())
	}
}

func TestEnvPointsSDKAtMoto(t *testing.T) {
	s := moto.Start(t)
	want := map[string]string{
		"AWS_ENDPOINT_URL":          s.Endpoint,
		"AWS_ACCESS_KEY_ID":         "test",
		"AWS_SECRET_ACCESS_KEY":     "test",
		"AWS_REGION":                "us-east-1",
		"AWS_DEFAULT_REGION":        "us-east-1",
		"AWS_EC2_METADATA_DISABLED": "true",
	}
	got := map[string]string{}
	for _, kv := range s.Env() {
		k, v, _ := strings.Cut(kv, "=")
		got[k] = v
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("Env %s = %q, want %q", k, got[k], v)
		}
	}

	// The SDK's default chain, fed only by SetEnv, must reach moto.
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(t.TempDir(), "none"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(t.TempDir(), "none"))
	t.Setenv("AWS_PROFILE", "")
	s.SetEnv(t)
	cfg, err := config.LoadDefaultConfig(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := iam.NewFromConfig(cfg).CreateRole(t.Context(), &iam.CreateRoleInput{
		RoleName: aws.String("via-env"), AssumeRolePolicyDocument: aws.String(`{"Version":"2012-10-17","Statement":[]}`),
	}); err != nil {
		t.Fatalf("CreateRole through env config: %v", err)
	}
	// And AWSConfig reaches the same server.
	cfg2, err := s.AWSConfig(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := iam.NewFromConfig(cfg2).GetRole(t.Context(), &iam.GetRoleInput{RoleName: aws.String("via-env")}); err != nil {
		t.Fatalf("GetRole through AWSConfig: %v", err)
	}

	if err := s.Reset(t.Context()); err != nil {
		t.Fatal(err)
	}
	_, err = iam.NewFromConfig(cfg2).GetRole(t.Context(), &iam.GetRoleInput{RoleName: aws.String("via-env")})
	var nse *types.NoSuchEntityException
	if !errors.As(err, &nse) {
		t.Fatalf("GetRole after Reset: err = %v, want NoSuchEntity", err)
	}
}

func TestCreateSeedRole(t *testing.T) {
	s := moto.Start(t)
	ctx := t.Context()
	cfg, err := s.AWSConfig(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const issuer = "https://oidc.eks.us-east-1.amazonaws.com/id/0123456789ABCDEF"
	const host = "oidc.eks.us-east-1.amazonaws.com/id/0123456789ABCDEF"
	arn, err := moto.CreateSeedRole(ctx, cfg, "kubestash-selfhost", "/kubestash/", issuer)
	if err != nil {
		t.Fatal(err)
	}
	if want := "arn:aws:iam::123456789012:role/kubestash/kubestash-selfhost"; arn != want {
		t.Fatalf("arn = %q, want %q", arn, want)
	}
	// A second seed on the same issuer reuses the OIDC provider.
	if _, err := moto.CreateSeedRole(ctx, cfg, "second-seed", "", host); err != nil {
		t.Fatalf("second seed on the same issuer: %v", err)
	}

	client := iam.NewFromConfig(cfg)
	role, err := client.GetRole(ctx, &iam.GetRoleInput{RoleName: aws.String("kubestash-selfhost")})
	if err != nil {
		t.Fatal(err)
	}
	if got := aws.ToInt32(role.Role.MaxSessionDuration); got != 7200 {
		t.Errorf("MaxSessionDuration = %d, want 7200", got)
	}
	if got := aws.ToString(role.Role.Path); got != "/kubestash/" {
		t.Errorf("Path = %q", got)
	}
	// moto 5.2.1 stores the boundary given to CreateRole and returns it from GetRole, and the
	// boundary is a real managed policy.
	wantBoundary := "arn:aws:iam::123456789012:policy/kubestash/kubestash-selfhost-boundary"
	if got := moto.SeedBoundaryARN(arn); got != wantBoundary {
		t.Errorf("SeedBoundaryARN = %q, want %q", got, wantBoundary)
	}
	if role.Role.PermissionsBoundary == nil || aws.ToString(role.Role.PermissionsBoundary.PermissionsBoundaryArn) != wantBoundary ||
		role.Role.PermissionsBoundary.PermissionsBoundaryType != types.PermissionsBoundaryAttachmentTypePolicy {
		t.Errorf("PermissionsBoundary = %+v, want %s", role.Role.PermissionsBoundary, wantBoundary)
	}
	if _, err := client.GetPolicy(ctx, &iam.GetPolicyInput{PolicyArn: aws.String(wantBoundary)}); err != nil {
		t.Errorf("boundary policy: %v", err)
	}
	second, err := client.GetRole(ctx, &iam.GetRoleInput{RoleName: aws.String("second-seed")})
	if err != nil {
		t.Fatal(err)
	}
	if second.Role.PermissionsBoundary == nil || aws.ToString(second.Role.PermissionsBoundary.PermissionsBoundaryArn) != "arn:aws:iam::123456789012:policy/second-seed-boundary" {
		t.Errorf("second seed's PermissionsBoundary = %+v", second.Role.PermissionsBoundary)
	}
	if !slices.ContainsFunc(role.Role.Tags, func(tag types.Tag) bool {
		return aws.ToString(tag.Key) == moto.SeedTagKey && aws.ToString(tag.Value) == moto.SeedTagValue
	}) {
		t.Errorf("tags %v lack %s=%s", role.Role.Tags, moto.SeedTagKey, moto.SeedTagValue)
	}

	raw, err := url.QueryUnescape(aws.ToString(role.Role.AssumeRolePolicyDocument))
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Statement []struct {
			Effect    string
			Action    string
			Principal struct{ Federated string }
			Condition struct {
				StringEquals map[string]string
				StringLike   map[string][]string
			}
		}
	}
	if err := json.Unmarshal([]byte(raw), &doc); err != nil {
		t.Fatalf("trust policy %s: %v", raw, err)
	}
	if len(doc.Statement) != 1 {
		t.Fatalf("statements = %d, want 1: %s", len(doc.Statement), raw)
	}
	st := doc.Statement[0]
	if st.Effect != "Allow" || st.Action != "sts:AssumeRoleWithWebIdentity" {
		t.Errorf("statement effect/action = %s/%s", st.Effect, st.Action)
	}
	if want := "arn:aws:iam::123456789012:oidc-provider/" + host; st.Principal.Federated != want {
		t.Errorf("Federated = %q, want %q", st.Principal.Federated, want)
	}
	if got := st.Condition.StringEquals[host+":aud"]; got != "sts.amazonaws.com" {
		t.Errorf("aud condition = %q", got)
	}
	if got := st.Condition.StringLike[host+":sub"]; !slices.Equal(got, []string{"system:serviceaccount:kubestash:kubestash-operator"}) {
		t.Errorf("sub condition = %q", got)
	}

	attached, err := client.ListAttachedRolePolicies(ctx, &iam.ListAttachedRolePoliciesInput{RoleName: aws.String("kubestash-selfhost")})
	if err != nil {
		t.Fatal(err)
	}
	if len(attached.AttachedPolicies) != 1 || !strings.HasPrefix(aws.ToString(attached.AttachedPolicies[0].PolicyArn), "arn:aws:iam::123456789012:policy/kubestash/") {
		t.Errorf("attached policies = %+v, want one under /kubestash/", attached.AttachedPolicies)
	}
	inline, err := client.ListRolePolicies(ctx, &iam.ListRolePoliciesInput{RoleName: aws.String("kubestash-selfhost")})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(inline.PolicyNames, []string{"kubestash-selfhost-inline"}) {
		t.Errorf("inline policies = %v", inline.PolicyNames)
	}
	providers, err := client.ListOpenIDConnectProviders(ctx, &iam.ListOpenIDConnectProvidersInput{})
	if err != nil {
		t.Fatal(err)
	}
	if len(providers.OpenIDConnectProviderList) != 1 {
		t.Errorf("OIDC providers = %d, want 1 shared by both seeds", len(providers.OpenIDConnectProviderList))
	}
}

func TestTrustPolicyAndIssuerHost(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"https://oidc.example/id/X", "oidc.example/id/X"},
		{"oidc.example/id/X/", "oidc.example/id/X"},
		{"http://127.0.0.1:8443", "127.0.0.1:8443"},
	} {
		if got := moto.IssuerHost(tc.in); got != tc.want {
			t.Errorf("IssuerHost(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	got := moto.TrustPolicy("arn:aws:iam::1:oidc-provider/i", "https://i", "a", "b")
	want := `{"Statement":[{"Action":"sts:AssumeRoleWithWebIdentity","Condition":{"StringEquals":{"i:aud":"sts.amazonaws.com"},"StringLike":{"i:sub":["a","b"]}},"Effect":"Allow","Principal":{"Federated":"arn:aws:iam::1:oidc-provider/i"}}],"Version":"2012-10-17"}`
	if got != want {
		t.Errorf("TrustPolicy =\n%s\nwant\n%s", got, want)
	}
}

// Start's failure path must fail, not skip, the test: run it on a recorder.
func TestStartFailsWithoutBinary(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	rec := &recordingTB{TB: t}
	func() {
		defer func() { _ = recover() }() // recordingTB.Fatalf panics to stop Start like FailNow would
		moto.Start(rec)
	}()
	if !rec.fataled || rec.skipped {
		t.Fatalf("Start without moto_server: fatal=%v skipped=%v, want a fatal failure", rec.fataled, rec.skipped)
	}
	if !strings.Contains(rec.msg, "pip install") {
		t.Fatalf("failure message %q lacks the install hint", rec.msg)
	}
}

type recordingTB struct {
	testing.TB
	fataled, skipped bool
	msg              string
}

func (r *recordingTB) Helper() {}
func (r *recordingTB) Fatalf(format string, args ...any) {
	r.fataled = true
	r.msg = fmt.Sprintf(format, args...)
	panic("fatal")
}
func (r *recordingTB) Skip(...any)          { r.skipped = true }
func (r *recordingTB) Skipf(string, ...any) { r.skipped = true }
