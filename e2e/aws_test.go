package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/url"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iam"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/e2e/harness"
	"go.klusters.dev/credential-webhook/kube"
	awsp "go.klusters.dev/credential-webhook/providers/aws"
	"go.klusters.dev/credential-webhook/testenv/moto"
)

// End-to-end proof of "AWS: pack ServiceAccounts into derived IAM roles": the real apiserver
// calls the real webhook binary over TLS, the binary talks to moto through the IAM proxy (which
// enforces the 2,048-character trust policy quota and counts every call), and the outcome is
// read back from both ends: the ServiceAccounts as the apiserver stored them, and the derived
// roles' trust policies straight from moto.
//
// Every test here starts webhook replicas, so none runs in parallel (see harness.StartWebhook).

// packQuota is IAM's default ACLSizePerRole, enforced by the proxy and given to the replicas.
const packQuota = 2048

// packOperator is the KubeStash operator's ServiceAccount, the one requester the replicas allow.
const packOperator = harness.OperatorUser

var packOperatorGroups = []string{"system:serviceaccounts", "system:serviceaccounts:kubestash", "system:authenticated"}

// packSeed creates a KubeStash seed role in moto (directly, so the proxy neither counts nor
// faults it) trusting the cluster's issuer. Names are unique per call: moto lives as long as
// the package run, and -count=N reruns every test against the same moto.
func packSeed(t *testing.T, prefix string) awsp.RoleARN {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	name := fmt.Sprintf("%s-%x", prefix, time.Now().UnixNano()&0xffffffffff)
	raw, err := moto.CreateSeedRole(ctx, cluster.AWSConfig(), name, "/", cluster.Issuer)
	if err != nil {
		t.Fatalf("create seed role %s: %v", name, err)
	}
	arn, err := awsp.ParseRoleARN(raw)
	if err != nil {
		t.Fatalf("seed role ARN %q: %v", raw, err)
	}
	return arn
}

// packEnforceQuota makes the IAM proxy refuse trust policies over packQuota (409
// LimitExceeded) and report it in GetAccountSummary, as IAM does; the harness default is no
// quota.
func packEnforceQuota(t *testing.T) {
	cluster.IAM.SetQuota(packQuota)
	t.Cleanup(func() { cluster.IAM.SetQuota(0) })
}

// packArgs are the flags of a replica serving the AWS assignment for seed.
func packArgs(seed awsp.RoleARN, identity string) []string {
	return []string{
		"--aws-seed-roles=" + seed.String(),
		"--allowed-requesters=user:" + packOperator,
		"--allowed-namespaces=*",
		"--aws-trust-policy-quota=" + strconv.Itoa(packQuota),
		"--lease-namespace=" + harness.WebhookNamespace,
		"--identity=" + identity,
	}
}

// packClient impersonates user with groups, after granting that user exactly create/get/list
// of ServiceAccounts in ns (RBAC applies to impersonated requests, and the webhook sees the
// user in the review's userInfo). Warnings go to warn when it is not nil.
func packClient(t *testing.T, ns, user string, groups []string, warn rest.WarningHandler) kubernetes.Interface {
	t.Helper()
	ctx := context.Background()
	rbac := cluster.Client.RbacV1()
	role, err := rbac.Roles(ns).Create(ctx, &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "pack-serviceaccounts-"},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"serviceaccounts"}, Verbs: []string{"create", "get", "list"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create Role: %v", err)
	}
	if _, err := rbac.RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "pack-serviceaccounts-"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: role.Name},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: user}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create RoleBinding: %v", err)
	}
	cfg := rest.CopyConfig(cluster.Config)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: user, Groups: groups}
	if warn != nil {
		cfg.WarningHandler = warn
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// The RBAC authoriser learns of the new binding through its informers.
	deadline := time.Now().Add(15 * time.Second)
	for {
		r, err := cs.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authorizationv1.SelfSubjectAccessReview{
			Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authorizationv1.ResourceAttributes{
				Namespace: ns, Verb: "create", Resource: "serviceaccounts"}},
		}, metav1.CreateOptions{})
		if err == nil && r.Status.Allowed {
			return cs
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s is still not allowed to create ServiceAccounts in %s (%v)", user, ns, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// packServiceAccount is a KubeStash per-session ServiceAccount for seed. All names from one
// base have the same length, so first fit needs the same number of roles in any arrival order.
func packServiceAccount(ns string, seed awsp.RoleARN, session int64) *corev1.ServiceAccount {
	return &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{
		Name:      fmt.Sprintf("sample-backup-daemon-demo-session-%d", session),
		Namespace: ns,
		Annotations: map[string]string{
			annotations.SeedRole:    seed.String(),
			annotations.BucketNames: harness.BucketNames,
		},
	}}
}

