package iammodel_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/service/iam"
	"github.com/aws/aws-sdk-go-v2/service/iam/types"
	"github.com/aws/smithy-go"
	corev1 "k8s.io/api/core/v1"

	"go.klusters.dev/credential-webhook/bench/iammodel"
	awsp "go.klusters.dev/credential-webhook/providers/aws"
	"go.klusters.dev/credential-webhook/sweeper"
	"go.klusters.dev/credential-webhook/testenv/iamproxy"
	"go.klusters.dev/credential-webhook/testenv/moto"
)

// quota is below IAM's default, so a replica configured with the default learns the real one
// from IAM's 409s.
const (
	quota    = 1800
	seedName = "eq-seed"
	ns       = "demo"
)

var start = time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC)

func sa(i int) string { return fmt.Sprintf("backup-session-%d", 1778072138+i*3600) }

func subjects(from, to int) []string {
	var out []string
	for i := from; i < to; i++ {
		out = append(out, awsp.SubjectPrefix+ns+":"+sa(i))
	}
	return out
}

// TestModelMatchesMoto runs the production code through one scenario against moto (behind
// iamproxy, which enforces the quota and counts the calls) and against the model, and requires
// the same answers, the same calls per action and the same roles at the end.
func TestModelMatchesMoto(t *testing.T) {
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	srv := moto.Start(t) // fails, not skips, without moto_server
	srv.SetEnv(t)        // static test credentials, endpoint on 127.0.0.1: nothing reaches AWS
	proxy, err := iamproxy.New(srv.Endpoint, iamproxy.Options{Quota: quota})
	if err != nil {
		t.Fatal(err)
	}
	proxy.Start(t)
	direct := iam.NewFromConfig(moto.ConfigFor(srv.Endpoint)) // setup and reading back, uncounted
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	// moto attaches only policies it has, and IAMAPI cannot create one.
	pol, err := direct.CreatePolicy(ctx, &iam.CreatePolicyInput{
		PolicyName: aws.String("eq-s3"), Path: aws.String(iammodel.DefaultSeedPath),
		PolicyDocument: aws.String(`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["s3:GetObject"],"Resource":"*"}]}`),
	})
	if err != nil {
		t.Fatal(err)
	}
	managed := aws.ToString(pol.Policy.Arn)
	api := awsp.NewIAMClient(moto.ConfigFor(proxy.URL))

	t.Run("api", func(t *testing.T) {
		model := iammodel.New(iammodel.Options{Quota: quota})
		got, want := apiCalls(t, ctx, model, managed), apiCalls(t, ctx, api, managed)
		if !slices.Equal(got, want) {
			t.Errorf("model answers differ from moto's:\n%s", diffLines(got, want))
		}
	})

	t.Run("assigner", func(t *testing.T) {
		proxy.ResetCalls()
		motoLog := scenario(t, ctx, api, managed)
		motoCalls := map[string]int{}
		for k, v := range proxy.Calls() {
			if a, ok := strings.CutPrefix(k, "iam:"); ok && v > 0 {
				motoCalls[a] = v
			}
		}
		motoRoles, err := readRoles(ctx, direct, "/")
		if err != nil {
			t.Fatal(err)
		}

		model := iammodel.New(iammodel.Options{Quota: quota, Clock: func() time.Time { return start }})
		modelLog := scenario(t, ctx, model, managed)
		modelCalls := model.Calls()
		modelRoles := model.Roles()
		if read, err := readRoles(ctx, model, "/"); err != nil {
			t.Fatal(err)
		} else if !reflect.DeepEqual(read, modelRoles) {
			t.Errorf("the model's roles read through its API differ from Roles():\n%v\n%v", read, modelRoles)
		}

		if !slices.Equal(modelLog, motoLog) {
			t.Errorf("the production code saw different answers (model vs moto):\n%s", diffLines(modelLog, motoLog))
		}
		if !maps.Equal(modelCalls, motoCalls) {
			t.Errorf("calls per action differ:\nmodel %v\nmoto  %v", modelCalls, motoCalls)
		}
		m, w := views(t, modelRoles), views(t, motoRoles)
		if !reflect.DeepEqual(m, w) {
			t.Errorf("end state differs:\n%s", diffLines(fmtViews(m), fmtViews(w)))
		}
		total := 0
		for _, n := range motoCalls {
			total += n
		}
		t.Logf("%d roles, %d IAM calls: %v", len(w), total, motoCalls)
		if motoCalls["UntagRole"] == 0 || motoCalls["DeleteRole"] == 0 {
			t.Error("the scenario no longer unmarks a refilled role or deletes an expired one")
		}
		if rej := proxy.Rejections(); len(rej) == 0 {
			t.Error("IAM never refused a trust policy for its size: the scenario no longer covers the quota")
		} else {
			t.Logf("refused by the quota: %v", rej)
		}
		t.Logf("scenario:\n%s", strings.Join(motoLog, "\n"))
	})
}

