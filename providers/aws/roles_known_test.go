package aws_test

import (
	"context"
	"fmt"
	"reflect"
	"slices"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iam"

	"go.klusters.dev/credential-webhook/bench/iammodel"
	awsp "go.klusters.dev/credential-webhook/providers/aws"
)

// TestRolesWithPublishedView: Roles takes the published view's trust policies for documents that
// are their rendering (instead of parsing them again), and reports what IAM has all the same:
// the same as a replica without a view, a role another writer changed included.
func TestRolesWithPublishedView(t *testing.T) {
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
	newAssigner := func() *awsp.Assigner {
		return awsp.NewAssigner(m, awsp.NewLocalLocker(), awsp.Config{Seeds: allow}, nil)
	}
	a := newAssigner()
	for i := range 120 {
		if _, err := a.Assign(ctx, seed, "demo", fmt.Sprintf("sample-backup-%03d", i)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := a.Remove(ctx, seed, []string{awsp.SubjectPrefix + "demo:sample-backup-003", awsp.SubjectPrefix + "demo:sample-backup-040"}); err != nil {
		t.Fatal(err)
	}
	// Another writer replaces role 1's subjects behind a's back: a's view is stale there.
	other := awsp.SubjectPrefix + "other:changed-elsewhere"
	role1, err := awsp.Derived(seed, 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.UpdateAssumeRolePolicy(ctx, &iam.UpdateAssumeRolePolicyInput{
		RoleName: aws.String(role1.Name), PolicyDocument: aws.String(iammodel.TrustPolicy(iammodel.DefaultAccountID, iammodel.DefaultIssuer, other)),
	}); err != nil {
		t.Fatal(err)
	}

	got, err := a.Roles(ctx, seed)
	if err != nil {
		t.Fatal(err)
	}
	want, err := newAssigner().Roles(ctx, seed)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) < 3 {
		t.Fatalf("%d roles, want at least 3", len(got))
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Roles with a published view:\n%+v\nwithout:\n%+v", got, want)
	}
	if !slices.Equal(got[1].Subjects, []string{other}) {
		t.Errorf("role 1 lists %v, want what the other writer wrote (%s)", got[1].Subjects, other)
	}
	if slices.Contains(got[0].Subjects, awsp.SubjectPrefix+"demo:sample-backup-003") || !slices.Contains(got[0].Subjects, awsp.SubjectPrefix+"demo:sample-backup-004") {
		t.Errorf("role 0 lists %v: want 04 and not the removed 03", got[0].Subjects)
	}
}
