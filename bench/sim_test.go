package bench

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iam"

	"go.klusters.dev/credential-webhook/bench/iammodel"
	awsp "go.klusters.dev/credential-webhook/providers/aws"
	"go.klusters.dev/credential-webhook/testenv/iamproxy"
	"go.klusters.dev/credential-webhook/testenv/moto"
)

// shortSim is small enough for moto: 40 BackupConfigurations for two hours, sessions that end,
// half of the BackupConfigurations deleted after an hour, so roles empty for good and expire
// (a 20-minute empty grace).
func shortSim() SimConfig {
	return SimConfig{BackupConfigs: 40, Duration: 2 * time.Hour, SessionMin: time.Minute, SessionMax: 3 * time.Minute,
		RetireAt: time.Hour, RetireShare: 0.5, EmptyRoleGrace: 20 * time.Minute, GCInterval: 10 * time.Minute, Sequential: true, Quota: 1024}
}

// The simulation's cloud is checked against moto: the same run, day for day, ends with the same
// roles and makes the same IAM calls per action against both.
func TestSimulationModelAgreesWithMoto(t *testing.T) {
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	ctx := context.Background()
	cfg := shortSim()

	srv := moto.Start(t)
	p, err := iamproxy.New(srv.Endpoint, iamproxy.Options{Quota: cfg.Quota})
	if err != nil {
		t.Fatal(err)
	}
	p.Start(t)
	api := awsp.NewIAMClient(moto.ConfigFor(p.URL))
	motoSeed, err := iammodel.CreateSeed(ctx, api, iammodel.SeedSetup{Name: "sim-seed"})
	if err != nil {
		t.Fatal(err)
	}
	p.ResetCalls()
	onMoto, err := Simulate(ctx, api, proxyCalls{p}, motoSeed, SimStart, cfg)
	if err != nil {
		t.Fatal(err)
	}

	model := iammodel.New(iammodel.Options{Quota: cfg.Quota})
	modelSeed, err := iammodel.CreateSeed(ctx, model, iammodel.SeedSetup{Name: "sim-seed"})
	if err != nil {
		t.Fatal(err)
	}
	model.ResetCalls()
	onModel, err := Simulate(ctx, model, model, modelSeed, SimStart, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("moto:  %s", SimSummary(onMoto))
	t.Logf("model: %s", SimSummary(onModel))

	wm, wo := onMoto.Worst(), onModel.Worst()
	if wm != wo {
		t.Errorf("worst figures differ:\nmoto  %+v\nmodel %+v", wm, wo)
	}
	if onMoto.FinalRoles != onModel.FinalRoles || onMoto.FinalListed != onModel.FinalListed {
		t.Errorf("end state: moto %d roles listing %d, model %d roles listing %d", onMoto.FinalRoles, onMoto.FinalListed, onModel.FinalRoles, onModel.FinalListed)
	}
	for i := range onMoto.Days {
		if !maps.Equal(onMoto.Days[i].IAMCalls, onModel.Days[i].IAMCalls) {
			t.Errorf("day %d IAM calls:\nmoto  %v\nmodel %v", i+1, onMoto.Days[i].IAMCalls, onModel.Days[i].IAMCalls)
		}
	}
	// The run did what it is meant to check: roles were created, emptied and expired.
	calls := onModel.Days[0].IAMCalls
	if calls["CreateRole"] == 0 || calls["DeleteRole"] == 0 || calls["UpdateAssumeRolePolicy"] == 0 || wo.Sessions != 40*12+20*12 {
		t.Errorf("the short run did not exercise creation, removal and expiry: %v, %d sessions", calls, wo.Sessions)
	}
}

type proxyCalls struct{ p *iamproxy.Proxy }

// Calls drops the "iam:" prefix the proxy counts under, as the model names them.
func (c proxyCalls) Calls() map[string]int {
	out := map[string]int{}
	for k, v := range c.p.Calls() {
		if a, ok := strings.CutPrefix(k, "iam:"); ok {
			out[a] = v
		}
	}
	return out
}

// A healthy day with concurrent assignment (as the writer's workers run): nothing refused, roles
// in use close to the ideal, every deleted ServiceAccount collected within a full pass.
func TestSimulationHealthyDay(t *testing.T) {
	cfg := SimConfig{BackupConfigs: 200, Duration: 24 * time.Hour}
	r, err := SimulateOnModel(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Log(SimSummary(r))
	w := r.Worst()
	if w.Sessions != 200*288 || w.Refused != 0 || w.Failed != 0 {
		t.Errorf("%d sessions (want %d), %d refused, %d failed", w.Sessions, 200*288, w.Refused, w.Failed)
	}
	if w.RolesRatio > TargetSimRolesRatio+0.2 || w.RolesRatio < 1 {
		t.Errorf("roles in use %.3f × the ideal", w.RolesRatio)
	}
	if max := DefaultSimConfig().GCInterval + DefaultSimConfig().GCGrace; w.MaxGCLag > max {
		t.Errorf("a deleted ServiceAccount stayed listed %v, more than a full pass after its grace (%v)", w.MaxGCLag, max)
	}
}

// Sessions that never end fill the seed; the first refusal comes only once every role allowed
// exists and none can take another subject.
func TestSimulationLeakHitsTheCeiling(t *testing.T) {
	cfg := SimConfig{BackupConfigs: 100, Duration: 10 * 24 * time.Hour, Leak: 0.05, StopAtLimit: true, RoleCreationLimit: 10}
	r, err := SimulateOnModel(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Log(SimSummary(r))
	if r.LimitHitAt == 0 {
		t.Fatal("the ceiling was never hit")
	}
	if r.FinalRoles != 10 || r.FinalListed < 10*r.Capacity*9/10 {
		t.Errorf("refused with %d roles listing %d subjects (capacity %d each)", r.FinalRoles, r.FinalListed, r.Capacity)
	}
	// 100 × 288 sessions a day, 5 % leaked: 1,440 a day against a ceiling of 10 × capacity.
	if want := time.Duration(float64(10*r.Capacity) / 1440 * float64(24*time.Hour)); r.LimitHitAt > want {
		t.Errorf("ceiling hit after %v, later than the leaked subjects alone would fill it (%v)", r.LimitHitAt, want)
	}
}

// The pool keeps every ServiceAccount of a step in flight together, as a goroutine each did (so
// the Assigner can batch them): no call returns before the last one has started. Its workers
// outlive the step, and the results are counted like the Assigner's errors.
func TestAssignPoolCallsAtOnce(t *testing.T) {
	const n = 200
	var mu sync.Mutex
	started := 0
	all := make(chan struct{})
	p := &assignPool{jobs: make(chan assignJob)}
	p.assign = func(name string) error {
		mu.Lock()
		if started++; started == n {
			close(all)
		}
		mu.Unlock()
		select {
		case <-all:
		case <-time.After(10 * time.Second):
			return errors.New("not every call of the step was in flight at once")
		}
		switch {
		case strings.HasSuffix(name, "-0"):
			return fmt.Errorf("refused: %w", awsp.ErrRoleLimitReached)
		case strings.HasSuffix(name, "-1"):
			return errors.New("failed")
		}
		return nil
	}
	defer p.stop()
	var born []*simSA
	for i := range n {
		born = append(born, &simSA{name: fmt.Sprintf("pool-%03d-%d", i, i%10)})
	}
	if refused, failed := p.assignAll(born, false); refused != n/10 || failed != n/10 {
		t.Fatalf("%d refused, %d failed; want %d each", refused, failed, n/10)
	}
	if p.workers != n {
		t.Errorf("%d workers for %d callers", p.workers, n)
	}
	if refused, failed := p.assignAll(born[2:12], false); refused != 1 || failed != 1 || p.workers != n {
		t.Errorf("again: %d refused, %d failed, %d workers (want 1, 1 and the %d kept)", refused, failed, p.workers, n)
	}
}

// The sample's reading of a trust policy agrees with the production parser on what the Assigner
// writes (full, partly emptied and emptied roles, read back URL-encoded by ListRoles) and on
// documents of other shapes.
func TestListsSubjectAgreesWithParseTrustPolicy(t *testing.T) {
	ctx := context.Background()
	model, seed, a := sampleAssigner(t)
	var subs []string
	for i := range 60 {
		if _, err := a.Assign(ctx, seed, "demo", fmt.Sprintf("sa-%02d", i)); err != nil {
			t.Fatal(err)
		}
		subs = append(subs, fmt.Sprintf("%sdemo:sa-%02d", awsp.SubjectPrefix, i))
	}
	if _, err := a.Remove(ctx, seed, subs[:10]); err != nil {
		t.Fatal(err)
	}
	for _, r := range model.Roles() {
		if r.Name == "sample-seed-0" { // emptied
			tp, err := awsp.ParseTrustPolicy(r.Trust)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := a.Remove(ctx, seed, tp.Subjects()); err != nil {
				t.Fatal(err)
			}
		}
	}
	docs := []string{
		`{"Version":"2012-10-17","Statement":{"Effect":"Allow","Principal":{"Federated":"arn:aws:iam::1:oidc-provider/x"},"Condition":{"StringLike":{"x:sub":"system:serviceaccount:a:b"}}}}`,
		`{"Statement":[{"Effect":"Allow","Principal":"*","Action":"sts:AssumeRole"}]}`,
		`{"Statement":[{"Effect":"Deny","Principal":{"Federated":"arn:aws:iam::1:oidc-provider/x"},"Condition":{"StringLike":{"x:sub":["system:serviceaccount:a:b"]}}}]}`,
		`{"Statement":[{"Effect":"Allow","Principal":{"Federated":"arn:aws:iam::1:oidc-provider/x"},"Condition":{"StringEquals":{"x:SUB":["` + noSubject + `"]}}}]}`,
	}
	empty := 0
	out, err := model.ListRoles(ctx, &iam.ListRolesInput{})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range out.Roles {
		docs = append(docs, aws.ToString(r.AssumeRolePolicyDocument)) // URL-encoded
	}
	for _, r := range model.Roles() {
		docs = append(docs, r.Trust)
		if strings.Contains(r.Trust, noSubject) {
			empty++
		}
	}
	if empty == 0 || len(out.Roles) < 3 {
		t.Fatalf("%d roles, %d empty: the case of an emptied role is missing", len(out.Roles), empty)
	}
	for _, doc := range docs {
		got, err := listsSubject(doc)
		tp, perr := awsp.ParseTrustPolicy(doc)
		if want := tp.Len() > 0; got != want || (err == nil) != (perr == nil) {
			t.Errorf("listsSubject(%.80s…) = %v, %v; ParseTrustPolicy: %v, %v", doc, got, err, want, perr)
		}
	}
}

// Held, the gate keeps lock sessions from starting (a caller whose context ends gets its error);
// with it, a step's 200 concurrent ServiceAccounts are placed in one round: each role written
// once, however the scheduler interleaves the callers (a straggler aside).
func TestGatedLockerPlacesAStepInOneRound(t *testing.T) {
	ctx := context.Background()
	g := &gatedLocker{LocalLocker: awsp.NewLocalLocker(), open: closedChan()}
	g.hold()
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if _, _, err := g.Lock(short, "k"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Lock while held: %v, want the context's end", err)
	}
	locked := make(chan struct{})
	go func() {
		if unlock, _, err := g.Lock(ctx, "k"); err == nil {
			unlock()
		}
		close(locked)
	}()
	select {
	case <-locked:
		t.Fatal("Lock returned while the gate was held")
	case <-time.After(20 * time.Millisecond):
	}
	g.release()
	<-locked

	model := iammodel.New(iammodel.Options{})
	seed, err := iammodel.CreateSeed(ctx, model, iammodel.SeedSetup{Name: "gate-seed"})
	if err != nil {
		t.Fatal(err)
	}
	allow, err := awsp.ParseAllowlist(seed.String())
	if err != nil {
		t.Fatal(err)
	}
	gate := &gatedLocker{LocalLocker: awsp.NewLocalLocker(), open: closedChan()}
	a := awsp.NewAssigner(model, gate, awsp.Config{Seeds: allow}, nil)
	p := newAssignPool(ctx, a, seed)
	p.gate = gate
	defer p.stop()
	var born []*simSA
	for i := range 200 {
		born = append(born, &simSA{name: fmt.Sprintf("gate-%03d", i)})
	}
	model.ResetCalls()
	if refused, failed := p.assignAll(born, false); refused != 0 || failed != 0 {
		t.Fatalf("%d refused, %d failed", refused, failed)
	}
	calls := model.Calls()
	roles := len(model.Roles()) - 1 // less the seed
	// A caller preempted between the gate's last look and the queue may join a second round
	// (see assignAll); ungated, such a step took dozens of rounds on a busy machine.
	if writes := calls["CreateRole"] + calls["UpdateAssumeRolePolicy"]; writes > roles+2 {
		t.Errorf("%d trust writes for %d roles: the step was not placed in one round (%v)", writes, roles, calls)
	}
}

// listRolesOnly hides the model's Trusts: the sampler reads it with ListRoles, as moto.
type listRolesOnly struct{ awsp.IAMAPI }

// The sample counts the same roles in use whether it reads the model's documents directly
// (Trusts) or through ListRoles, before and after roles change, fill and empty, and counts no
// IAM call through Trusts.
func TestInUseSamplerReadsTrustsAsListRoles(t *testing.T) {
	ctx := context.Background()
	model, seed, a := sampleAssigner(t)
	var direct, listed inUseSampler
	check := func(want int) {
		t.Helper()
		before := model.Calls()["ListRoles"]
		got, err := direct.rolesInUse(ctx, model, seed)
		if err != nil || got != want || model.Calls()["ListRoles"] != before {
			t.Fatalf("through Trusts: %d roles in use (%v, %d ListRoles), want %d and no call", got, err, model.Calls()["ListRoles"]-before, want)
		}
		if got, err := listed.rolesInUse(ctx, listRolesOnly{model}, seed); err != nil || got != want {
			t.Fatalf("through ListRoles: %d roles in use (%v), want %d", got, err, want)
		}
	}
	check(0)
	var subs []string
	for i := range 60 {
		if _, err := a.Assign(ctx, seed, "demo", fmt.Sprintf("sa-%02d", i)); err != nil {
			t.Fatal(err)
		}
		subs = append(subs, fmt.Sprintf("%sdemo:sa-%02d", awsp.SubjectPrefix, i))
	}
	roles := 0
	for _, r := range model.Roles() {
		if awsp.IsDerivedFrom(r.ARN, seed.String()) {
			roles++
		}
	}
	if roles < 2 {
		t.Fatalf("%d derived roles, want several", roles)
	}
	check(roles)
	check(roles) // unchanged documents: the remembered verdicts
	if _, err := a.Remove(ctx, seed, subs); err != nil {
		t.Fatal(err)
	}
	check(0) // every role emptied, none deleted yet
	if _, err := a.Assign(ctx, seed, "demo", "sa-again"); err != nil {
		t.Fatal(err)
	}
	check(1)
}

// subjectTemplates answers as listsSubject does for documents the Assigner writes, with every
// subject list, and for documents of other shapes: two subject lists, a list in a Deny
// statement, lists with escapes, whitespace, numbers, the placeholder alone or twice, empty.
func TestSubjectTemplatesAgreeWithListsSubject(t *testing.T) {
	ctx := context.Background()
	model, seed, a := sampleAssigner(t)
	for i := range 30 {
		if _, err := a.Assign(ctx, seed, "demo", fmt.Sprintf("sa-%02d", i)); err != nil {
			t.Fatal(err)
		}
	}
	var docs []string
	for _, r := range model.Roles() {
		docs = append(docs, r.Trust, url.PathEscape(r.Trust))
	}
	fed := `{"Federated":"arn:aws:iam::1:oidc-provider/x"}`
	docs = append(docs,
		`{"Statement":[{"Effect":"Allow","Principal":`+fed+`,"Condition":{"StringLike":{"x:sub":["`+noSubject+`"]}}},{"Effect":"Allow","Principal":`+fed+`,"Condition":{"StringLike":{"x:sub":["system:serviceaccount:a:b"]}}}]}`,
		`{"Statement":[{"Effect":"Deny","Principal":`+fed+`,"Condition":{"StringLike":{"x:sub":["system:serviceaccount:a:b"]}}}]}`,
		`{"Statement":[{"Effect":"Allow","Principal":`+fed+`,"Condition":{"StringLike":{"x:sub":["system:serviceaccount:a:b"],"x:aud":"sts.amazonaws.com"}}},{"Effect":"Allow","Principal":`+fed+`,"Condition":{"StringLike":{"y:sub":"system:serviceaccount:c:d"}}}]}`,
		`{"Statement":[{"Effect":"Allow","Principal":"*","Condition":{"StringLike":{"x:sub":["system:serviceaccount:a:b"]}}}]}`,
	)
	lists := []string{
		`[]`, `["` + noSubject + `"]`, `["` + noSubject + `","` + noSubject + `"]`, `["system:serviceaccount:a:b"]`,
		`["` + noSubject + `","system:serviceaccount:a:b"]`, `["a,b]c"]`, `["x\"y"]`, `["credential-webhook:no-subjec\u0074"]`,
		`[ "system:serviceaccount:a:b" ]`, `[1]`, `["é"]`, `[""]`, `["a"`, `["a"]]`,
	}
	var all []string
	for _, doc := range docs {
		all = append(all, doc)
		js, err := awsp.DecodePolicyDocument(doc)
		if err != nil {
			t.Fatal(err)
		}
		i := strings.Index(js, subjectList)
		if i < 0 {
			continue
		}
		start := i + len(subjectList) - 1
		end := start + strings.IndexByte(js[start:], ']') + 1
		for _, l := range lists {
			all = append(all, js[:start]+l+js[end:])
		}
	}
	rng := rand.New(rand.NewPCG(3, 5))
	var tmpl subjectTemplates
	for round := range 4 {
		rng.Shuffle(len(all), func(i, j int) { all[i], all[j] = all[j], all[i] })
		for _, doc := range all {
			got, err := tmpl.listsSubject(doc)
			want, werr := listsSubject(doc)
			if got != want || (err == nil) != (werr == nil) {
				t.Errorf("round %d: templates %v, %v; listsSubject %v, %v for %.300s", round, got, err, want, werr, doc)
			}
		}
	}
	if len(tmpl.known) == 0 {
		t.Error("no template learnt from the Assigner's documents")
	}
}

// sampleAssigner is an Assigner over a fresh in-memory IAM with one seed, sample-seed, allowed.
func sampleAssigner(t *testing.T) (*iammodel.IAM, awsp.RoleARN, *awsp.Assigner) {
	t.Helper()
	model := iammodel.New(iammodel.Options{})
	seed, err := iammodel.CreateSeed(context.Background(), model, iammodel.SeedSetup{Name: "sample-seed"})
	if err != nil {
		t.Fatal(err)
	}
	allow, err := awsp.ParseAllowlist(seed.String())
	if err != nil {
		t.Fatal(err)
	}
	return model, seed, awsp.NewAssigner(model, awsp.NewLocalLocker(), awsp.Config{Seeds: allow}, nil)
}

// The simulation's session names are the fmt.Sprintf they replaced, digit for digit.
func TestSessionName(t *testing.T) {
	for _, c := range []struct {
		config int
		tick   int64
	}{{0, 0}, {7, 1796083200}, {42, 1}, {999, 1796083500}, {1000, 12}, {12345, -3}} {
		if got, want := sessionName(c.config, c.tick), fmt.Sprintf("sample-backup-%04d-session-%d", c.config, c.tick); got != want {
			t.Errorf("sessionName(%d, %d) = %q, want %q", c.config, c.tick, got, want)
		}
	}
}

// mergeByDeletion keeps the live sessions ordered by deletion time, as sorting them all did.
func TestMergeByDeletion(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var sorted []*simSA
	for step := range 50 {
		var add []*simSA
		for i := range rng.IntN(6) {
			add = append(add, &simSA{name: fmt.Sprint(step, "-", i), deleted: time.Duration(rng.IntN(20)) * time.Second})
		}
		all := append(slices.Clone(sorted), add...)
		sorted = mergeByDeletion(sorted, add)
		if len(sorted) != len(all) || !slices.IsSortedFunc(sorted, func(x, y *simSA) int { return cmp.Compare(x.deleted, y.deleted) }) {
			t.Fatalf("step %d: %d sessions, want %d, sorted %v", step, len(sorted), len(all), slices.IsSortedFunc(sorted, func(x, y *simSA) int { return cmp.Compare(x.deleted, y.deleted) }))
		}
		for _, sa := range all {
			if !slices.Contains(sorted, sa) {
				t.Fatalf("step %d: %s lost", step, sa.name)
			}
		}
		sorted = sorted[min(len(sorted), rng.IntN(4)):] // some end
	}
}