// scenario is what both runs do, and returns what the production code answered at each step.
// Concurrent assignments run in fixed batches (batch) so both runs send the same calls.
func scenario(t *testing.T, ctx context.Context, api awsp.IAMAPI, managed string) []string {
	t.Helper()
	var log []string
	logf := func(format string, args ...any) { log = append(log, fmt.Sprintf(format, args...)) }
	check := func(what string, err error) {
		if err != nil {
			t.Errorf("%s: %v", what, err)
		}
	}
	seed, err := iammodel.CreateSeed(ctx, api, iammodel.SeedSetup{Name: seedName, Managed: []string{managed}})
	if err != nil {
		t.Fatal(err)
	}
	// Index 1 is taken by a role that is not ours (no seed tag), index 3's name by a role under a
	// deeper path (names are unique across paths): the Assigner must skip both.
	for _, r := range []struct{ name, path string }{{seedName + "-1", "/kubestash/"}, {seedName + "-3", "/kubestash/team/"}} {
		_, err := api.CreateRole(ctx, &iam.CreateRoleInput{RoleName: aws.String(r.name), Path: aws.String(r.path),
			AssumeRolePolicyDocument: aws.String(iammodel.TrustPolicy(iammodel.DefaultAccountID, iammodel.DefaultIssuer, "system:serviceaccount:other:x"))})
		check("create "+r.name, err)
	}

	clk := &fakeClock{now: start}
	allow, err := awsp.ParseAllowlist("arn:aws:iam::" + iammodel.DefaultAccountID + ":role/kubestash/*")
	if err != nil {
		t.Fatal(err)
	}
	lk := &gatedLocker{Locker: awsp.NewLocalLocker()}
	a := awsp.NewAssigner(api, lk, awsp.Config{Seeds: allow, Clock: clk.Now}, nil)
	assign := func(a *awsp.Assigner, i int) {
		got, err := a.Assign(ctx, seed, ns, sa(i))
		check("assign", err)
		logf("assign %d: %s", i, outcome(got, err))
	}
	for i := range 20 {
		assign(a, i)
	}
	log = append(log, batch(t, ctx, a, lk, seed, 20, 30)...)
	log = append(log, batch(t, ctx, a, lk, seed, 30, 40)...)
	// A second replica that takes the quota to be IAM's default learns the real one from 409s.
	b := awsp.NewAssigner(api, lk, awsp.Config{Seeds: allow, Clock: clk.Now, Quota: awsp.DefaultQuota}, nil)
	for i := 40; i < 60; i++ {
		assign(b, i)
	}
	for i := 35; i < 45; i += 3 { // listed already; a's cache is stale since b wrote
		assign(a, i)
	}

	for _, r := range [][2]int{{0, 20}, {20, 40}} {
		n, err := a.Remove(ctx, seed, subjects(r[0], r[1]))
		check("remove", err)
		logf("remove %d-%d: %d", r[0], r[1], n)
	}
	const grace = time.Hour
	expire := func(after time.Duration) {
		clk.Advance(after)
		rep, err := a.ExpireEmpty(ctx, seed, grace)
		check("expire", err)
		logf("expire after %v: %+v", after, rep)
	}
	expire(30 * time.Minute) // Remove marked the emptied roles: too early
	expire(2 * time.Hour)    // now they go

	// The seed changes: a changed and a new inline policy, a new tag, a new description.
	for name, doc := range map[string]string{
		seedName + "-inline": `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:ListBucket","Resource":"*"}]}`,
		seedName + "-extra":  `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:GetBucketLocation","Resource":"*"}]}`,
	} {
		_, err := api.PutRolePolicy(ctx, &iam.PutRolePolicyInput{RoleName: aws.String(seedName), PolicyName: aws.String(name), PolicyDocument: aws.String(doc)})
		check("put seed policy", err)
	}
	_, err = api.TagRole(ctx, &iam.TagRoleInput{RoleName: aws.String(seedName), Tags: []iamTag{{Key: aws.String("cost-center"), Value: aws.String("42")}}})
	check("tag seed", err)
	// MaxSessionDuration restated: moto (unlike IAM) resets an omitted one to 3600.
	_, err = api.UpdateRole(ctx, &iam.UpdateRoleInput{RoleName: aws.String(seedName), Description: aws.String("changed seed"), MaxSessionDuration: aws.Int32(iammodel.DefaultMaxSession)})
	check("update seed", err)
	srep, err := a.SyncFromSeed(ctx, seed)
	check("sync", err)
	logf("sync: %v", srep.Writes)

	// Garbage collection: of the subjects left, only 48-54 still exist. That empties eq-seed-2.
	lookup := func(namespace, name string) (*corev1.ServiceAccount, bool) {
		for i := 48; i < 55; i++ {
			if namespace == ns && name == sa(i) {
				return nil, true
			}
		}
		return nil, false
	}
	c := awsp.Collector{Assigner: a, EmptyRoleGrace: grace}
	scope := sweeper.Scope{Key: seed.String(), Claim: awsp.SeedClaim(seed)}
	n, err := c.CollectScope(ctx, scope, lookup)
	check("collect", err)
	logf("collect: removed %d", n)
	check("maintain", c.MaintainScope(ctx, scope))
	log = append(log, batch(t, ctx, a, lk, seed, 60, 63)...) // refills the emptied role first,
	// so the next full pass unmarks it instead of deleting it. (A bare ExpireEmpty would not: the
	// recheck of the foreign role reloaded the cache, which forgets the marks; the pass's sync
	// reads them again.)
	clk.Advance(2 * time.Hour)
	check("maintain", c.MaintainScope(ctx, scope))
	log = append(log, batch(t, ctx, a, lk, seed, 63, 111)...) // and a new role takes the hole at index 0
	return log
}

