package aws_test

import (
	"context"
	"encoding/json"
	"net/url"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iam"
	corev1 "k8s.io/api/core/v1"

	"go.klusters.dev/credential-webhook/bench/iammodel"
	awsp "go.klusters.dev/credential-webhook/providers/aws"
	"go.klusters.dev/credential-webhook/sweeper"
)

// TestFullPassSeesWritesFromOutside: a derived role's trust policy edited outside this server
// (the console, or someone holding its credentials: UpdateAssumeRolePolicy is allowed on every
// derived role) leaves the lock generation as it was, so the warm cache of the replica that
// wrote the role knows nothing of it. The garbage collection's full pass is there for exactly
// that: it removes a subject added that way (CollectScope) and a trust statement added that way
// (MaintainScope, drift from the seed), deciding on what IAM holds rather than on the cache.
func TestFullPassSeesWritesFromOutside(t *testing.T) {
	ctx := context.Background()
	m := iammodel.New(iammodel.Options{})
	seed, err := iammodel.CreateSeed(ctx, m, iammodel.SeedSetup{Name: "kubestash-backup"})
	if err != nil {
		t.Fatal(err)
	}
	allow, err := awsp.ParseAllowlist(seed.String())
	if err != nil {
		t.Fatal(err)
	}
	a := awsp.NewAssigner(m, awsp.NewLocalLocker(), awsp.Config{Seeds: allow}, nil)
	res, err := a.Assign(ctx, seed, "demo", "backup")
	if err != nil {
		t.Fatal(err)
	}
	role := res.RoleARN[strings.LastIndexByte(res.RoleARN, '/')+1:]
	trust := func() map[string]any {
		t.Helper()
		out, err := m.GetRole(ctx, &iam.GetRoleInput{RoleName: aws.String(role)})
		if err != nil {
			t.Fatal(err)
		}
		doc, err := url.QueryUnescape(aws.ToString(out.Role.AssumeRolePolicyDocument))
		if err != nil {
			t.Fatal(err)
		}
		var p map[string]any
		if err := json.Unmarshal([]byte(doc), &p); err != nil {
			t.Fatal(err)
		}
		return p
	}
	put := func(p map[string]any) {
		t.Helper()
		b, err := json.Marshal(p)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := m.UpdateAssumeRolePolicy(ctx, &iam.UpdateAssumeRolePolicyInput{RoleName: aws.String(role), PolicyDocument: aws.String(string(b))}); err != nil {
			t.Fatal(err)
		}
	}
	col := awsp.Collector{Assigner: a}
	scope := sweeper.Scope{Key: seed.String(), Claim: awsp.SeedClaim(seed), Full: true}
	onlyBackup := func(_, name string) (*corev1.ServiceAccount, bool) { return nil, name == "backup" }
	subjectsOf := func(p map[string]any) string {
		b, _ := json.Marshal(p["Statement"].([]any)[0].(map[string]any)["Condition"].(map[string]any)["StringLike"])
		return string(b)
	}

	// A subject added from outside: no ServiceAccount claims it, so the full pass removes it.
	p := trust()
	like := p["Statement"].([]any)[0].(map[string]any)["Condition"].(map[string]any)["StringLike"].(map[string]any)
	for k, v := range like {
		like[k] = append(v.([]any), awsp.SubjectPrefix+"demo:intruder")
	}
	put(p)
	if n, err := col.CollectScope(ctx, scope, onlyBackup); err != nil || n != 1 {
		t.Errorf("full collection removed %d subjects (%v), want the one added from outside", n, err)
	}
	if got := subjectsOf(trust()); strings.Contains(got, "intruder") || !strings.Contains(got, "demo:backup") {
		t.Errorf("after the full collection the role trusts %s", got)
	}

	// A statement added from outside, trusting another account: the seed has no such statement,
	// so the full pass's drift repair takes it out again, keeping the subjects.
	p = trust()
	p["Statement"] = append(p["Statement"].([]any), map[string]any{
		"Effect": "Allow", "Action": "sts:AssumeRole", "Principal": map[string]any{"AWS": "arn:aws:iam::999999999999:root"},
	})
	put(p)
	if err := col.MaintainScope(ctx, scope); err != nil {
		t.Fatal(err)
	}
	p = trust()
	if b, _ := json.Marshal(p); strings.Contains(string(b), "999999999999") || len(p["Statement"].([]any)) != 1 {
		t.Errorf("after the full pass's drift repair the role's trust policy is %s", b)
	}
	if got := subjectsOf(p); !strings.Contains(got, "demo:backup") {
		t.Errorf("drift repair lost the subject: %s", got)
	}
}