// packSessionBase is a Unix timestamp like the ones in KubeStash's names; adding small offsets
// keeps ten digits.
const packSessionBase = int64(1778072138)

func packSubject(ns, name string) string { return "system:serviceaccount:" + ns + ":" + name }

func packDerivedARN(t *testing.T, seed awsp.RoleARN, i int) string {
	t.Helper()
	d, err := awsp.Derived(seed, i)
	if err != nil {
		t.Fatal(err)
	}
	return d.String()
}

// packRole is one derived role as moto has it.
type packRole struct {
	Index      int
	Name       string
	ARN        string
	Doc        string // decoded, compact trust policy
	Size       int    // characters of Doc: what IAM compares with ACLSizePerRole
	Subjects   []string
	Federated  []string // the Federated principals of the statements listing subjects
	Audience   []string // the ":aud" values required next to them
	MaxSession int32
	Tags       map[string]string
}

// packRoles reads every derived role of seed ("<seed>-<i>", same path) from moto directly.
// The trust policy is parsed here independently of the product's parser.
func packRoles(t *testing.T, seed awsp.RoleARN) []packRole {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	client := iam.NewFromConfig(cluster.AWSConfig())
	derivedName := regexp.MustCompile(`^` + regexp.QuoteMeta(seed.Name) + `-(0|[1-9][0-9]*)$`)
	var out []packRole
	p := iam.NewListRolesPaginator(client, &iam.ListRolesInput{PathPrefix: aws.String(seed.Path)})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			t.Fatalf("moto ListRoles: %v", err)
		}
		for _, r := range page.Roles {
			m := derivedName.FindStringSubmatch(aws.ToString(r.RoleName))
			if m == nil || aws.ToString(r.Path) != seed.Path {
				continue
			}
			idx, _ := strconv.Atoi(m[1])
			got, err := client.GetRole(ctx, &iam.GetRoleInput{RoleName: r.RoleName})
			if err != nil {
				t.Fatalf("moto GetRole %s: %v", aws.ToString(r.RoleName), err)
			}
			role := packRole{Index: idx, Name: aws.ToString(r.RoleName), ARN: aws.ToString(got.Role.Arn),
				MaxSession: aws.ToInt32(got.Role.MaxSessionDuration), Tags: map[string]string{}}
			for _, tag := range got.Role.Tags {
				role.Tags[aws.ToString(tag.Key)] = aws.ToString(tag.Value)
			}
			role.Doc, role.Subjects, role.Federated, role.Audience = packParseTrust(t, role.Name, aws.ToString(got.Role.AssumeRolePolicyDocument))
			role.Size = utf8.RuneCountInString(role.Doc)
			out = append(out, role)
		}
	}
	slices.SortFunc(out, func(a, b packRole) int { return a.Index - b.Index })
	return out
}

// packParseTrust decodes a trust policy as IAM returns it (URL-encoded), compacts it, and
// returns the subjects of every "<issuer>:sub" condition with the Federated principals and
// ":aud" values of the statements carrying them.
func packParseTrust(t *testing.T, role, encoded string) (doc string, subjects, federated, audience []string) {
	t.Helper()
	decoded, err := url.QueryUnescape(encoded)
	if err != nil {
		t.Fatalf("trust policy of %s is not URL-encoded JSON: %v", role, err)
	}
	var compact bytes.Buffer
	if err := json.Compact(&compact, []byte(decoded)); err != nil {
		t.Fatalf("trust policy of %s is not JSON: %v\n%s", role, err, decoded)
	}
	var parsed struct {
		Statement []struct {
			Effect    string
			Principal struct{ Federated json.RawMessage }
			Condition map[string]map[string]json.RawMessage
		}
	}
	if err := json.Unmarshal(compact.Bytes(), &parsed); err != nil {
		t.Fatalf("trust policy of %s: %v\n%s", role, err, decoded)
	}
	strs := func(raw json.RawMessage) []string {
		var one string
		if json.Unmarshal(raw, &one) == nil {
			return []string{one}
		}
		var many []string
		if err := json.Unmarshal(raw, &many); err != nil {
			t.Fatalf("trust policy of %s: %s is neither a string nor a list", role, raw)
		}
		return many
	}
	for _, st := range parsed.Statement {
		var subs, auds []string
		for _, cond := range st.Condition {
			for k, v := range cond {
				switch {
				case strings.HasSuffix(k, ":sub"):
					subs = append(subs, strs(v)...)
				case strings.HasSuffix(k, ":aud"):
					auds = append(auds, strs(v)...)
				}
			}
		}
		if len(subs) == 0 {
			continue
		}
		subjects = append(subjects, subs...)
		audience = append(audience, auds...)
		if len(st.Principal.Federated) > 0 {
			federated = append(federated, strs(st.Principal.Federated)...)
		}
	}
	return compact.String(), subjects, federated, audience
}