type iamTag = types.Tag

func outcome(got awsp.Assignment, err error) string {
	if err != nil {
		var ae smithy.APIError
		if errors.As(err, &ae) {
			return "error " + ae.ErrorCode()
		}
		return "error " + err.Error()
	}
	return fmt.Sprintf("%s created=%v listed=%v", got.RoleARN[strings.LastIndexByte(got.RoleARN, '/')+1:], got.Created, got.AlreadyListed)
}

// batch assigns subjects from..to-1 concurrently, yet the same way every run: every caller is
// queued, in order, before the seed's lock is granted, so one lock session places them all
// (group commit) in the same order. A caller counts as queued when Assign first waits on its
// ctx, which it does only after queueing.
func batch(t *testing.T, ctx context.Context, a *awsp.Assigner, lk *gatedLocker, seed awsp.RoleARN, from, to int) []string {
	t.Helper()
	lk.shut()
	out := make([]string, to-from)
	var wg sync.WaitGroup
	for i := from; i < to; i++ {
		queued := make(chan struct{})
		wg.Go(func() {
			got, err := a.Assign(&queuedCtx{Context: ctx, queued: queued}, seed, ns, sa(i))
			if err != nil {
				t.Errorf("assign %d: %v", i, err)
			}
			out[i-from] = fmt.Sprintf("assign %d: %s", i, outcome(got, err))
		})
		select {
		case <-queued:
		case <-time.After(30 * time.Second):
			t.Fatalf("assign %d never queued", i)
		}
	}
	lk.open()
	wg.Wait()
	return out
}

type queuedCtx struct {
	context.Context
	once   sync.Once
	queued chan struct{}
}

