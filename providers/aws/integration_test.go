package aws

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iam"
	"github.com/aws/aws-sdk-go-v2/service/iam/types"
	corev1 "k8s.io/api/core/v1"

	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/sweeper"
	"go.klusters.dev/credential-webhook/testenv/iamproxy"
	"go.klusters.dev/credential-webhook/testenv/moto"
)

const testIssuer = "https://oidc.eks.us-east-1.amazonaws.com/id/5C5E1A2B3C4D5E6F7A8B9C0D1E2F3A4B"

// env is one seed role in moto, reached through an iamproxy that enforces the quota and counts.
type env struct {
	t      *testing.T
	moto   *moto.Server
	proxy  *iamproxy.Proxy
	direct *iam.Client // straight to moto: setup and assertions, never counted
	api    *iam.Client // through the proxy, as the webhook talks to IAM
	seed   RoleARN
}

func newEnv(t *testing.T, srv *moto.Server, seedName string, quota int) *env {
	t.Helper()
	ctx := context.Background()
	p, err := iamproxy.New(srv.Endpoint, iamproxy.Options{Quota: quota})
	if err != nil {
		t.Fatal(err)
	}
	p.Start(t)
	arn, err := moto.CreateSeedRole(ctx, moto.ConfigFor(srv.Endpoint), seedName, "/kubestash/", testIssuer)
	if err != nil {
		t.Fatal(err)
	}
	seed, err := ParseRoleARN(arn)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, moto: srv, proxy: p, direct: iam.NewFromConfig(moto.ConfigFor(srv.Endpoint)), api: NewIAMClient(moto.ConfigFor(p.URL)), seed: seed}
	p.ResetCalls()
	return e
}

// motoEnv is newEnv on a moto of its own, with the process's AWS environment pointed at it
// (moto.Server.SetEnv: nothing in the test may fall back to real AWS or instance metadata).
func motoEnv(t *testing.T, seedName string, quota int) *env {
	t.Helper()
	srv := moto.Start(t)
	srv.SetEnv(t)
	return newEnv(t, srv, seedName, quota)
}

func (e *env) assigner(locker Locker, cfg Config) *Assigner {
	return e.assignerOver(e.api, locker, cfg)
}

