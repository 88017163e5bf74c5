package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iam"

	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/testenv/moto"
)

// roles adopt as an administrator runs it, against moto: the dry run prints the table and exits
// non-zero because one role is refused, --apply tags the faithful one only, --role narrows it to
// one role (exit 0), and a bad seed is an error before any IAM call.
func TestRolesAdoptCommand(t *testing.T) {
	srv := moto.Start(t)
	srv.SetEnv(t) // the command loads the SDK's default configuration: static creds, moto's endpoint
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const issuer = "https://oidc.eks.us-east-1.amazonaws.com/id/AD0P7AD0P7AD0P7AD0P7AD0P7AD0P7AD"
	cfg := moto.ConfigFor(srv.Endpoint)
	seedARN, err := moto.CreateSeedRole(ctx, cfg, "cli-seed", "/kubestash/", issuer)
	if err != nil {
		t.Fatal(err)
	}
	client := iam.NewFromConfig(cfg)
	seed, err := client.GetRole(ctx, &iam.GetRoleInput{RoleName: aws.String("cli-seed")})
	if err != nil {
		t.Fatal(err)
	}
	provider := "arn:aws:iam::" + moto.AccountID + ":oidc-provider/" + moto.IssuerHost(issuer)
	// Two clones as the upstream manager made them; the second has an inline policy of its own.
	for i, name := range []string{"cli-seed-0", "cli-seed-1"} {
		if _, err := client.CreateRole(ctx, &iam.CreateRoleInput{
			RoleName: aws.String(name), Path: aws.String("/kubestash/"),
			AssumeRolePolicyDocument: aws.String(moto.TrustPolicy(provider, issuer, "system:serviceaccount:demo:session-"+name)),
			Description:              seed.Role.Description, MaxSessionDuration: seed.Role.MaxSessionDuration,
			PermissionsBoundary: aws.String(moto.SeedBoundaryARN(seedARN)),
		}); err != nil {
			t.Fatal(err)
		}
		if _, err := client.AttachRolePolicy(ctx, &iam.AttachRolePolicyInput{RoleName: aws.String(name), PolicyArn: aws.String("arn:aws:iam::" + moto.AccountID + ":policy/kubestash/cli-seed-s3")}); err != nil {
			t.Fatal(err)
		}
		policies := map[string]string{"cli-seed-inline": `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:ListAllMyBuckets","Resource":"*"}]}`}
		if i == 1 {
			policies["admin"] = `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}`
		}
		for p, doc := range policies {
			if _, err := client.PutRolePolicy(ctx, &iam.PutRolePolicyInput{RoleName: aws.String(name), PolicyName: aws.String(p), PolicyDocument: aws.String(doc)}); err != nil {
				t.Fatal(err)
			}
		}
	}
	seedTag := func(name string) string {
		out, err := client.GetRole(ctx, &iam.GetRoleInput{RoleName: aws.String(name)})
		if err != nil {
			t.Fatal(err)
		}
		for _, tg := range out.Role.Tags {
			if aws.ToString(tg.Key) == annotations.SeedTag {
				return aws.ToString(tg.Value)
			}
		}
		return ""
	}
	cli := func(args ...string) (int, string, string) {
		var stdout, stderr bytes.Buffer
		code := run(ctx, args, &stdout, &stderr)
		return code, stdout.String(), stderr.String()
	}
	// row is the table line of a role, as fields.
	row := func(out, name string) []string {
		for _, l := range strings.Split(out, "\n") {
			if f := strings.Fields(l); len(f) > 1 && strings.HasSuffix(f[1], "/"+name) {
				return f
			}
		}
		return nil
	}

	code, out, errOut := cli("roles", "adopt", "--seed", seedARN)
	t.Logf("roles adopt --seed %s\n%s", seedARN, out)
	if code != 1 || !strings.Contains(errOut, "1 of 2 roles refused or not adopted") {
		t.Fatalf("dry run: exit %d, stderr %q, want 1 and the refusal count\n%s", code, errOut, out)
	}
	if f := row(out, "cli-seed-0"); len(f) < 4 || f[2] != "1" || f[3] != "faithful" {
		t.Errorf("dry run row of cli-seed-0: %q\n%s", f, out)
	}
	if f := row(out, "cli-seed-1"); len(f) < 5 || f[3] != "REFUSED" || !strings.Contains(strings.Join(f[4:], " "), "inline policy admin is not the seed's") {
		t.Errorf("dry run row of cli-seed-1: %q\n%s", f, out)
	}
	if !strings.Contains(out, "Dry run: nothing was written") || seedTag("cli-seed-0") != "" {
		t.Fatalf("the dry run wrote, or did not say it did not:\n%s", out)
	}

	code, out, _ = cli("roles", "adopt", "--seed", seedARN, "--apply")
	if code != 1 {
		t.Errorf("--apply with a refused role: exit %d, want 1", code)
	}
	if f := row(out, "cli-seed-0"); len(f) < 4 || f[3] != "adopted" {
		t.Errorf("--apply row of cli-seed-0: %q\n%s", f, out)
	}
	if seedTag("cli-seed-0") != seedARN || seedTag("cli-seed-1") != "" {
		t.Errorf("after --apply: cli-seed-0 tagged %q, cli-seed-1 tagged %q", seedTag("cli-seed-0"), seedTag("cli-seed-1"))
	}
	if p, err := client.ListRolePolicies(ctx, &iam.ListRolePoliciesInput{RoleName: aws.String("cli-seed-1")}); err != nil || len(p.PolicyNames) != 2 {
		t.Errorf("the refused role's inline policies changed: %v %v", p, err)
	}

	// One role: the adopted one is ours now, exit 0.
	code, out, errOut = cli("roles", "adopt", "--seed", seedARN, "--role", "cli-seed-0", "--apply")
	if code != 0 {
		t.Errorf("--role cli-seed-0: exit %d, stderr %q", code, errOut)
	}
	if f := row(out, "cli-seed-0"); len(f) < 4 || f[3] != "ours" || row(out, "cli-seed-1") != nil {
		t.Errorf("--role cli-seed-0:\n%s", out)
	}
	// The roles table now counts it as owned.
	if code, out, _ := cli("roles", "--seed", seedARN); code != 0 || !strings.Contains(strings.Join(row(out, "cli-seed-0"), " "), "yes") {
		t.Errorf("roles table after adoption (exit %d):\n%s", code, out)
	}
	// The totals line measures the seed against the limit; the foreign cli-seed-1 counts as full,
	// so with a limit of one role the seed is past its ceiling and the command warns.
	if code, out, _ := cli("roles", "--seed", seedARN, "--role-creation-limit", "1"); code != 0 ||
		!strings.Contains(out, "total: 2 derived roles of --role-creation-limit 1, ") || !strings.Contains(out, "WARNING: this seed is at") {
		t.Errorf("roles --role-creation-limit 1 (exit %d):\n%s", code, out)
	}
	if code, out, _ := cli("roles", "--seed", seedARN); code != 0 || strings.Contains(out, "WARNING") || !strings.Contains(out, "of --role-creation-limit 100, ") {
		t.Errorf("roles with the default limit (exit %d):\n%s", code, out)
	}

	if code, _, errOut := cli("roles", "adopt"); code != 1 || !strings.Contains(errOut, "--seed is required") {
		t.Errorf("no --seed: exit %d, %q", code, errOut)
	}
	if code, _, errOut := cli("roles", "adopt", "--seed", "arn:aws:iam::123456789012:user/x"); code != 1 || errOut == "" {
		t.Errorf("a user ARN as seed: exit %d, %q", code, errOut)
	}
}