// packSettled waits until wh leads the sweeper and its term's first full garbage collection is
// over, so that a test counting IAM calls counts only its own. A replica of an earlier test may
// hold the sweeper Lease until it expires; the new term's full pass then ran beside the test's
// first assignments, and its reads (ListRoles, every derived role, the seed for drift) were
// counted against them (a CI failure of TestAWSSteadyStateAssignmentCostsOneIAMCall). The next
// full pass is --gc-interval (10 min) away.
func packSettled(t *testing.T, wh *harness.Webhook) {
	t.Helper()
	flowPoll(t, 60*time.Second, wh.Name+" leading, its first full garbage collection done", func() (bool, error) {
		return flowMetric(t, wh, "credential_webhook_sweeper_leader", nil) == 1 &&
			flowMetric(t, wh, "credential_webhook_gc_last_full_success_timestamp_seconds", nil) > 0, nil
	})
}

// packCallsSince returns the proxy's per-action call counts minus before.
func packCallsSince(before map[string]int) map[string]int {
	diff := map[string]int{}
	for k, v := range cluster.IAM.Calls() {
		if d := v - before[k]; d != 0 {
			diff[k] = d
		}
	}
	return diff
}

// packIAMWrites keeps the calls that change IAM.
func packIAMWrites(calls map[string]int) map[string]int {
	out := map[string]int{}
	for k, v := range calls {
		verb, ok := strings.CutPrefix(k, "iam:")
		if !ok {
			continue
		}
		for _, w := range []string{"Create", "Update", "Put", "Attach", "Detach", "Delete", "Tag", "Untag", "Add", "Remove", "Set"} {
			if strings.HasPrefix(verb, w) {
				out[k] = v
			}
		}
	}
	return out
}

func packFormatCalls(calls map[string]int) string {
	keys := make([]string, 0, len(calls))
	for k := range calls {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	total := 0
	for _, k := range keys {
		fmt.Fprintf(&b, "%s=%d ", k, calls[k])
		total += calls[k]
	}
	fmt.Fprintf(&b, "(total %d)", total)
	return b.String()
}

// packSeedTrust is the seed's trust policy as the product parses it, for the capacity yardsticks.
func packSeedTrust(t *testing.T, seed awsp.RoleARN) awsp.TrustPolicy {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := iam.NewFromConfig(cluster.AWSConfig()).GetRole(ctx, &iam.GetRoleInput{RoleName: aws.String(seed.Name)})
	if err != nil {
		t.Fatalf("moto GetRole %s: %v", seed.Name, err)
	}
	p, err := awsp.ParseTrustPolicy(aws.ToString(out.Role.AssumeRolePolicyDocument))
	if err != nil {
		t.Fatalf("seed trust policy: %v", err)
	}
	return p
}

// packFirstFitRoles is how many roles the product's placement (awsp.Place) needs for subjects,
// one at a time in the given order, starting from no role, as the assigner places them.
func packFirstFitRoles(t *testing.T, seed awsp.TrustPolicy, subjects []string, quota int) int {
	t.Helper()
	var roles []awsp.RoleView
	for _, s := range subjects {
		pl := awsp.Place(roles, []string{s}, quota, math.MaxInt, awsp.PlaceOptions{Seed: &seed})
		if err := pl.Decisions[0].Err; err != nil {
			t.Fatal(err)
		}
		roles = pl.After(roles)
	}
	return len(roles)
}

// packReviewDurations are the "duration" fields of the replicas' review log lines for
// ServiceAccounts in ns (dry runs excluded).
func packReviewDurations(t *testing.T, ns string, replicas ...*harness.Webhook) []time.Duration {
	t.Helper()
	var out []time.Duration
	for _, w := range replicas {
		for _, r := range w.Reviews() {
			// CREATE only: the writers' own UPDATEs (recording the grant) are reviewed too.
			if r.Namespace != ns || r.Kind != "ServiceAccount" || r.DryRun || r.Operation != "CREATE" {
				continue
			}
			d, err := packParseDuration(r.Duration)
			if err != nil {
				t.Errorf("review log line of %s has an unreadable duration %q: %v", w.Name, r.Duration, err)
				continue
			}
			out = append(out, d)
		}
	}
	return out
}

// packParseDuration reads slog's JSON duration (nanoseconds) or a Go duration string.
func packParseDuration(s string) (time.Duration, error) {
	if f, err := strconv.ParseFloat(s, 64); err == nil {
		return time.Duration(f), nil
	}
	return time.ParseDuration(strings.Trim(s, `"`))
}

// packPercentile is the nearest-rank percentile of ds (sorted in place).
func packPercentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	slices.Sort(ds)
	i := int(math.Ceil(p*float64(len(ds)))) - 1
	return ds[max(0, min(i, len(ds)-1))]
}

