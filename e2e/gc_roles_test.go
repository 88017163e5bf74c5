package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iam"
	"github.com/aws/smithy-go"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"go.klusters.dev/credential-webhook/annotations"
	awsp "go.klusters.dev/credential-webhook/providers/aws"
)

// Garbage collection of derived roles through the real binary (issue 17): the leader's full
// passes (--gc-interval) delete a derived role emptied by the deletion of its ServiceAccount once
// it has been empty for --gc-empty-role-grace, keep the role that still has a subject, and bring
// a change of the seed's inline policy to the derived roles (drift repair). The trust policy
// quota is set so that one ServiceAccount fills a role: two ServiceAccounts, two roles.
func TestGCRoles(t *testing.T) {
	const (
		gcInterval     = 3 * time.Second
		emptyRoleGrace = 12 * time.Second
	)
	ctx := context.Background()
	motoIAM := iam.NewFromConfig(cluster.AWSConfig())
	w := flowSetup(t, "kubestash-gcroles")
	seed, err := awsp.ParseRoleARN(w.seed)
	if err != nil {
		t.Fatal(err)
	}

	// The quota one subject of this test's names fits under, and two do not.
	got, err := motoIAM.GetRole(ctx, &iam.GetRoleInput{RoleName: aws.String(seed.Name)})
	if err != nil {
		t.Fatal(err)
	}
	seedTrust, err := awsp.ParseTrustPolicy(aws.ToString(got.Role.AssumeRolePolicyDocument))
	if err != nil {
		t.Fatal(err)
	}
	one, err := awsp.DeriveTrustPolicy(seedTrust, []string{packSubject(w.ns, fmt.Sprintf("sample-backup-daemon-demo-session-%d", time.Now().Unix()))})
	if err != nil {
		t.Fatal(err)
	}
	size, err := one.Size()
	if err != nil {
		t.Fatal(err)
	}

	wh := w.replica(t, "gcroles",
		"--gc-grace="+flowGCGrace.String(),
		"--gc-interval="+gcInterval.String(),
		"--gc-empty-role-grace="+emptyRoleGrace.String(),
		"--aws-trust-policy-quota="+strconv.Itoa(size+10))
	t.Cleanup(func() {
		if err := wh.Stop(); err != nil {
			t.Errorf("stop %s: %v", wh.Name, err)
		}
	})
	flowWaitLeader(t, wh.Name)

	gone, kept := w.serviceAccount(t).Name, w.serviceAccount(t).Name
	granted := waitGranted(t, w.ns, []string{gone, kept}, time.Minute)
	goneRole, keptRole := granted[gone].Annotations[annotations.AWSRoleARN], granted[kept].Annotations[annotations.AWSRoleARN]
	if goneRole == keptRole || goneRole == "" || keptRole == "" {
		t.Fatalf("roles %q and %q: want one derived role each", goneRole, keptRole)
	}
	roleName := func(arn string) string {
		r, err := awsp.ParseRoleARN(arn)
		if err != nil {
			t.Fatal(err)
		}
		return r.Name
	}
	exists := func(arn string) (bool, error) {
		_, err := motoIAM.GetRole(ctx, &iam.GetRoleInput{RoleName: aws.String(roleName(arn))})
		if noSuchEntity(err) {
			return false, nil
		}
		return err == nil, err
	}

	deletedBefore := flowMetric(t, wh, "credential_webhook_derived_roles_deleted_total", nil)
	start := time.Now()
	if err := w.op.CoreV1().ServiceAccounts(w.ns).Delete(ctx, gone, metav1.DeleteOptions{}); err != nil {
		t.Fatalf("delete %s: %v", gone, err)
	}
	// The subject goes after --gc-grace; the emptied role after --gc-empty-role-grace more, on
	// the next full pass.
	flowPoll(t, flowGCGrace+emptyRoleGrace+2*time.Minute, goneRole+" deleted from moto", func() (bool, error) {
		ok, err := exists(goneRole)
		return !ok, err
	})
	took := time.Since(start)
	if took < flowGCGrace+emptyRoleGrace {
		t.Errorf("role deleted %s after its ServiceAccount, before --gc-grace + --gc-empty-role-grace (%s)", took, flowGCGrace+emptyRoleGrace)
	}
	if ok, err := exists(keptRole); err != nil || !ok {
		t.Fatalf("%s, which still has a subject, is gone (%v)", keptRole, err)
	}
	subs, err := flowTrustedSubjects(ctx, motoIAM, keptRole)
	if err != nil || len(subs) != 1 || subs[0] != packSubject(w.ns, kept) {
		t.Errorf("%s lists %v (%v), want only %s", keptRole, subs, err, kept)
	}
	if got := flowMetric(t, wh, "credential_webhook_derived_roles_deleted_total", nil) - deletedBefore; got != 1 {
		t.Errorf("derived_roles_deleted_total grew by %v, want 1", got)
	}

	// Drift: the seed's inline policy changes; the next full pass rewrites the derived role's.
	policy := seed.Name + "-inline"
	doc := `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:GetObject","Resource":"arn:aws:s3:::gc-roles-` + w.suffix + `/*"}]}`
	want, err := awsp.CanonicalJSON(doc)
	if err != nil {
		t.Fatal(err)
	}
	driftBefore := flowMetric(t, wh, "credential_webhook_drift_writes_total", map[string]string{"action": "iam:PutRolePolicy"})
	if _, err := motoIAM.PutRolePolicy(ctx, &iam.PutRolePolicyInput{RoleName: aws.String(seed.Name), PolicyName: aws.String(policy), PolicyDocument: aws.String(doc)}); err != nil {
		t.Fatal(err)
	}
	changed := time.Now()
	flowPoll(t, time.Minute, "the seed's new inline policy on "+keptRole, func() (bool, error) {
		out, err := motoIAM.GetRolePolicy(ctx, &iam.GetRolePolicyInput{RoleName: aws.String(roleName(keptRole)), PolicyName: aws.String(policy)})
		if err != nil {
			return false, err
		}
		raw, err := url.QueryUnescape(aws.ToString(out.PolicyDocument))
		if err != nil {
			return false, err
		}
		have, err := awsp.CanonicalJSON(raw)
		return have == want, err
	})
	// The pass counts its writes when its maintenance step ends, after the write is visible in
	// IAM: wait for the count rather than read it at once.
	var grew float64
	deadline := time.Now().Add(30 * time.Second)
	for {
		grew = flowMetric(t, wh, "credential_webhook_drift_writes_total", map[string]string{"action": "iam:PutRolePolicy"}) - driftBefore
		if grew >= 1 || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if grew < 1 {
		t.Errorf("drift_writes_total{action=iam:PutRolePolicy} grew by %v, want at least 1", grew)
	}
	t.Logf("figures: emptied role deleted %s after its ServiceAccount (gc-grace %s, empty-role grace %s, gc-interval %s); seed drift reached the derived role in %s",
		took.Round(time.Second), flowGCGrace, emptyRoleGrace, gcInterval, time.Since(changed).Round(100*time.Millisecond))
}

func noSuchEntity(err error) bool {
	var ae smithy.APIError
	return err != nil && errors.As(err, &ae) && ae.ErrorCode() == "NoSuchEntity"
}