// assignerOver is assigner calling IAM through api (a test's wrapper of e.api).
func (e *env) assignerOver(api IAMAPI, locker Locker, cfg Config) *Assigner {
	if cfg.Seeds.String() == "" {
		cfg.Seeds, _ = ParseAllowlist("arn:aws:iam::" + moto.AccountID + ":role/kubestash/*")
	}
	log := slog.New(slog.NewTextHandler(testWriter{e.t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	return NewAssigner(api, locker, cfg, log)
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

func sessionSA(i int) string {
	return fmt.Sprintf("sample-backup-daemon-demo-session-%d", 1778072138+i*3600)
}

func sessionSubject(i int) string { return SubjectPrefix + "demo:" + sessionSA(i) }

// trustOf reads a role's subjects straight from moto.
func (e *env) trustOf(name string) TrustPolicy {
	e.t.Helper()
	out, err := e.direct.GetRole(context.Background(), &iam.GetRoleInput{RoleName: aws.String(name)})
	if err != nil {
		e.t.Fatalf("GetRole %s: %v", name, err)
	}
	p, err := ParseTrustPolicy(aws.ToString(out.Role.AssumeRolePolicyDocument))
	if err != nil {
		e.t.Fatal(err)
	}
	return p
}

// capacity is how many session subjects one derived role of the seed holds under quota.
func (e *env) capacity(quota int) int {
	e.t.Helper()
	seed := e.trustOf(e.seed.Name)
	var names []string
	for i := range 200 {
		names = append(names, sessionSubject(i))
	}
	n, err := TheoreticalMax(seed, names, quota)
	if err != nil {
		e.t.Fatal(err)
	}
	return n
}

func (e *env) calls() map[string]int {
	out := map[string]int{}
	for k, v := range e.proxy.Calls() {
		if v > 0 {
			out[k] = v
		}
	}
	return out
}

func derivedName(seed RoleARN, i int) string {
	d, _ := Derived(seed, i)
	return d.Name
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestAssignerAgainstMoto(t *testing.T) {
	srv := moto.Start(t)
	srv.SetEnv(t) // nothing in this process may fall back to real AWS or instance metadata

	t.Run("first assignment creates a full clone", func(t *testing.T) {
		e := newEnv(t, srv, "clone-seed", 2048)
		ctx := ctxT(t)
		a := e.assigner(NewLocalLocker(), Config{})
		got, err := a.Assign(ctx, e.seed, "demo", sessionSA(0))
		if err != nil {
			t.Fatal(err)
		}
		want := "arn:aws:iam::" + moto.AccountID + ":role/kubestash/clone-seed-0"
		if got.RoleARN != want || !got.Created || got.AlreadyListed {
			t.Fatalf("Assign = %+v, want created %s", got, want)
		}
		t.Logf("IAM calls, first assignment of a cold process: %v", e.calls())

		seed, err := readRole(ctx, e.direct, e.seed.Name, true)
		if err != nil {
			t.Fatal(err)
		}
		d, err := readRole(ctx, e.direct, "clone-seed-0", true)
		if err != nil {
			t.Fatal(err)
		}
		if d.arn.Path != "/kubestash/" || d.maxSession != moto.SeedMaxSessionDuration || d.description != seed.description || d.description == "" {
			t.Errorf("derived role path %q, max session %d, description %q", d.arn.Path, d.maxSession, d.description)
		}
		if !slices.Equal(d.attached, seed.attached) || len(d.attached) == 0 {
			t.Errorf("attached policies %v, seed has %v", d.attached, seed.attached)
		}
		if !maps.Equal(d.inline, seed.inline) || len(d.inline) == 0 {
			t.Errorf("inline policies %v, seed has %v", d.inline, seed.inline)
		}
		if d.tags[moto.SeedTagKey] != moto.SeedTagValue || d.tags[annotations.SeedTag] != e.seed.String() {
			t.Errorf("tags %v", d.tags)
		}
		if subs := d.trust.Subjects(); !slices.Equal(subs, []string{sessionSubject(0)}) {
			t.Errorf("derived subjects %v; the seed's own subject must not be copied", subs)
		}
		js, _ := d.trust.JSON()
		if !strings.Contains(js, moto.IssuerHost(testIssuer)+`:aud":"sts.amazonaws.com"`) || !strings.Contains(js, `"Federated":"arn:aws:iam::`+moto.AccountID+`:oidc-provider/`) {
			t.Errorf("derived trust policy lost the provider or the audience: %s", js)
		}
	})

	t.Run("spill, idempotency, steady state, reuse of freed space", func(t *testing.T) {
		e := newEnv(t, srv, "spill-seed", 2048)
		ctx := ctxT(t)
		a := e.assigner(NewLocalLocker(), Config{})
		per := e.capacity(2048)
		t.Logf("session subjects per derived role at quota 2048: %d (%d characters each)", per, len(sessionSubject(0)))
		if per < 18 || per > 24 {
			t.Fatalf("capacity %d is implausible for the KubeStash fixture", per)
		}
		for i := range per {
			got, err := a.Assign(ctx, e.seed, "demo", sessionSA(i))
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasSuffix(got.RoleARN, "/spill-seed-0") || got.Created != (i == 0) {
				t.Fatalf("subject %d: %+v", i, got)
			}
			if i == 1 {
				e.proxy.ResetCalls()
			}
		}
		// Steady state: warm cache, this replica wrote last.
		if c := e.calls(); !maps.Equal(c, map[string]int{"iam:UpdateAssumeRolePolicy": per - 2}) {
			t.Fatalf("steady-state calls for %d assignments: %v", per-2, c)
		}
		if size, _ := e.trustOf("spill-seed-0").Size(); size > 2048 {
			t.Fatalf("role 0 is %d characters", size)
		}

		e.proxy.ResetCalls()
		got, err := a.Assign(ctx, e.seed, "demo", sessionSA(per))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasSuffix(got.RoleARN, "/spill-seed-1") || !got.Created {
			t.Fatalf("subject %d did not spill to a new role: %+v", per, got)
		}
		t.Logf("IAM calls for an assignment that creates a role (seed cached): %v", e.calls())
		if c := e.calls(); c["iam:CreateRole"] != 1 || c["iam:UpdateAssumeRolePolicy"] != 0 || c["iam:ListRoles"] != 0 {
			t.Errorf("new-role calls: %v", c)
		}
		if e.proxy.Rejections() != nil {
			t.Errorf("the quota was measured wrong, IAM refused: %v", e.proxy.Rejections())
		}

		// Idempotent: no write, same role.
		e.proxy.ResetCalls()
		again, err := a.Assign(ctx, e.seed, "demo", sessionSA(3))
		if err != nil || !again.AlreadyListed || !strings.HasSuffix(again.RoleARN, "/spill-seed-0") {
			t.Fatalf("re-assign = %+v, %v", again, err)
		}
		if c := e.calls(); len(c) != 0 {
			t.Errorf("re-assigning a listed subject made calls: %v", c)
		}
		if n := len(e.trustOf("spill-seed-0").Subjects()); n != per {
			t.Errorf("role 0 lists %d subjects, want %d", n, per)
		}

		// Dry run: no write, and it knows where things are.
		e.proxy.ResetCalls()
		if arn, known, err := a.Plan(ctx, e.seed, "demo", sessionSA(3)); err != nil || !known || !strings.HasSuffix(arn, "-0") {
			t.Errorf("Plan listed = %s %v %v", arn, known, err)
		}
		if arn, known, err := a.Plan(ctx, e.seed, "demo", sessionSA(1000)); err != nil || known || !strings.HasSuffix(arn, "-1") {
			t.Errorf("Plan new = %s %v %v", arn, known, err)
		}
		for k := range e.calls() {
			if !strings.HasPrefix(k, "iam:Get") && !strings.HasPrefix(k, "iam:List") {
				t.Errorf("Plan called %s", k)
			}
		}

		// Removal frees space in role 0, which the next subject reuses.
		removed, err := a.Remove(ctx, e.seed, []string{sessionSubject(2), sessionSubject(5), "system:serviceaccount:demo:never-assigned"})
		if err != nil || removed != 2 {
			t.Fatalf("Remove = %d, %v", removed, err)
		}
		for _, i := range []int{per + 1, per + 2} {
			got, err := a.Assign(ctx, e.seed, "demo", sessionSA(i))
			if err != nil || !strings.HasSuffix(got.RoleARN, "/spill-seed-0") {
				t.Fatalf("after removal, subject %d went to %+v, %v", i, got, err)
			}
		}
		subs := e.trustOf("spill-seed-0").Subjects()
		if slices.Contains(subs, sessionSubject(2)) || !slices.Contains(subs, sessionSubject(per+2)) || len(subs) != per {
			t.Errorf("role 0 after reuse: %d subjects %v", len(subs), subs)
		}

		// The roles table sees what IAM has.
		roles, err := a.Roles(ctx, e.seed)
		if err != nil {
			t.Fatal(err)
		}
		if len(roles) != 2 || len(roles[0].Subjects) != per || len(roles[1].Subjects) != 1 || !roles[0].Owned || roles[0].Quota != 2048 || roles[0].Fill < 0.9 {
			t.Errorf("Roles = %+v", roles)
		}
		var b strings.Builder
		WriteRolesTable(&b, roles)
		t.Logf("roles table:\n%s", b.String())
	})

	t.Run("a replica that only plans reads the roles again once its view is old", func(t *testing.T) {
		// The sweeper leader writes; the other replica answers half the reviews from the view
		// it loaded once. Before planViewMaxAge it kept planning into a role the leader had
		// filled long ago, and every such plan gave the ServiceAccount's first Pods a role that
		// never trusted them.
		e := newEnv(t, srv, "stale-plan-seed", 2048)
		ctx := ctxT(t)
		locker := NewLocalLocker()
		var mu sync.Mutex
		now := time.Now()
		clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
		writer, planner := e.assigner(locker, Config{Clock: clock}), e.assigner(locker, Config{Clock: clock})
		plan := func(a *Assigner, i int) string {
			t.Helper()
			arn, known, err := a.Plan(ctx, e.seed, "demo", sessionSA(i))
			if err != nil || known {
				t.Fatalf("Plan(%d) = %s, known %v, %v", i, arn, known, err)
			}
			return arn[strings.LastIndexByte(arn, '-')+1:]
		}
		if got := plan(planner, 5000); got != "0" {
			t.Fatalf("first plan on a fresh seed: role %s, want 0", got)
		}
		per := e.capacity(2048)
		for i := range per + 1 {
			if _, err := writer.Assign(ctx, e.seed, "demo", sessionSA(i)); err != nil {
				t.Fatal(err)
			}
		}
		e.proxy.ResetCalls()
		if got := plan(planner, 5001); got != "0" {
			t.Fatalf("within planViewMaxAge the view is not read again: role %s, want the old view's 0", got)
		}
		if c := e.calls(); len(c) != 0 {
			t.Fatalf("a plan on a young view called IAM: %v", c)
		}
		mu.Lock()
		now = now.Add(planViewMaxAge + time.Second)
		mu.Unlock()
		deadline := time.Now().Add(20 * time.Second)
		for i := 5002; plan(planner, i) != "1"; i++ {
			if time.Now().After(deadline) {
				t.Fatalf("an old view was never read again: plans still say role 0, which lists %d subjects (calls %v)", len(e.trustOf("stale-plan-seed-0").Subjects()), e.calls())
			}
			time.Sleep(20 * time.Millisecond)
		}
		for k := range e.calls() {
			if !strings.HasPrefix(k, "iam:Get") && !strings.HasPrefix(k, "iam:List") {
				t.Errorf("reading the view again called %s", k)
			}
		}
		if n := e.calls()["iam:ListRoles"]; n != 1 {
			t.Errorf("the view was read %d times, want once until it is old again", n)
		}

		// On the writer, a refresh leaves its cache (its own writes, at a known generation)
		// alone: its next lock session lists nothing again.
		st := writer.state(e.seed)
		plan(writer, 6000)
		deadline = time.Now().Add(20 * time.Second)
		for {
			st.plan.mu.Lock()
			done := !st.plan.refreshing
			st.plan.mu.Unlock()
			if done {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the writer's refresh never ended")
			}
			time.Sleep(20 * time.Millisecond)
		}
		e.proxy.ResetCalls()
		if _, err := writer.Assign(ctx, e.seed, "demo", sessionSA(per+1)); err != nil {
			t.Fatal(err)
		}
		if c := e.calls(); c["iam:ListRoles"] != 0 || c["iam:GetRole"] != 0 {
			t.Errorf("after a refresh of its plan view, the writer's next assignment read the roles again: %v", c)
		}
	})

	t.Run("forged reviews naming seeds IAM lacks cost one read per seed, for a bounded number of seeds", func(t *testing.T) {
		// Reviews prove nothing, and the allowlist kubestash/* admits any name under it.
		e := newEnv(t, srv, "forged-seed-anchor", 2048)
		ctx := ctxT(t)
		var mu sync.Mutex
		now := time.Now()
		clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
		a := e.assigner(NewLocalLocker(), Config{Clock: clock})
		a.maxPlanSeeds = 3
		missing := func(i int) RoleARN {
			r, err := ParseRoleARN(fmt.Sprintf("arn:aws:iam::%s:role/kubestash/forged%dx", moto.AccountID, i))
			if err != nil {
				t.Fatal(err)
			}
			return r
		}
		e.proxy.ResetCalls()
		if _, _, err := a.Reserve(ctx, missing(0), "demo", sessionSA(0)); err == nil {
			t.Fatal("a plan for a seed IAM does not have succeeded")
		}
		first := e.calls()
		if len(first) == 0 {
			t.Fatal("the first plan for a seed read nothing")
		}
		e.proxy.ResetCalls()
		for i := range 20 {
			if _, _, err := a.Reserve(ctx, missing(0), "demo", sessionSA(i)); err == nil {
				t.Fatal("a plan for a seed IAM does not have succeeded")
			}
		}
		if c := e.calls(); len(c) != 0 {
			t.Errorf("20 more reviews for a seed that could not be read called IAM: %v", c)
		}
		mu.Lock()
		now = now.Add(planLoadRetry + time.Second)
		mu.Unlock()
		if _, _, err := a.Reserve(ctx, missing(0), "demo", sessionSA(0)); err == nil {
			t.Fatal("a plan for a seed IAM does not have succeeded")
		}
		if c := e.calls(); len(c) == 0 {
			t.Error("after planLoadRetry, the seed was not read again")
		}
		for i := 1; i < 3; i++ {
			_, _, _ = a.Reserve(ctx, missing(i), "demo", sessionSA(0))
		}
		e.proxy.ResetCalls()
		_, _, err := a.Reserve(ctx, missing(3), "demo", sessionSA(0))
		if !errors.Is(err, ErrTooManySeeds) {
			t.Errorf("a fourth seed: %v, want ErrTooManySeeds", err)
		}
		if c := e.calls(); len(c) != 0 {
			t.Errorf("a seed past the bound called IAM: %v", c)
		}
		if Permanent(err) {
			t.Error("ErrTooManySeeds is permanent: the claim would be dropped instead of left to the writer")
		}
	})

	t.Run("another replica's write is seen through the generation", func(t *testing.T) {
		e := newEnv(t, srv, "gen-seed", 2048)
		ctx := ctxT(t)
		locker := NewLocalLocker()
		a1, a2 := e.assigner(locker, Config{}), e.assigner(locker, Config{})
		if _, err := a1.Assign(ctx, e.seed, "demo", sessionSA(0)); err != nil {
			t.Fatal(err)
		}
		if _, err := a2.Assign(ctx, e.seed, "demo", sessionSA(1)); err != nil {
			t.Fatal(err)
		}
		// a1's cache predates a2's write; the generation tells it to reload before writing.
		e.proxy.ResetCalls()
		if _, err := a1.Assign(ctx, e.seed, "demo", sessionSA(2)); err != nil {
			t.Fatal(err)
		}
		if c := e.calls(); c["iam:ListRoles"] != 1 || c["iam:UpdateAssumeRolePolicy"] != 1 {
			t.Errorf("stale replica calls: %v", c)
		}
		if subs := e.trustOf("gen-seed-0").Subjects(); len(subs) != 3 {
			t.Fatalf("a subject was lost: %v", subs)
		}
	})

	t.Run("a collection after a deletion sees another replica's write through the generation", func(t *testing.T) {
		e := newEnv(t, srv, "gcgen-seed", 2048)
		ctx := ctxT(t)
		locker := NewLocalLocker()
		leader, other := e.assigner(locker, Config{}), e.assigner(locker, Config{})
		for i := range 2 {
			if _, err := leader.Assign(ctx, e.seed, "demo", sessionSA(i)); err != nil {
				t.Fatal(err)
			}
		}
		// The other replica writes a subject the leader's view lacks; its ServiceAccount is
		// then deleted, and so is one the leader wrote.
		if _, err := other.Assign(ctx, e.seed, "demo", sessionSA(2)); err != nil {
			t.Fatal(err)
		}
		gone := map[string]bool{sessionSA(1): true, sessionSA(2): true}
		e.proxy.ResetCalls()
		col := Collector{Assigner: leader}
		lockedDuringLookup := false
		n, err := col.CollectScope(ctx, sweeper.Scope{Key: e.seed.String(), Claim: SeedClaim(e.seed)}, func(_, name string) (*corev1.ServiceAccount, bool) {
			// The sweeper's lookup may call the apiserver: it must never run under the seed lock.
			lctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
			defer cancel()
			if unlock, _, err := locker.Lock(lctx, e.seed.String()); err != nil {
				lockedDuringLookup = true
			} else {
				unlock()
			}
			return nil, !gone[name]
		})
		if lockedDuringLookup {
			t.Error("the lookup ran while the seed's lock was held")
		}
		if err != nil || n != 2 {
			t.Fatalf("collected %d, %v; want both deleted ServiceAccounts' subjects", n, err)
		}
		if subs := e.trustOf("gcgen-seed-0").Subjects(); len(subs) != 1 || subs[0] != mustSubject("demo", sessionSA(0)) {
			t.Fatalf("after the collection: %v", subs)
		}
		// One reload; the leader's own deleted subject is written out first, then the one the
		// reload revealed: two writes to one role, the price of judging outside the lock.
		if c := e.calls(); c["iam:ListRoles"] != 1 || c["iam:UpdateAssumeRolePolicy"] != 2 || c["iam:GetRole"] > 1 {
			t.Errorf("stale leader's collection: %v (want one reload and two writes)", c)
		}
		// Current now: the next collection reads nothing, and with nothing gone writes nothing.
		e.proxy.ResetCalls()
		if n, err := col.CollectScope(ctx, sweeper.Scope{Key: e.seed.String(), Claim: SeedClaim(e.seed)}, func(string, string) (*corev1.ServiceAccount, bool) { return nil, true }); err != nil || n != 0 {
			t.Fatalf("second collection: %d, %v", n, err)
		}
		if c := e.calls(); len(c) != 0 {
			t.Errorf("a collection with a current view and nothing gone cost IAM %v", c)
		}
	})

	t.Run("concurrent replicas lose no subject", func(t *testing.T) {
		e := newEnv(t, srv, "race-seed", 2048)
		ctx := ctxT(t)
		locker := NewLocalLocker()
		replicas := []*Assigner{e.assigner(locker, Config{}), e.assigner(locker, Config{})}
		per := e.capacity(2048)
		total := 2*per + 3 // three roles
		var wg sync.WaitGroup
		results := make([]Assignment, total)
		errs := make([]error, total)
		for i := range total {
			wg.Go(func() {
				results[i], errs[i] = replicas[i%2].Assign(ctx, e.seed, "demo", sessionSA(i))
			})
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Fatal(err)
		}
		seen := map[string]string{}
		for r := range 3 {
			name := derivedName(e.seed, r)
			for _, s := range e.trustOf(name).Subjects() {
				if prev, dup := seen[s]; dup {
					t.Errorf("%s listed in %s and %s", s, prev, name)
				}
				seen[s] = name
			}
		}
		for i := range total {
			role, ok := seen[sessionSubject(i)]
			if !ok {
				t.Errorf("subject %d lost", i)
			} else if !strings.HasSuffix(results[i].RoleARN, "/"+role) {
				t.Errorf("subject %d: Assign said %s, IAM lists it in %s", i, results[i].RoleARN, role)
			}
		}
		if len(seen) != total {
			t.Errorf("%d subjects in IAM, want %d", len(seen), total)
		}
	})

	t.Run("callers that queue behind a lock session are committed together", func(t *testing.T) {
		e := newEnv(t, srv, "batch-seed", 2048)
		ctx := ctxT(t)
		locker := NewLocalLocker()
		a := e.assigner(locker, Config{})
		per := e.capacity(2048)
		if _, err := a.Assign(ctx, e.seed, "demo", sessionSA(0)); err != nil { // warm: role 0 exists
			t.Fatal(err)
		}
		// Another replica holds the seed's lock while the callers arrive.
		unlock, _, err := locker.Lock(ctx, e.seed.String())
		if err != nil {
			t.Fatal(err)
		}
		total := per + 5 // fills role 0, spills into a new role 1
		results := make([]Assignment, total)
		errs := make([]error, total)
		var wg sync.WaitGroup
		for i := 1; i < total; i++ {
			wg.Go(func() { results[i], errs[i] = a.Assign(ctx, e.seed, "demo", sessionSA(i)) })
		}
		waitQueued(a, e.seed, total-1)
		e.proxy.ResetCalls()
		unlock()
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Fatal(err)
		}
		// One trust write per role: role 0 gets its remaining space in one UpdateAssumeRolePolicy,
		// role 1 is created already listing the rest. One by one it would be total-2 updates.
		c := e.calls()
		if c["iam:UpdateAssumeRolePolicy"] != 1 || c["iam:CreateRole"] != 1 {
			t.Errorf("IAM calls for %d queued assignments: %v; want 1 UpdateAssumeRolePolicy and 1 CreateRole", total-1, c)
		}
		t.Logf("IAM calls for %d assignments queued behind one lock session: %v", total-1, c)
		seen := map[string]string{}
		for r := range 2 {
			name := derivedName(e.seed, r)
			for _, s := range e.trustOf(name).Subjects() {
				if prev, dup := seen[s]; dup {
					t.Errorf("%s listed in %s and %s", s, prev, name)
				}
				seen[s] = name
			}
		}
		created := 0
		for i := 1; i < total; i++ {
			if role, ok := seen[sessionSubject(i)]; !ok || !strings.HasSuffix(results[i].RoleARN, "/"+role) {
				t.Errorf("subject %d: Assign said %+v, IAM lists it in %q", i, results[i], role)
			}
			if results[i].Created {
				created++
			}
		}
		if len(seen) != total || created != 1 {
			t.Errorf("%d subjects in IAM (want %d), %d assignments reported a created role (want 1)", len(seen), total, created)
		}
	})

	t.Run("a caller that gives up leaves the batch to the others", func(t *testing.T) {
		e := newEnv(t, srv, "leave-seed", 2048)
		ctx := ctxT(t)
		locker := NewLocalLocker()
		a := e.assigner(locker, Config{})
		unlock, _, err := locker.Lock(ctx, e.seed.String())
		if err != nil {
			t.Fatal(err)
		}
		short, cancel := context.WithCancel(ctx)
		shortErr := make(chan error, 1)
		go func() { _, err := a.Assign(short, e.seed, "demo", sessionSA(1)); shortErr <- err }()
		got := make(chan error, 1)
		var res Assignment
		go func() { var err error; res, err = a.Assign(ctx, e.seed, "demo", sessionSA(2)); got <- err }()
		waitQueued(a, e.seed, 2)
		cancel()
		if err := <-shortErr; !errors.Is(err, context.Canceled) {
			t.Errorf("the caller that left got %v, want context.Canceled", err)
		}
		unlock()
		if err := <-got; err != nil || !strings.HasSuffix(res.RoleARN, "/leave-seed-0") {
			t.Fatalf("the caller that stayed: %+v, %v", res, err)
		}
		if subs := e.trustOf("leave-seed-0").Subjects(); !slices.Equal(subs, []string{sessionSubject(2)}) {
			t.Errorf("role 0 lists %v; the subject of the caller that left must not be written", subs)
		}
	})

	t.Run("IAM 409 means full: learn the quota and move on", func(t *testing.T) {
		e := newEnv(t, srv, "q409-seed", 2048)
		ctx := ctxT(t)
		a := e.assigner(NewLocalLocker(), Config{Quota: 4096}) // believes a bigger quota than IAM enforces
		per := e.capacity(2048)
		for i := range per + 1 {
			got, err := a.Assign(ctx, e.seed, "demo", sessionSA(i))
			if err != nil {
				t.Fatalf("subject %d: %v", i, err)
			}
			wantRole := "/q409-seed-0"
			if i == per {
				wantRole = "/q409-seed-1"
			}
			if !strings.HasSuffix(got.RoleARN, wantRole) {
				t.Fatalf("subject %d went to %s, want %s", i, got.RoleARN, wantRole)
			}
		}
		rej := e.proxy.Rejections()
		if len(rej) != 1 || rej[0].Code != "LimitExceeded" {
			t.Fatalf("rejections %+v, want exactly one LimitExceeded", rej)
		}
		// Learned: the next overflow of role 1 is predicted, not tried.
		e.proxy.ResetCalls()
		for i := per + 1; i < 2*per+1; i++ {
			if _, err := a.Assign(ctx, e.seed, "demo", sessionSA(i)); err != nil {
				t.Fatal(err)
			}
		}
		if rej := e.proxy.Rejections(); len(rej) != 0 {
			t.Errorf("quota not learned, IAM refused again: %+v", rej)
		}
	})

	t.Run("quota read once from GetAccountSummary", func(t *testing.T) {
		e := newEnv(t, srv, "summary-seed", 4096)
		ctx := ctxT(t)
		a := e.assigner(NewLocalLocker(), Config{})
		per := e.capacity(4096)
		for i := range per + 1 {
			if _, err := a.Assign(ctx, e.seed, "demo", sessionSA(i)); err != nil {
				t.Fatal(err)
			}
		}
		if c := e.calls(); c["iam:GetAccountSummary"] != 1 || c["iam:CreateRole"] != 2 {
			t.Errorf("calls %v: want one GetAccountSummary and 2 roles for %d subjects at 4096", c, per+1)
		}
		if n := len(e.trustOf("summary-seed-0").Subjects()); n != per {
			t.Errorf("role 0 holds %d, want %d at quota 4096", n, per)
		}
	})

	t.Run("half-created role is completed, not duplicated", func(t *testing.T) {
		e := newEnv(t, srv, "half-seed", 2048)
		ctx := ctxT(t)
		// Another process died right after CreateRole: tagged, trusted, no policies.
		if _, err := e.direct.CreateRole(ctx, &iam.CreateRoleInput{
			RoleName: aws.String("half-seed-0"), Path: aws.String("/kubestash/"),
			AssumeRolePolicyDocument: aws.String(moto.TrustPolicy("arn:aws:iam::"+moto.AccountID+":oidc-provider/"+moto.IssuerHost(testIssuer), testIssuer, sessionSubject(0))),
			Tags:                     []types.Tag{{Key: aws.String(annotations.SeedTag), Value: aws.String(e.seed.String())}},
		}); err != nil {
			t.Fatal(err)
		}
		a := e.assigner(NewLocalLocker(), Config{})
		got, err := a.Assign(ctx, e.seed, "demo", sessionSA(0))
		if err != nil || !got.AlreadyListed || !strings.HasSuffix(got.RoleARN, "/half-seed-0") {
			t.Fatalf("Assign = %+v, %v", got, err)
		}
		d, err := readRole(ctx, e.direct, "half-seed-0", false)
		if err != nil {
			t.Fatal(err)
		}
		if len(d.attached) != 1 || len(d.inline) != 1 {
			t.Errorf("not completed: attached %v inline %v", d.attached, d.inline)
		}
		// Same, in-process: policy attachment fails (IAM 5xx until the deadline), then recovers.
		e.proxy.SetFaults(iamproxy.Faults{ServerErrorRate: 1, Actions: []string{"iam:AttachRolePolicy"}})
		per := e.capacity(2048)
		for i := 1; i < per; i++ {
			if _, err := a.Assign(ctx, e.seed, "demo", sessionSA(i)); err != nil {
				t.Fatal(err)
			}
		}
		short, cancel := context.WithTimeout(ctx, 1500*time.Millisecond)
		_, err = a.Assign(short, e.seed, "demo", sessionSA(per))
		cancel()
		if err == nil {
			t.Fatal("Assign succeeded although AttachRolePolicy always fails")
		}
		if f := e.proxy.Faults().ServerErrors["iam:AttachRolePolicy"]; f < 2 {
			t.Errorf("AttachRolePolicy 5xx was tried %d times; the SDK retryer should retry until the deadline", f)
		}
		e.proxy.SetFaults(iamproxy.Faults{})
		// The retry may join the session whose attaching is still failing (its caller just
		// left): it then waits for that and gets its error, as the subject stays pending; the
		// next attempt (the sweeper's finisher, in production) completes the role.
		for attempt := 1; ; attempt++ {
			got, err = a.Assign(ctx, e.seed, "demo", sessionSA(per))
			if err == nil || attempt == 3 {
				break
			}
			t.Logf("retry %d: %v", attempt, err)
		}
		if err != nil || !strings.HasSuffix(got.RoleARN, "/half-seed-1") {
			t.Fatalf("retry = %+v, %v", got, err)
		}
		if d, err := readRole(ctx, e.direct, "half-seed-1", false); err != nil || len(d.attached) != 1 || len(d.inline) != 1 {
			t.Errorf("half-seed-1 not completed: %+v %v", d, err)
		}
		if _, err := e.direct.GetRole(ctx, &iam.GetRoleInput{RoleName: aws.String("half-seed-2")}); !isNoSuchEntity(err) {
			t.Errorf("a duplicate role was created: %v", err)
		}
	})

	t.Run("throttling is retried", func(t *testing.T) {
		e := newEnv(t, srv, "throttle-seed", 2048)
		ctx := ctxT(t)
		a := e.assigner(NewLocalLocker(), Config{})
		e.proxy.SetFaults(iamproxy.Faults{ThrottleRate: 0.5, Actions: []string{"iam:UpdateAssumeRolePolicy", "iam:CreateRole", "iam:ListRoles"}, Seed: 7})
		for i := range 4 {
			if _, err := a.Assign(ctx, e.seed, "demo", sessionSA(i)); err != nil {
				t.Fatalf("subject %d: %v", i, err)
			}
		}
		throttled := 0
		for _, n := range e.proxy.Faults().Throttled {
			throttled += n
		}
		if throttled == 0 {
			t.Fatal("no throttling was injected; the test proves nothing")
		}
		if subs := e.trustOf("throttle-seed-0").Subjects(); len(subs) != 4 {
			t.Errorf("subjects after throttling: %v", subs)
		}
		t.Logf("%d throttled requests retried", throttled)
	})

	t.Run("a hung attempt is abandoned and retried", func(t *testing.T) {
		e := newEnv(t, srv, "hung-seed", 2048)
		ctx := ctxT(t)
		// A tight attempt bound for the test; IAM answers within it unless the proxy holds the
		// answer back (half of the trust policy writes, for 30 s, after applying them).
		e.api = NewIAMClient(moto.ConfigFor(e.proxy.URL), WithAttemptTimeout(500*time.Millisecond))
		a := e.assigner(NewLocalLocker(), Config{})
		e.proxy.SetFaults(iamproxy.Faults{Latency: 30 * time.Second, SlowRate: 0.5, LateAnswer: true, Actions: []string{"iam:UpdateAssumeRolePolicy"}, Seed: 5})
		defer e.proxy.SetFaults(iamproxy.Faults{})
		for i := range 6 {
			// Well under the 30 s a held answer takes: only abandoning the attempt can succeed.
			short, cancel := context.WithTimeout(ctx, 10*time.Second)
			_, err := a.Assign(short, e.seed, "demo", sessionSA(i))
			cancel()
			if err != nil {
				t.Fatalf("subject %d: %v", i, err)
			}
		}
		if d := e.proxy.Faults().Delayed["iam:UpdateAssumeRolePolicy"]; d == 0 {
			t.Fatal("no answer was held back; the test proves nothing")
		} else {
			t.Logf("%d held-back UpdateAssumeRolePolicy attempts abandoned and retried", d)
		}
		if subs := e.trustOf("hung-seed-0").Subjects(); len(subs) != 6 {
			t.Errorf("subjects after hung attempts: %v", subs)
		}
	})

	t.Run("a role named like ours but without the seed tag is never written", func(t *testing.T) {
		e := newEnv(t, srv, "foreign-seed", 2048)
		ctx := ctxT(t)
		foreignDoc := moto.TrustPolicy("arn:aws:iam::"+moto.AccountID+":oidc-provider/"+moto.IssuerHost(testIssuer), testIssuer, "system:serviceaccount:other:x")
		if _, err := e.direct.CreateRole(ctx, &iam.CreateRoleInput{
			RoleName: aws.String("foreign-seed-0"), Path: aws.String("/kubestash/"), AssumeRolePolicyDocument: aws.String(foreignDoc),
		}); err != nil {
			t.Fatal(err)
		}
		// Same name under another path: the name is taken account-wide.
		if _, err := e.direct.CreateRole(ctx, &iam.CreateRoleInput{
			RoleName: aws.String("foreign-seed-1"), Path: aws.String("/elsewhere/"), AssumeRolePolicyDocument: aws.String(foreignDoc),
		}); err != nil {
			t.Fatal(err)
		}
		a := e.assigner(NewLocalLocker(), Config{})
		got, err := a.Assign(ctx, e.seed, "other", "x") // even a subject the foreign role lists
		if err != nil || !strings.HasSuffix(got.RoleARN, "/foreign-seed-2") || !got.Created {
			t.Fatalf("Assign = %+v, %v", got, err)
		}
		if _, err := a.Assign(ctx, e.seed, "demo", sessionSA(1)); err != nil {
			t.Fatal(err)
		}
		if subs := e.trustOf("foreign-seed-0").Subjects(); !slices.Equal(subs, []string{"system:serviceaccount:other:x"}) {
			t.Errorf("foreign role was modified: %v", subs)
		}
		if n, err := a.Remove(ctx, e.seed, []string{"system:serviceaccount:other:x"}); err != nil || n != 1 {
			t.Errorf("Remove = %d, %v (only our role's entry)", n, err)
		}
		if subs := e.trustOf("foreign-seed-0").Subjects(); len(subs) != 1 {
			t.Errorf("Remove touched the foreign role: %v", subs)
		}
		roles, err := a.Roles(ctx, e.seed)
		if err != nil || len(roles) != 2 || roles[0].Owned || !roles[1].Owned {
			t.Errorf("Roles = %+v, %v", roles, err)
		}
	})

	t.Run("limits and refusals", func(t *testing.T) {
		e := newEnv(t, srv, "limit-seed", 2048)
		ctx := ctxT(t)
		a := e.assigner(NewLocalLocker(), Config{RoleCreationLimit: 1})
		per := e.capacity(2048)
		for i := range per {
			if _, err := a.Assign(ctx, e.seed, "demo", sessionSA(i)); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := a.Assign(ctx, e.seed, "demo", sessionSA(per)); !errors.Is(err, ErrRoleLimitReached) {
			t.Errorf("past the limit: %v", err)
		}
		if _, _, err := a.Plan(ctx, e.seed, "demo", sessionSA(per)); !errors.Is(err, ErrRoleLimitReached) {
			t.Errorf("Plan past the limit: %v", err)
		}
		e.proxy.ResetCalls()
		other, _ := ParseRoleARN("arn:aws:iam::" + moto.AccountID + ":role/other/limit-seed")
		if _, err := a.Assign(ctx, other, "demo", "x"); !errors.Is(err, ErrNotAllowed) {
			t.Errorf("seed outside the allowlist: %v", err)
		}
		if c := e.calls(); len(c) != 0 {
			t.Errorf("a refused seed cost IAM calls: %v", c)
		}
		if _, err := a.Assign(ctx, e.seed, "demo", "evil-*"); !errors.Is(err, ErrInvalidSubject) {
			t.Errorf("wildcard name: %v", err)
		}
		none := NewAssigner(e.api, NewLocalLocker(), Config{}, nil)
		if _, err := none.Assign(ctx, e.seed, "demo", "x"); !errors.Is(err, ErrNotAllowed) {
			t.Errorf("empty allowlist must allow nothing: %v", err)
		}
		// An ARN whose path does not match the real role (names are unique per account).
		moved, _ := ParseRoleARN("arn:aws:iam::" + moto.AccountID + ":role/kubestash/team/limit-seed")
		if _, err := a.Assign(ctx, moved, "demo", "x"); !errors.Is(err, ErrSeedMismatch) {
			t.Errorf("seed at the wrong path: %v", err)
		}
	})

	t.Run("sync from seed repairs drift; empty roles can be deleted", func(t *testing.T) {
		e := newEnv(t, srv, "sync-seed", 2048)
		ctx := ctxT(t)
		a := e.assigner(NewLocalLocker(), Config{})
		if _, err := a.Assign(ctx, e.seed, "demo", sessionSA(0)); err != nil {
			t.Fatal(err)
		}
		// The seed changes: another managed policy, a new inline document, longer sessions, a tag.
		pol, err := e.direct.CreatePolicy(ctx, &iam.CreatePolicyInput{PolicyName: aws.String("sync-extra"), PolicyDocument: aws.String(`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:GetBucketLocation","Resource":"*"}]}`)})
		if err != nil {
			t.Fatal(err)
		}
		must := func(_ any, err error) {
			t.Helper()
			if err != nil {
				t.Fatal(err)
			}
		}
		must(e.direct.AttachRolePolicy(ctx, &iam.AttachRolePolicyInput{RoleName: aws.String("sync-seed"), PolicyArn: pol.Policy.Arn}))
		must(e.direct.PutRolePolicy(ctx, &iam.PutRolePolicyInput{RoleName: aws.String("sync-seed"), PolicyName: aws.String("sync-seed-inline"), PolicyDocument: aws.String(`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:ListBucket","Resource":"*"}]}`)}))
		must(e.direct.UpdateRole(ctx, &iam.UpdateRoleInput{RoleName: aws.String("sync-seed"), MaxSessionDuration: aws.Int32(10800), Description: aws.String("changed")}))
		must(e.direct.TagRole(ctx, &iam.TagRoleInput{RoleName: aws.String("sync-seed"), Tags: []types.Tag{{Key: aws.String("cost-center"), Value: aws.String("42")}}}))
		// And someone widened the derived role by hand.
		must(e.direct.PutRolePolicy(ctx, &iam.PutRolePolicyInput{RoleName: aws.String("sync-seed-0"), PolicyName: aws.String("hand-made"), PolicyDocument: aws.String(`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}`)}))

		if _, err := a.SyncFromSeed(ctx, e.seed); err != nil {
			t.Fatal(err)
		}
		seed, _ := readRole(ctx, e.direct, "sync-seed", true)
		d, err := readRole(ctx, e.direct, "sync-seed-0", true)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(d.attached, seed.attached) || !maps.Equal(d.inline, seed.inline) || d.maxSession != 10800 || d.description != "changed" ||
			d.tags["cost-center"] != "42" || d.tags[annotations.SeedTag] != e.seed.String() {
			t.Errorf("not re-synced:\nseed    %+v\nderived %+v", seed, d)
		}
		if subs := d.trust.Subjects(); len(subs) != 1 {
			t.Errorf("sync changed subjects: %v", subs)
		}
		// A second sync finds nothing to do.
		e.proxy.ResetCalls()
		if _, err := a.SyncFromSeed(ctx, e.seed); err != nil {
			t.Fatal(err)
		}
		for k := range e.calls() {
			if !strings.HasPrefix(k, "iam:Get") && !strings.HasPrefix(k, "iam:List") {
				t.Errorf("idempotent sync wrote: %s", k)
			}
		}

		if n, err := a.Remove(ctx, e.seed, []string{sessionSubject(0)}); err != nil || n != 1 {
			t.Fatalf("Remove = %d, %v", n, err)
		}
		if subs := e.trustOf("sync-seed-0").Subjects(); len(subs) != 0 {
			t.Fatalf("emptied role lists %v", subs)
		}
		deleted, err := a.DeleteEmpty(ctx, e.seed)
		if err != nil || len(deleted) != 1 {
			t.Fatalf("DeleteEmpty = %v, %v", deleted, err)
		}
		if _, err := e.direct.GetRole(ctx, &iam.GetRoleInput{RoleName: aws.String("sync-seed-0")}); !isNoSuchEntity(err) {
			t.Errorf("role still exists: %v", err)
		}
		got, err := a.Assign(ctx, e.seed, "demo", sessionSA(1))
		if err != nil || !got.Created || !strings.HasSuffix(got.RoleARN, "/sync-seed-0") {
			t.Errorf("after deletion: %+v, %v", got, err)
		}
	})

	// A trust policy edited outside this server (the console, or whoever holds its credentials:
	// UpdateAssumeRolePolicy is allowed on every derived role) leaves the lock generation as it
	// was, so the warm cache of the replica that wrote the role knows nothing of it. The full
	// pass is there for exactly that: it removes a subject added that way (CollectScope) and a
	// trust statement added that way (MaintainScope: drift from the seed), deciding on what IAM
	// holds rather than on the cache.
	t.Run("the full pass takes out trust added from outside, whatever the cache", func(t *testing.T) {
		e := newEnv(t, srv, "outside-seed", 2048)
		ctx := ctxT(t)
		a := e.assigner(NewLocalLocker(), Config{})
		if _, err := a.Assign(ctx, e.seed, "demo", sessionSA(0)); err != nil {
			t.Fatal(err)
		}
		const role = "outside-seed-0"
		edit := func(change func(p map[string]any)) {
			t.Helper()
			out, err := e.direct.GetRole(ctx, &iam.GetRoleInput{RoleName: aws.String(role)})
			if err != nil {
				t.Fatal(err)
			}
			doc, err := DecodePolicyDocument(aws.ToString(out.Role.AssumeRolePolicyDocument))
			if err != nil {
				t.Fatal(err)
			}
			var p map[string]any
			if err := json.Unmarshal([]byte(doc), &p); err != nil {
				t.Fatal(err)
			}
			change(p)
			b, err := json.Marshal(p)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := e.direct.UpdateAssumeRolePolicy(ctx, &iam.UpdateAssumeRolePolicyInput{RoleName: aws.String(role), PolicyDocument: aws.String(string(b))}); err != nil {
				t.Fatal(err)
			}
		}
		col := Collector{Assigner: a}
		scope := sweeper.Scope{Key: e.seed.String(), Claim: SeedClaim(e.seed), Full: true}
		onlyOurs := func(_, name string) (*corev1.ServiceAccount, bool) { return nil, name == sessionSA(0) }

		intruder := SubjectPrefix + "demo:intruder"
		edit(func(p map[string]any) {
			cond := p["Statement"].([]any)[0].(map[string]any)["Condition"].(map[string]any)
			for k, v := range cond["StringLike"].(map[string]any) {
				cond["StringLike"].(map[string]any)[k] = append(v.([]any), intruder)
			}
		})
		if n, err := col.CollectScope(ctx, scope, onlyOurs); err != nil || n != 1 {
			t.Errorf("full collection removed %d subjects (%v), want the one added from outside", n, err)
		}
		if subs := e.trustOf(role).Subjects(); !slices.Equal(subs, []string{sessionSubject(0)}) {
			t.Errorf("after the full collection the role trusts %v", subs)
		}

		const stranger = "arn:aws:iam::999999999999:root"
		edit(func(p map[string]any) {
			p["Statement"] = append(p["Statement"].([]any), map[string]any{
				"Effect": "Allow", "Action": "sts:AssumeRole", "Principal": map[string]any{"AWS": stranger}})
		})
		if err := col.MaintainScope(ctx, scope); err != nil {
			t.Fatal(err)
		}
		out, err := e.direct.GetRole(ctx, &iam.GetRoleInput{RoleName: aws.String(role)})
		if err != nil {
			t.Fatal(err)
		}
		if doc, _ := DecodePolicyDocument(aws.ToString(out.Role.AssumeRolePolicyDocument)); strings.Contains(doc, stranger) {
			t.Errorf("after the full pass's drift repair the role still trusts another account: %s", doc)
		}
		if subs := e.trustOf(role).Subjects(); !slices.Equal(subs, []string{sessionSubject(0)}) {
			t.Errorf("drift repair changed the subjects: %v", subs)
		}
	})
}

// The hardening of issue 16 against moto: derived roles always carry a permissions boundary, a
// derived role is never a seed, and trust can be pinned to this cluster's OIDC provider.
func TestSeedHardeningAgainstMoto(t *testing.T) {
	srv := moto.Start(t)
	srv.SetEnv(t)
	boundaryOf := func(e *env, name string) string {
		t.Helper()
		d, err := readRole(context.Background(), e.direct, name, false)
		if err != nil {
			t.Fatal(err)
		}
		return d.boundary
	}
	refused := func(t *testing.T, err error) {
		t.Helper()
		if !errors.Is(err, ErrSeedRefused) || !errors.Is(err, ErrNotAllowed) || !Permanent(err) {
			t.Fatalf("want a permanent ErrSeedRefused, got %v", err)
		}
	}

	t.Run("derived roles get the seed's boundary, or the configured one", func(t *testing.T) {
		e := newEnv(t, srv, "bound-seed", 2048)
		ctx := ctxT(t)
		if _, err := e.assigner(NewLocalLocker(), Config{}).Assign(ctx, e.seed, "demo", sessionSA(0)); err != nil {
			t.Fatal(err)
		}
		if got, want := boundaryOf(e, "bound-seed-0"), moto.SeedBoundaryARN(e.seed.String()); got != want {
			t.Errorf("derived role boundary %q, want the seed's %q", got, want)
		}
		// Configured: a different boundary wins, and drift sync moves existing roles to it
		// (PutRolePermissionsBoundary; nothing ever deletes a boundary).
		pol, err := e.direct.CreatePolicy(ctx, &iam.CreatePolicyInput{PolicyName: aws.String("central-boundary"), PolicyDocument: aws.String(moto.BoundaryDocument)})
		if err != nil {
			t.Fatal(err)
		}
		central := aws.ToString(pol.Policy.Arn)
		a := e.assigner(NewLocalLocker(), Config{PermissionsBoundary: central, RoleCreationLimit: 5})
		if _, err := a.SyncFromSeed(ctx, e.seed); err != nil {
			t.Fatal(err)
		}
		if got := boundaryOf(e, "bound-seed-0"); got != central {
			t.Errorf("after sync the boundary is %q, want %q", got, central)
		}
		// A boundary removed by hand comes back when a process next completes the role (once per
		// process: a fresh one here) or syncs it.
		if _, err := e.direct.DeleteRolePermissionsBoundary(ctx, &iam.DeleteRolePermissionsBoundaryInput{RoleName: aws.String("bound-seed-0")}); err != nil {
			t.Fatal(err)
		}
		a = e.assigner(NewLocalLocker(), Config{PermissionsBoundary: central, RoleCreationLimit: 5})
		if _, err := a.Assign(ctx, e.seed, "demo", sessionSA(1)); err != nil {
			t.Fatal(err)
		}
		if got := boundaryOf(e, "bound-seed-0"); got != central {
			t.Errorf("a half-bounded role was written without its boundary restored: %q", got)
		}
	})

	t.Run("a seed without a boundary is refused unless one is configured", func(t *testing.T) {
		e := newEnv(t, srv, "loose-seed", 2048)
		ctx := ctxT(t)
		if _, err := e.direct.DeleteRolePermissionsBoundary(ctx, &iam.DeleteRolePermissionsBoundaryInput{RoleName: aws.String("loose-seed")}); err != nil {
			t.Fatal(err)
		}
		e.proxy.ResetCalls()
		_, err := e.assigner(NewLocalLocker(), Config{}).Assign(ctx, e.seed, "demo", sessionSA(0))
		refused(t, err)
		if !strings.Contains(err.Error(), "permissions boundary") {
			t.Errorf("error does not say why: %v", err)
		}
		if _, _, err := e.assigner(NewLocalLocker(), Config{}).Reserve(ctx, e.seed, "demo", sessionSA(0)); !errors.Is(err, ErrSeedRefused) {
			t.Errorf("Reserve: %v", err)
		}
		for k := range e.calls() {
			if !strings.HasPrefix(k, "iam:Get") && !strings.HasPrefix(k, "iam:List") {
				t.Errorf("a refused seed cost a write: %s", k)
			}
		}
		boundary := moto.SeedBoundaryARN(e.seed.String())
		if _, err := e.assigner(NewLocalLocker(), Config{PermissionsBoundary: boundary}).Assign(ctx, e.seed, "demo", sessionSA(0)); err != nil {
			t.Fatal(err)
		}
		if got := boundaryOf(e, "loose-seed-0"); got != boundary {
			t.Errorf("boundary %q, want the configured %q", got, boundary)
		}
	})

	t.Run("a derived role is never a seed", func(t *testing.T) {
		e := newEnv(t, srv, "parent-seed", 2048)
		ctx := ctxT(t)
		a := e.assigner(NewLocalLocker(), Config{})
		got, err := a.Assign(ctx, e.seed, "demo", sessionSA(0))
		if err != nil {
			t.Fatal(err)
		}
		derived, _ := ParseRoleARN(got.RoleARN)
		e.proxy.ResetCalls()
		_, err = a.Assign(ctx, derived, "demo", sessionSA(1))
		refused(t, err)
		if _, _, err := a.Reserve(ctx, derived, "demo", sessionSA(1)); !errors.Is(err, ErrSeedRefused) {
			t.Errorf("Reserve on a derived role: %v", err)
		}
		if c := e.calls(); len(c) != 0 {
			t.Errorf("refusing a seed named like a derived role cost IAM calls: %v", c)
		}
		// Named unlike a derived role, but tagged as one (say, renamed by hand): refused on GetRole.
		doc := moto.TrustPolicy("arn:aws:iam::"+moto.AccountID+":oidc-provider/"+moto.IssuerHost(testIssuer), testIssuer, moto.SeedSubject)
		if _, err := e.direct.CreateRole(ctx, &iam.CreateRoleInput{
			RoleName: aws.String("tagged-seed"), Path: aws.String("/kubestash/"), AssumeRolePolicyDocument: aws.String(doc),
			PermissionsBoundary: aws.String(moto.SeedBoundaryARN(e.seed.String())),
			Tags:                []types.Tag{{Key: aws.String(annotations.SeedTag), Value: aws.String(e.seed.String())}},
		}); err != nil {
			t.Fatal(err)
		}
		tagged, _ := ParseRoleARN("arn:aws:iam::" + moto.AccountID + ":role/kubestash/tagged-seed")
		_, err = a.Assign(ctx, tagged, "demo", sessionSA(1))
		refused(t, err)
		if _, err := e.direct.GetRole(ctx, &iam.GetRoleInput{RoleName: aws.String("tagged-seed-0")}); !isNoSuchEntity(err) {
			t.Errorf("a derived role of a derived role was created: %v", err)
		}
	})

	t.Run("trust pinned to this cluster's OIDC provider", func(t *testing.T) {
		e := newEnv(t, srv, "pinned-seed", 2048)
		ctx := ctxT(t)
		const otherIssuer = "https://oidc.other-cluster.example/id/OTHER"
		if _, err := moto.CreateSeedRole(ctx, moto.ConfigFor(srv.Endpoint), "other-cluster-seed", "/elsewhere/", otherIssuer); err != nil {
			t.Fatal(err) // creates the other cluster's OIDC provider
		}
		here := "arn:aws:iam::" + moto.AccountID + ":oidc-provider/" + moto.IssuerHost(testIssuer)
		there := "arn:aws:iam::" + moto.AccountID + ":oidc-provider/" + moto.IssuerHost(otherIssuer)
		var a1, a2 map[string]any
		_ = json.Unmarshal([]byte(moto.TrustPolicy(here, testIssuer, moto.SeedSubject)), &a1)
		_ = json.Unmarshal([]byte(moto.TrustPolicy(there, otherIssuer, moto.SeedSubject)), &a2)
		a1["Statement"] = append(a1["Statement"].([]any), a2["Statement"].([]any)...)
		two, _ := json.Marshal(a1)
		if _, err := e.direct.UpdateAssumeRolePolicy(ctx, &iam.UpdateAssumeRolePolicyInput{RoleName: aws.String("pinned-seed"), PolicyDocument: aws.String(string(two))}); err != nil {
			t.Fatal(err)
		}
		issuer, err := NormalizeIssuer(testIssuer)
		if err != nil {
			t.Fatal(err)
		}
		a := e.assigner(NewLocalLocker(), Config{OIDCIssuer: issuer})
		got, err := a.Assign(ctx, e.seed, "demo", sessionSA(0))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := a.Assign(ctx, e.seed, "demo", sessionSA(1)); err != nil {
			t.Fatal(err)
		}
		derived, _ := ParseRoleARN(got.RoleARN)
		out, err := e.direct.GetRole(ctx, &iam.GetRoleInput{RoleName: aws.String(derived.Name)})
		if err != nil {
			t.Fatal(err)
		}
		js, _ := DecodePolicyDocument(aws.ToString(out.Role.AssumeRolePolicyDocument))
		pinned, err := ParseTrustPolicyFor(js, here)
		if err != nil || !slices.Equal(pinned.Subjects(), []string{sessionSubject(0), sessionSubject(1)}) {
			t.Errorf("subjects of this cluster's statement: %v, %v\n%s", pinned.Subjects(), err, js)
		}
		if theirs, _ := ParseTrustPolicyFor(js, there); !slices.Equal(theirs.Subjects(), []string{moto.SeedSubject}) {
			t.Errorf("the other cluster's statement must be the seed's, unchanged; it lists %v\n%s", theirs.Subjects(), js)
		}
		roles, err := a.Roles(ctx, e.seed)
		if err != nil || len(roles) != 1 || !slices.Equal(roles[0].Subjects, []string{sessionSubject(0), sessionSubject(1)}) {
			t.Errorf("Roles = %+v, %v", roles, err)
		}

		// A seed with no statement for the pinned issuer is refused, clearly.
		elsewhere := e.assigner(NewLocalLocker(), Config{OIDCIssuer: "oidc.third.example/id/C"})
		_, err = elsewhere.Assign(ctx, e.seed, "demo", sessionSA(2))
		if !errors.Is(err, ErrSeedNotOIDC) || !Permanent(err) || !strings.Contains(err.Error(), "oidc-provider/oidc.third.example/id/C") {
			t.Errorf("seed without a statement for the pinned issuer: %v", err)
		}
	})
}