func (c *queuedCtx) Done() <-chan struct{} {
	c.once.Do(func() { close(c.queued) })
	return c.Context.Done()
}

// gatedLocker holds Lock while shut.
type gatedLocker struct {
	awsp.Locker
	mu   sync.Mutex
	gate chan struct{}
}

func (g *gatedLocker) shut() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.gate = make(chan struct{})
}

func (g *gatedLocker) open() {
	g.mu.Lock()
	defer g.mu.Unlock()
	close(g.gate)
	g.gate = nil
}

func (g *gatedLocker) Lock(ctx context.Context, key string) (func(), int64, error) {
	g.mu.Lock()
	gate := g.gate
	g.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, 0, ctx.Err()
		}
	}
	return g.Locker.Lock(ctx, key)
}

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// roleView is what the comparison looks at: no RoleId or CreateDate (moto's are random), and
// documents canonicalised, the trust policy also as its subjects.
type roleView struct {
	Name, Path, Description, Boundary string
	MaxSession                        int32
	Subjects                          []string
	Trust                             string
	Tags                              map[string]string
	Inline                            map[string]string
	Attached                          []string
}

func views(t *testing.T, roles []iammodel.RoleSnapshot) []roleView {
	t.Helper()
	var out []roleView
	for _, r := range roles {
		p, err := awsp.ParseTrustPolicy(r.Trust)
		if err != nil {
			t.Fatalf("trust policy of %s: %v", r.Name, err)
		}
		v := roleView{Name: r.Name, Path: r.Path, Description: r.Description, Boundary: r.Boundary, MaxSession: r.MaxSessionDuration,
			Subjects: p.Subjects(), Trust: canonical(t, r.Trust), Tags: r.Tags, Inline: map[string]string{}, Attached: r.Attached}
		for k, doc := range r.Inline {
			v.Inline[k] = canonical(t, doc)
		}
		out = append(out, v)
	}
	slices.SortFunc(out, func(a, b roleView) int { return strings.Compare(a.Name, b.Name) })
	return out
}