// ---------------------------------------------------------------------------------------------

// A KubeStash session ServiceAccount created by the operator comes back from the apiserver with
// the first derived role, whose trust policy (read from moto) lists exactly that ServiceAccount
// and clones the seed. The same kind of ServiceAccount created by anyone else is admitted with
// a warning and nothing else: no role annotation, no pending marker, no IAM write.
func TestAWSOperatorServiceAccountGetsDerivedRole(t *testing.T) {
	packEnforceQuota(t)
	ns := cluster.Namespace(t)
	seed := packSeed(t, "kubestash-e2e")
	packSettled(t, cluster.StartWebhook(t, harness.WebhookOptions{Name: "aws-single", Args: packArgs(seed, "aws-single")}))
	ctx := context.Background()

	opWarn := &harness.Warnings{}
	operator := packClient(t, ns, packOperator, packOperatorGroups, opWarn)
	sa := packServiceAccount(ns, seed, packSessionBase)
	got, err := operator.CoreV1().ServiceAccounts(ns).Create(ctx, sa, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("operator creates %s: %v", sa.Name, err)
	}
	want := packDerivedARN(t, seed, 0)
	// Admission only plans: the answer carries the planned role and the claim, IAM is untouched
	// until the writer sees the ServiceAccount persisted.
	if arn := got.Annotations[annotations.AWSRoleARN]; arn != want {
		t.Fatalf("created ServiceAccount has %s=%q, want the planned %q (warnings %q)", annotations.AWSRoleARN, arn, want, opWarn.Take())
	}
	claim, _ := awsp.ClaimOf(map[string]string{annotations.SeedRole: seed.String()})
	if v := got.Annotations[annotations.Pending]; v != claim.String() {
		t.Errorf("planned ServiceAccount carries the pending marker %q, want the claim %q", v, claim)
	}
	if got.Annotations[annotations.SeedRole] != seed.String() || got.Annotations[annotations.BucketNames] != harness.BucketNames {
		t.Errorf("input annotations changed: %v", got.Annotations)
	}
	if w := opWarn.Take(); len(w) != 0 {
		t.Errorf("successful plan returned warnings %q", w)
	}
	stored := waitGranted(t, ns, []string{sa.Name}, 30*time.Second)[sa.Name]
	if stored.Annotations[annotations.AWSRoleARN] != want || stored.Annotations[annotations.Granted] != string(stored.UID)+" "+claim.String() {
		t.Errorf("granted ServiceAccount: %s=%q, %s=%q; want %q and the claim granted to %s", annotations.AWSRoleARN, stored.Annotations[annotations.AWSRoleARN],
			annotations.Granted, stored.Annotations[annotations.Granted], want, stored.UID)
	}
	flowWaitEvent(t, ns, "ServiceAccount", sa.Name, "Normal/Assigned")

	roles := packRoles(t, seed)
	if len(roles) != 1 || roles[0].Index != 0 || roles[0].ARN != want {
		t.Fatalf("derived roles in moto = %+v; want exactly %s", roles, want)
	}
	r := roles[0]
	subject := packSubject(ns, sa.Name)
	if !slices.Equal(r.Subjects, []string{subject}) {
		t.Errorf("trust policy of %s lists %q, want exactly [%q] (the seed's own subject %q must not be copied)\n%s", r.Name, r.Subjects, subject, moto.SeedSubject, r.Doc)
	}
	issuer := moto.IssuerHost(cluster.Issuer)
	if len(r.Federated) != 1 || !strings.HasSuffix(r.Federated[0], ":oidc-provider/"+issuer) || !slices.Equal(r.Audience, []string{moto.Audience}) {
		t.Errorf("trust policy of %s: Federated %q, aud %q; want the seed's provider for %s and %q\n%s", r.Name, r.Federated, r.Audience, issuer, moto.Audience, r.Doc)
	}
	if r.Size > packQuota {
		t.Errorf("trust policy of %s is %d characters, quota %d", r.Name, r.Size, packQuota)
	}
	if r.Tags[annotations.SeedTag] != seed.String() || r.Tags[moto.SeedTagKey] != moto.SeedTagValue || r.MaxSession != moto.SeedMaxSessionDuration {
		t.Errorf("%s is not a clone of the seed: tags %v, max session %d; want %s=%s, %s=%s, %d",
			r.Name, r.Tags, r.MaxSession, annotations.SeedTag, seed, moto.SeedTagKey, moto.SeedTagValue, moto.SeedMaxSessionDuration)
	}

	t.Run("another requester gets no role", func(t *testing.T) {
		const other = "alice"
		otherWarn := &harness.Warnings{}
		client := packClient(t, ns, other, []string{"system:authenticated"}, otherWarn)
		before := cluster.IAM.Calls()
		sa := packServiceAccount(ns, seed, packSessionBase+1)
		// The apiserver's own admission policy refuses the seed annotation from anyone but the
		// allowed requesters; the webhook saw the review first (mutating runs before validating)
		// and answered it with a warning and no patch.
		_, err := client.CoreV1().ServiceAccounts(ns).Create(ctx, sa, metav1.CreateOptions{})
		if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), annotations.SeedRole) {
			t.Fatalf("%s creates %s: err = %v; want the admission policy's refusal naming %s", other, sa.Name, err, annotations.SeedRole)
		}
		if _, err := cluster.Client.CoreV1().ServiceAccounts(ns).Get(ctx, sa.Name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("%s's refused ServiceAccount was stored (get: %v)", other, err)
		}
		warnings := otherWarn.Take()
		if len(warnings) == 0 || !strings.Contains(strings.Join(warnings, "\n"), "no IAM role was assigned") {
			t.Errorf("response warnings = %q; want one saying no IAM role was assigned", warnings)
		}
		wire, err := cluster.WaitForReview(5*time.Second, func(r harness.WireReview) bool {
			return r.Namespace == ns && r.Name == sa.Name && !r.DryRun
		})
		if err != nil || wire.User != other || !wire.Allowed || wire.PatchOps != 0 || len(wire.Warnings) == 0 {
			t.Errorf("wire review = user %q allowed %v patchOps %d warnings %q (%v); want %s, allowed, no patch, a warning",
				wire.User, wire.Allowed, wire.PatchOps, wire.Warnings, err, other)
		}
		if calls := packCallsSince(before); len(calls) != 0 {
			t.Errorf("IAM calls for a refused requester: %s; want none", packFormatCalls(calls))
		}
		for _, r := range packRoles(t, seed) {
			if slices.Contains(r.Subjects, packSubject(ns, sa.Name)) {
				t.Errorf("%s lists %s's ServiceAccount", r.Name, other)
			}
		}
	})
}