func canonical(t *testing.T, doc string) string {
	t.Helper()
	js, err := awsp.CanonicalJSON(doc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

func fmtViews(vs []roleView) []string {
	var out []string
	for _, v := range vs {
		out = append(out, fmt.Sprintf("%+v", v))
	}
	return out
}

// diffLines shows the lines of got and want that differ, by position.
func diffLines(got, want []string) string {
	var b strings.Builder
	for i := range max(len(got), len(want)) {
		g, w := "<none>", "<none>"
		if i < len(got) {
			g = got[i]
		}
		if i < len(want) {
			w = want[i]
		}
		if g != w {
			fmt.Fprintf(&b, "  %d: model %s\n     moto  %s\n", i, g, w)
		}
	}
	return b.String()
}

// apiCalls sends calls the production code never makes on purpose, but must recognise when IAM
// answers them (errors, pagination, the quota), and returns each answer as "code/HTTP status".
func apiCalls(t *testing.T, ctx context.Context, api awsp.IAMAPI, managed string) []string {
	t.Helper()
	var out []string
	note := func(what string, err error) {
		res := "ok"
		var ae smithy.APIError
		var re *awshttp.ResponseError
		if errors.As(err, &ae) && errors.As(err, &re) {
			res = fmt.Sprintf("%s/%d", ae.ErrorCode(), re.HTTPStatusCode())
			if ae.ErrorCode() == "LimitExceeded" {
				res += " " + ae.ErrorMessage()
			}
		} else if err != nil {
			res = err.Error()
		}
		out = append(out, what+": "+res)
	}
	name := func(s string) *string { return aws.String(s) }
	trust := iammodel.TrustPolicy(iammodel.DefaultAccountID, iammodel.DefaultIssuer, subjects(0, 1)...)
	huge := iammodel.TrustPolicy(iammodel.DefaultAccountID, iammodel.DefaultIssuer, subjects(0, 40)...)
	create := func(n string, doc string) error {
		_, err := api.CreateRole(ctx, &iam.CreateRoleInput{RoleName: name(n), Path: name("/api/"), AssumeRolePolicyDocument: name(doc)})
		return err
	}
	_, err := api.GetRole(ctx, &iam.GetRoleInput{RoleName: name("api-none")})
	note("get missing", err)
	for i := range 5 {
		note("create", create(fmt.Sprintf("api-%d", i), trust))
	}
	note("create again", create("api-0", trust))
	note("create oversized", create("api-big", huge))
	_, err = api.UpdateAssumeRolePolicy(ctx, &iam.UpdateAssumeRolePolicyInput{RoleName: name("api-0"), PolicyDocument: name(huge)})
	note("update oversized", err)
	_, err = api.UpdateAssumeRolePolicy(ctx, &iam.UpdateAssumeRolePolicyInput{RoleName: name("api-none"), PolicyDocument: name(trust)})
	note("update missing", err)
	_, err = api.UpdateAssumeRolePolicy(ctx, &iam.UpdateAssumeRolePolicyInput{RoleName: name("api-0"), PolicyDocument: name("{not json")})
	note("update malformed", err)
	_, err = api.PutRolePolicy(ctx, &iam.PutRolePolicyInput{RoleName: name("api-0"), PolicyName: name("p"), PolicyDocument: name(`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:ListBucket","Resource":"*"}]}`)})
	note("put policy", err)
	_, err = api.AttachRolePolicy(ctx, &iam.AttachRolePolicyInput{RoleName: name("api-0"), PolicyArn: name(managed)})
	note("attach", err)
	_, err = api.DeleteRole(ctx, &iam.DeleteRoleInput{RoleName: name("api-0")})
	note("delete with policies", err)
	_, err = api.DetachRolePolicy(ctx, &iam.DetachRolePolicyInput{RoleName: name("api-1"), PolicyArn: name(managed)})
	note("detach unattached", err)
	_, err = api.DeleteRolePolicy(ctx, &iam.DeleteRolePolicyInput{RoleName: name("api-1"), PolicyName: name("p")})
	note("delete missing policy", err)
	_, err = api.GetRolePolicy(ctx, &iam.GetRolePolicyInput{RoleName: name("api-1"), PolicyName: name("p")})
	note("get missing policy", err)
	_, err = api.TagRole(ctx, &iam.TagRoleInput{RoleName: name("api-1"), Tags: []iamTag{{Key: name("a"), Value: name("1")}, {Key: name("b"), Value: name("2")}}})
	note("tag", err)
	_, err = api.TagRole(ctx, &iam.TagRoleInput{RoleName: name("api-1"), Tags: []iamTag{{Key: name("a"), Value: name("3")}}})
	note("retag", err)
	_, err = api.UntagRole(ctx, &iam.UntagRoleInput{RoleName: name("api-1"), TagKeys: []string{"b", "never-set"}})
	note("untag", err)
	_, err = api.UpdateRole(ctx, &iam.UpdateRoleInput{RoleName: name("api-1"), Description: name("d"), MaxSessionDuration: aws.Int32(7200)})
	note("update role", err)
	_, err = api.PutRolePermissionsBoundary(ctx, &iam.PutRolePermissionsBoundaryInput{RoleName: name("api-1"), PermissionsBoundary: name(managed)})
	note("boundary", err)
	// Paging one role at a time: every role exactly once, whatever the order.
	var names []string
	p := iam.NewListRolesPaginator(api, &iam.ListRolesInput{PathPrefix: name("/api/"), MaxItems: aws.Int32(1)})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			note("list", err)
			break
		}
		for _, r := range page.Roles {
			names = append(names, aws.ToString(r.RoleName))
			if r.Tags != nil || r.PermissionsBoundary != nil {
				out = append(out, "ListRoles returned tags or a boundary for "+aws.ToString(r.RoleName))
			}
		}
	}
	slices.Sort(names)
	out = append(out, "listed "+strings.Join(names, ","))
	snaps, err := readRoles(ctx, api, "/api/")
	note("read", err)
	for _, s := range snaps {
		sub, _ := awsp.ParseTrustPolicy(s.Trust)
		out = append(out, fmt.Sprintf("%s %s tags=%v boundary=%s inline=%d attached=%v session=%d desc=%q subjects=%v",
			s.Name, s.Path, s.Tags, s.Boundary, len(s.Inline), s.Attached, s.MaxSessionDuration, s.Description, sub.Subjects()))
	}
	for _, s := range snaps { // clean up, as DeleteRole requires
		for p := range s.Inline {
			_, err = api.DeleteRolePolicy(ctx, &iam.DeleteRolePolicyInput{RoleName: name(s.Name), PolicyName: name(p)})
			note("delete policy", err)
		}
		for _, a := range s.Attached {
			_, err = api.DetachRolePolicy(ctx, &iam.DetachRolePolicyInput{RoleName: name(s.Name), PolicyArn: name(a)})
			note("detach", err)
		}
		_, err = api.DeleteRole(ctx, &iam.DeleteRoleInput{RoleName: name(s.Name)})
		note("delete", err)
	}
	_, err = api.GetRole(ctx, &iam.GetRoleInput{RoleName: name("api-0")})
	note("get deleted", err)
	return out
}

// TestModelFollowsIAM pins where the model follows real IAM rather than moto, and what the
// production code relies on from its errors.
func TestModelFollowsIAM(t *testing.T) {
	ctx := context.Background()
	m := iammodel.New(iammodel.Options{Quota: 600})
	seed, err := iammodel.CreateSeed(ctx, m, iammodel.SeedSetup{Name: "s"})
	if err != nil {
		t.Fatal(err)
	}
	code := func(err error) string {
		var ae smithy.APIError
		if errors.As(err, &ae) {
			return ae.ErrorCode()
		}
		return fmt.Sprint(err)
	}
	// Role names are unique regardless of case (moto lets "S" and "s" coexist).
	_, err = m.CreateRole(ctx, &iam.CreateRoleInput{RoleName: aws.String("S"), AssumeRolePolicyDocument: aws.String(`{"Statement":[]}`)})
	if code(err) != "EntityAlreadyExists" {
		t.Errorf("CreateRole S next to s: %v", err)
	}
	// An omitted MaxSessionDuration is kept (moto resets it to 3600).
	if _, err := m.UpdateRole(ctx, &iam.UpdateRoleInput{RoleName: aws.String("s"), Description: aws.String("d")}); err != nil {
		t.Fatal(err)
	}
	// ListRoles URL-encodes the trust policy (moto sends it as plain JSON) and has no tags.
	list, err := m.ListRoles(ctx, &iam.ListRolesInput{})
	if err != nil || len(list.Roles) != 1 {
		t.Fatalf("ListRoles: %v %v", list, err)
	}
	if r := list.Roles[0]; !strings.HasPrefix(aws.ToString(r.AssumeRolePolicyDocument), "%7B") || r.Tags != nil || r.PermissionsBoundary != nil ||
		aws.ToInt32(r.MaxSessionDuration) != iammodel.DefaultMaxSession || aws.ToString(r.Arn) != seed.String() {
		t.Errorf("ListRoles gave %+v", r)
	}
	// The quota refusal is what trustQuotaError parses, with IAM's HTTP status; it comes before
	// the role is even looked up, as iamproxy answers before moto sees the request.
	_, err = m.UpdateAssumeRolePolicy(ctx, &iam.UpdateAssumeRolePolicyInput{RoleName: aws.String("none"),
		PolicyDocument: aws.String(iammodel.TrustPolicy(iammodel.DefaultAccountID, iammodel.DefaultIssuer, subjects(0, 20)...))})
	var le *types.LimitExceededException
	var re *awshttp.ResponseError
	if !errors.As(err, &le) || !errors.As(err, &re) || re.HTTPStatusCode() != 409 || !strings.Contains(err.Error(), "ACLSizePerRole: 600") {
		t.Errorf("oversized trust policy: %v", err)
	}
	// A call whose ctx ended is never sent, so never counted.
	before := m.Calls()["GetRole"]
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := m.GetRole(cctx, &iam.GetRoleInput{RoleName: aws.String("s")}); !errors.Is(err, context.Canceled) || m.Calls()["GetRole"] != before {
		t.Errorf("GetRole with a cancelled ctx: %v, counted %d", err, m.Calls()["GetRole"]-before)
	}
}