// 200 session ServiceAccounts created concurrently (16 workers) through two replicas that share
// the per-seed Lease end packed: every assigned subject in exactly one derived role, every
// ServiceAccount annotated with the role listing it, no trust policy over the quota, and as few
// roles as first fit needs.
func TestAWSConcurrentAssignmentsAcrossTwoReplicas(t *testing.T) {
	const (
		total   = 200
		workers = 16
	)
	packEnforceQuota(t)
	ns := cluster.Namespace(t)
	seed := packSeed(t, "kubestash-e2e")
	a := cluster.StartWebhook(t, harness.WebhookOptions{Name: "aws-a", Args: packArgs(seed, "aws-a")})
	b := cluster.StartWebhook(t, harness.WebhookOptions{Name: "aws-b", Args: packArgs(seed, "aws-b")})
	warn := &harness.Warnings{}
	operator := packClient(t, ns, packOperator, packOperatorGroups, warn)
	ctx := context.Background()

	before := cluster.IAM.Calls()
	rejectionsBefore := len(cluster.IAM.Rejections())
	type result struct {
		name    string
		arn     string
		pending string
		err     error
		latency time.Duration
	}
	results := make([]result, total)
	next := make(chan int)
	var wg sync.WaitGroup
	start := time.Now()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				sa := packServiceAccount(ns, seed, packSessionBase+int64(i))
				t0 := time.Now()
				got, err := operator.CoreV1().ServiceAccounts(ns).Create(ctx, sa, metav1.CreateOptions{})
				res := result{name: sa.Name, err: err, latency: time.Since(t0)}
				if err == nil {
					res.arn = got.Annotations[annotations.AWSRoleARN]
					res.pending = got.Annotations[annotations.Pending]
				}
				results[i] = res
			}
		}()
	}
	for i := range total {
		next <- i
	}
	close(next)
	wg.Wait()
	wall := time.Since(start)

	var names []string
	for _, r := range results {
		if r.err != nil {
			t.Errorf("create %s: %v", r.name, r.err)
		}
		names = append(names, r.name)
	}
	if t.Failed() {
		t.FailNow()
	}

	// What the apiserver stored once the writers finished (admission only planned).
	stored := waitGranted(t, ns, names, 2*time.Minute)
	granted := time.Since(start)
	calls := packCallsSince(before)

	// What IAM has.
	roles := packRoles(t, seed)
	holders := map[string][]packRole{}
	entries := 0
	for _, r := range roles {
		if r.Size > packQuota {
			t.Errorf("trust policy of %s is %d characters, over the quota %d", r.Name, r.Size, packQuota)
		}
		for _, s := range r.Subjects {
			holders[s] = append(holders[s], r)
			entries++
		}
		if len(r.Subjects) != len(slices.Compact(slices.Sorted(slices.Values(r.Subjects)))) {
			t.Errorf("%s lists a subject twice: %q", r.Name, r.Subjects)
		}
	}

	cameTrue := 0
	for _, res := range results {
		sa := stored[res.name]
		subject := packSubject(ns, res.name)
		arn := sa.Annotations[annotations.AWSRoleARN]
		if arn == res.arn {
			cameTrue++ // the writer corrects a plan another replica's writes made stale
		}
		if !strings.HasPrefix(res.pending, "aws:") {
			t.Errorf("%s: the create response carried the pending marker %q, want the AWS claim", res.name, res.pending)
		}
		if len(holders[subject]) != 1 {
			t.Errorf("%s is listed in %d derived roles, want exactly 1", subject, len(holders[subject]))
			continue
		}
		if want := holders[subject][0].ARN; arn != want {
			t.Errorf("%s is annotated %q but listed in %s", res.name, arn, want)
		}
	}
	for s := range holders {
		name, ok := strings.CutPrefix(s, "system:serviceaccount:"+ns+":")
		if _, created := stored[name]; !ok || !created {
			t.Errorf("a derived role lists %q, which is no ServiceAccount this test created", s)
		}
	}

	// Packing: the assigned subjects need exactly as many roles as first fit over them.
	assigned := slices.Sorted(func(yield func(string) bool) {
		for s := range holders {
			if !yield(s) {
				return
			}
		}
	})
	seedTrust := packSeedTrust(t, seed)
	wantRoles := packFirstFitRoles(t, seedTrust, assigned, packQuota)
	perRole, err := awsp.TheoreticalMax(seedTrust, assigned, packQuota)
	if err != nil {
		t.Fatal(err)
	}
	if len(roles) != wantRoles {
		t.Errorf("%d derived roles hold %d subjects; first fit needs %d (theoretical max %d per role)", len(roles), len(assigned), wantRoles, perRole)
	}
	for i, r := range roles {
		if r.Index != i {
			t.Errorf("derived role indexes are not contiguous from 0: position %d is %s", i, r.Name)
		}
	}
	if minRoles := (len(assigned) + perRole - 1) / max(perRole, 1); wantRoles != minRoles {
		t.Errorf("first fit needs %d roles for %d equal-length subjects, the arithmetic minimum is %d", wantRoles, len(assigned), minRoles)
	}
	if n := len(cluster.IAM.Rejections()) - rejectionsBefore; n != 0 {
		t.Errorf("IAM refused %d trust policies (LimitExceeded): the replicas' size measurement disagrees with IAM's", n)
	}

	// Figures.
	durations := packReviewDurations(t, ns, a, b)
	var perReplica []string
	for _, w := range []*harness.Webhook{a, b} {
		n := 0
		for _, r := range w.Reviews() {
			if r.Namespace == ns && !r.DryRun && r.Operation == "CREATE" {
				n++
			}
		}
		perReplica = append(perReplica, fmt.Sprintf("%s=%d", w.Name, n))
	}
	clientLat := make([]time.Duration, 0, total)
	for _, r := range results {
		clientLat = append(clientLat, r.latency)
	}
	var fills []string
	for _, r := range roles {
		fills = append(fills, fmt.Sprintf("%d:%d/%dch", len(r.Subjects), r.Size, packQuota))
	}
	t.Logf("%d ServiceAccounts, %d workers, 2 replicas (Lease in %s), quota %d: created in %s (%.1f SA/s), all granted after %s",
		total, workers, harness.WebhookNamespace, packQuota, wall.Round(time.Millisecond), float64(total)/wall.Seconds(), granted.Round(time.Millisecond))
	t.Logf("CREATE reviews per replica: %s; plans that came true: %d/%d; admission warnings: %d", strings.Join(perReplica, " "), cameTrue, total, len(warn.Take()))
	t.Logf("roles: %d (first fit %d, theoretical max %d subjects/role, subject %d chars); fill per role: %s",
		len(roles), wantRoles, perRole, len(assigned[0]), strings.Join(fills, " "))
	t.Logf("IAM calls: %s; per ServiceAccount %.2f", packFormatCalls(calls), float64(packTotal(calls))/total)
	t.Logf("webhook review duration (log \"duration\", n=%d): p50 %s p99 %s max %s; apiserver create as seen by the client: p50 %s p99 %s",
		len(durations), packPercentile(durations, 0.50).Round(time.Microsecond), packPercentile(durations, 0.99).Round(time.Microsecond),
		packPercentile(durations, 1).Round(time.Microsecond),
		packPercentile(clientLat, 0.50).Round(time.Microsecond), packPercentile(clientLat, 0.99).Round(time.Microsecond))
	if len(durations) != total {
		t.Errorf("the replicas logged %d ServiceAccount reviews for %s, want %d (one per create)", len(durations), ns, total)
	}
}

func packTotal(calls map[string]int) int {
	n := 0
	for _, v := range calls {
		n += v
	}
	return n
}

// In steady state (warm cache, no other writer since this replica's last write) one more
// assignment through the real binary costs exactly one IAM call: iam:UpdateAssumeRolePolicy.
func TestAWSSteadyStateAssignmentCostsOneIAMCall(t *testing.T) {
	packEnforceQuota(t)
	ns := cluster.Namespace(t)
	seed := packSeed(t, "kubestash-e2e")
	packSettled(t, cluster.StartWebhook(t, harness.WebhookOptions{Name: "aws-steady", Args: packArgs(seed, "aws-steady")}))
	operator := packClient(t, ns, packOperator, packOperatorGroups, nil)
	ctx := context.Background()
	want := packDerivedARN(t, seed, 0)

	create := func(i int64) map[string]int {
		t.Helper()
		before := cluster.IAM.Calls()
		got, err := operator.CoreV1().ServiceAccounts(ns).Create(ctx, packServiceAccount(ns, seed, packSessionBase+i), metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("create: %v", err)
		}
		if arn := got.Annotations[annotations.AWSRoleARN]; arn != want {
			t.Fatalf("ServiceAccount %d annotated %q, want %q (pending %q)", i, arn, want, got.Annotations[annotations.Pending])
		}
		// The write follows persistence: count until the writer recorded the grant.
		waitGranted(t, ns, []string{got.Name}, 30*time.Second)
		return packCallsSince(before)
	}
	// Warm-up: the first assignment lists the roles, reads the seed and creates <seed>-0.
	warm := create(0)
	t.Logf("first assignment (creates %s): %s", want, packFormatCalls(warm))
	if warm["iam:CreateRole"] != 1 {
		t.Errorf("first assignment made %d iam:CreateRole, want 1", warm["iam:CreateRole"])
	}
	create(1)
	for i := int64(2); i < 7; i++ {
		calls := create(i)
		if len(calls) != 1 || calls["iam:UpdateAssumeRolePolicy"] != 1 {
			t.Errorf("steady-state assignment %d cost %s; want exactly iam:UpdateAssumeRolePolicy=1", i, packFormatCalls(calls))
		}
	}
	roles := packRoles(t, seed)
	if len(roles) != 1 || len(roles[0].Subjects) != 7 {
		t.Errorf("derived roles: %+v; want one listing the 7 ServiceAccounts", roles)
	}
}

// A dry-run create (dryRun=All) of a ServiceAccount with the seed annotation writes nothing to
// IAM and nothing to Kubernetes (no object, no per-seed Lease), and the apiserver's dry-run
// answer shows the role the ServiceAccount would get.
func TestAWSDryRunMakesNoIAMWrite(t *testing.T) {
	packEnforceQuota(t)
	ns := cluster.Namespace(t)
	seed := packSeed(t, "kubestash-e2e")
	cluster.StartWebhook(t, harness.WebhookOptions{Name: "aws-dryrun", Args: packArgs(seed, "aws-dryrun")})
	warn := &harness.Warnings{}
	operator := packClient(t, ns, packOperator, packOperatorGroups, warn)
	ctx := context.Background()
	want := packDerivedARN(t, seed, 0)
	leases := cluster.Client.CoordinationV1().Leases(harness.WebhookNamespace)

	dryRun := func(t *testing.T, i int64) {
		t.Helper()
		sa := packServiceAccount(ns, seed, packSessionBase+i)
		before := cluster.IAM.Calls()
		got, err := operator.CoreV1().ServiceAccounts(ns).Create(ctx, sa, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		if err != nil {
			t.Fatalf("dry-run create: %v", err)
		}
		calls := packCallsSince(before)
		if w := packIAMWrites(calls); len(w) != 0 {
			t.Errorf("dry run wrote to IAM: %s", packFormatCalls(w))
		}
		t.Logf("IAM calls of the dry run: %s", packFormatCalls(calls))
		if arn := got.Annotations[annotations.AWSRoleARN]; arn != want {
			t.Errorf("dry-run response has %s=%q, want %q", annotations.AWSRoleARN, arn, want)
		}
		if v, ok := got.Annotations[annotations.Pending]; ok {
			t.Errorf("dry-run response carries the pending marker %q", v)
		}
		if _, err := cluster.Client.CoreV1().ServiceAccounts(ns).Get(ctx, sa.Name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("after the dry run, get %s: %v; want NotFound", sa.Name, err)
		}
		wire, err := cluster.WaitForReview(5*time.Second, func(r harness.WireReview) bool { return r.Namespace == ns && r.Name == sa.Name })
		if err != nil || !wire.DryRun {
			t.Errorf("no dry-run review on the wire for %s (%v)", sa.Name, err)
		}
		// The role is a prediction (no lock is taken for a dry run): the answer says so.
		if w := warn.Take(); !strings.Contains(strings.Join(w, "\n"), "dry run") {
			t.Errorf("dry-run response warnings = %q; want one saying it was a dry run", w)
		}
	}

	t.Run("no derived role yet", func(t *testing.T) {
		dryRun(t, 0)
		if roles := packRoles(t, seed); len(roles) != 0 {
			t.Errorf("the dry run created derived roles: %+v", roles)
		}
		if _, err := leases.Get(ctx, kube.LeaseName(seed.String()), metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("the dry run touched the per-seed Lease %s (get: %v); want NotFound", kube.LeaseName(seed.String()), err)
		}
	})

	t.Run("derived role with space", func(t *testing.T) {
		sa, err := operator.CoreV1().ServiceAccounts(ns).Create(ctx, packServiceAccount(ns, seed, packSessionBase+1), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		waitGranted(t, ns, []string{sa.Name}, 30*time.Second)
		before := packRoles(t, seed)
		dryRun(t, 2)
		after := packRoles(t, seed)
		if len(before) != 1 || len(after) != 1 || before[0].Doc != after[0].Doc {
			t.Errorf("the dry run changed the derived roles: before %+v after %+v", before, after)
		}
	})
}
