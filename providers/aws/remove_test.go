package aws

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iam"
	"github.com/aws/aws-sdk-go-v2/service/iam/types"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/sweeper"
)

func TestExpiryVerdict(t *testing.T) {
	now := time.Date(2026, 5, 6, 12, 0, 0, 0, time.UTC)
	const grace = time.Hour
	empty := emptyRole{Owned: true, MarkKnown: true}
	with := func(f func(*emptyRole)) emptyRole {
		r := empty
		f(&r)
		return r
	}
	for _, tc := range []struct {
		name  string
		role  emptyRole
		grace time.Duration
		want  emptyVerdict
	}{
		{"empty, not marked yet: mark", empty, grace, markRole},
		{"empty within the grace: keep", with(func(r *emptyRole) { r.Since = now.Add(-59 * time.Minute) }), grace, keepRole},
		{"empty exactly the grace: delete", with(func(r *emptyRole) { r.Since = now.Add(-grace) }), grace, expireRole},
		{"empty longer than the grace: delete", with(func(r *emptyRole) { r.Since = now.Add(-25 * time.Hour) }), grace, expireRole},
		{"deletion disabled (grace 0): keep, write nothing", with(func(r *emptyRole) { r.Since = now.Add(-25 * time.Hour) }), 0, keepRole},
		{"deletion disabled, not marked: no mark either", empty, 0, keepRole},
		{"has a subject: keep", with(func(r *emptyRole) { r.Subjects = 1 }), grace, keepRole},
		{"has a subject and an old mark: unmark", with(func(r *emptyRole) { r.Subjects = 3; r.Since = now.Add(-25 * time.Hour) }), grace, unmarkRole},
		{"foreign (no seed tag): never touched", with(func(r *emptyRole) { r.Owned = false; r.Since = now.Add(-25 * time.Hour) }), grace, keepRole},
		{"foreign and unmarked: not even marked", with(func(r *emptyRole) { r.Owned = false }), grace, keepRole},
		{"unreadable trust policy: keep", with(func(r *emptyRole) { r.Broken = true; r.Since = now.Add(-25 * time.Hour) }), grace, keepRole},
		{"tags not read: keep", with(func(r *emptyRole) { r.MarkKnown = false; r.Since = time.Time{} }), grace, keepRole},
		{"promised to a subject by admission: keep", with(func(r *emptyRole) { r.Reserved = true; r.Since = now.Add(-25 * time.Hour) }), grace, keepRole},
		{"mark from the future: mark again", with(func(r *emptyRole) { r.Since = now.Add(time.Hour) }), grace, markRole},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := expiryVerdict(tc.role, now, tc.grace); got != tc.want {
				t.Errorf("expiryVerdict(%+v, grace %s) = %d, want %d", tc.role, tc.grace, got, tc.want)
			}
		})
	}
}

func TestMarkOf(t *testing.T) {
	at := time.Date(2026, 5, 6, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		tags map[string]string
		want emptyMark
	}{
		{nil, emptyMark{known: true}},
		{map[string]string{EmptySinceTag: "2026-05-06T12:00:00Z"}, emptyMark{known: true, since: at}},
		{map[string]string{EmptySinceTag: "yesterday"}, emptyMark{known: true}}, // marked again: later, never sooner
	} {
		if got := markOf(tc.tags); got.known != tc.want.known || !got.since.Equal(tc.want.since) {
			t.Errorf("markOf(%v) = %+v, want %+v", tc.tags, got, tc.want)
		}
	}
}

// oneSubjectQuota is a trust policy quota under which a derived role of e's seed holds exactly
// one session subject, so every Assign of a new subject makes its own role.
func oneSubjectQuota(e *env) int {
	e.t.Helper()
	one, err := DeriveTrustPolicy(e.trustOf(e.seed.Name), []string{sessionSubject(0)})
	if err != nil {
		e.t.Fatal(err)
	}
	size, err := one.Size()
	if err != nil {
		e.t.Fatal(err)
	}
	return size + 10
}

func (e *env) tagsOf(name string) (map[string]string, bool) {
	e.t.Helper()
	out, err := e.direct.GetRole(context.Background(), &iam.GetRoleInput{RoleName: aws.String(name)})
	if isNoSuchEntity(err) {
		return nil, false
	}
	if err != nil {
		e.t.Fatalf("GetRole %s: %v", name, err)
	}
	tags := map[string]string{}
	for _, tg := range out.Role.Tags {
		tags[aws.ToString(tg.Key)] = aws.ToString(tg.Value)
	}
	return tags, true
}

func (e *env) onlyReads(what string) {
	e.t.Helper()
	for k, n := range e.calls() {
		if !strings.HasPrefix(k, "iam:Get") && !strings.HasPrefix(k, "iam:List") {
			e.t.Errorf("%s wrote: %d %s", what, n, k)
		}
	}
}

// Empty derived roles are marked when they empty, deleted after the grace, under the seed's lock;
// foreign roles and roles with subjects stay; drift repair keeps the mark; the hole a deletion
// leaves is reused.
func TestExpireEmptyAgainstMoto(t *testing.T) {
	e := motoEnv(t, "expire-seed", 2048)
	ctx := ctxT(t)
	old := time.Now().Add(-48 * time.Hour).UTC().Format(time.RFC3339)

	// A role named like a derived role that is not ours: empty, even marked long ago.
	placeholder, err := DeriveTrustPolicy(e.trustOf(e.seed.Name), nil)
	if err != nil {
		t.Fatal(err)
	}
	doc, _ := placeholder.JSON()
	foreign := derivedName(e.seed, 7)
	if _, err := e.direct.CreateRole(ctx, &iam.CreateRoleInput{RoleName: aws.String(foreign), Path: aws.String(e.seed.Path), AssumeRolePolicyDocument: aws.String(doc),
		Tags: []types.Tag{{Key: aws.String(EmptySinceTag), Value: aws.String(old)}}}); err != nil {
		t.Fatal(err)
	}

	a := e.assigner(NewLocalLocker(), Config{Quota: oneSubjectQuota(e)})
	for i := range 3 {
		got, err := a.Assign(ctx, e.seed, "demo", sessionSA(i))
		if err != nil || !strings.HasSuffix(got.RoleARN, "-"+string(rune('0'+i))) {
			t.Fatalf("Assign %d = %+v, %v", i, got, err)
		}
	}
	role := func(i int) string { return derivedName(e.seed, i) }

	t.Run("Remove marks the role it empties", func(t *testing.T) {
		before := time.Now().Add(-time.Second)
		if n, err := a.Remove(ctx, e.seed, []string{sessionSubject(1)}); err != nil || n != 1 {
			t.Fatalf("Remove = %d, %v", n, err)
		}
		tags, _ := e.tagsOf(role(1))
		since, err := time.Parse(time.RFC3339, tags[EmptySinceTag])
		if err != nil || since.Before(before.Truncate(time.Second)) || since.After(time.Now()) {
			t.Fatalf("%s tags %v: want %s = now", role(1), tags, EmptySinceTag)
		}
		if tags[annotations.SeedTag] != e.seed.String() {
			t.Errorf("seed tag lost: %v", tags)
		}
	})

	t.Run("within the grace: kept, and only read", func(t *testing.T) {
		e.proxy.ResetCalls()
		rep, err := a.expireEmpty(ctx, e.seed, time.Hour, func() time.Time { return time.Now().Add(30 * time.Minute) })
		if err != nil || len(rep.Deleted) != 0 || rep.Marked != 0 {
			t.Fatalf("ExpireEmpty = %+v, %v", rep, err)
		}
		e.onlyReads("ExpireEmpty within the grace")
		t.Logf("figures: ExpireEmpty with nothing due: %v", e.calls())
	})

	t.Run("after the grace: deleted; the seed, foreign and non-empty roles stay", func(t *testing.T) {
		e.proxy.ResetCalls()
		rep, err := a.expireEmpty(ctx, e.seed, time.Hour, func() time.Time { return time.Now().Add(2 * time.Hour) })
		if err != nil || !slices.Equal(rep.Deleted, []string{e.seed.String() + "-1"}) {
			t.Fatalf("ExpireEmpty = %+v, %v", rep, err)
		}
		t.Logf("figures: ExpireEmpty deleting one role: %v", e.calls())
		for _, name := range []string{e.seed.Name, role(0), role(2), foreign} {
			if _, ok := e.tagsOf(name); !ok {
				t.Errorf("%s was deleted", name)
			}
		}
		if _, ok := e.tagsOf(role(1)); ok {
			t.Errorf("%s still exists", role(1))
		}
	})

	t.Run("a stale mark on a role with subjects is removed", func(t *testing.T) {
		if _, err := e.direct.TagRole(ctx, &iam.TagRoleInput{RoleName: aws.String(role(0)), Tags: []types.Tag{{Key: aws.String(EmptySinceTag), Value: aws.String(old)}}}); err != nil {
			t.Fatal(err)
		}
		// Another writer: the cache must be reloaded (the local locker's generation moves).
		if _, err := a.SyncFromSeed(ctx, e.seed); err != nil {
			t.Fatal(err)
		}
		rep, err := a.ExpireEmpty(ctx, e.seed, time.Hour)
		if err != nil || rep.Unmarked != 1 || len(rep.Deleted) != 0 {
			t.Fatalf("ExpireEmpty = %+v, %v", rep, err)
		}
		if tags, _ := e.tagsOf(role(0)); tags[EmptySinceTag] != "" || tags[annotations.SeedTag] != e.seed.String() {
			t.Errorf("%s tags %v", role(0), tags)
		}
	})

	t.Run("drift repair keeps the mark", func(t *testing.T) {
		if _, err := a.Remove(ctx, e.seed, []string{sessionSubject(2)}); err != nil {
			t.Fatal(err)
		}
		tags, _ := e.tagsOf(role(2))
		e.proxy.ResetCalls()
		if rep, err := a.SyncFromSeed(ctx, e.seed); err != nil || len(rep.Writes) != 0 {
			t.Fatalf("SyncFromSeed = %+v, %v", rep, err)
		}
		e.onlyReads("SyncFromSeed without drift")
		if after, _ := e.tagsOf(role(2)); after[EmptySinceTag] == "" || after[EmptySinceTag] != tags[EmptySinceTag] {
			t.Errorf("mark %q became %q", tags[EmptySinceTag], after[EmptySinceTag])
		}
	})

	t.Run("the hole is reused", func(t *testing.T) {
		// -2 is empty: first fit puts the next subject there, then -1 is created again.
		got, err := a.Assign(ctx, e.seed, "demo", sessionSA(3))
		if err != nil || got.RoleARN != e.seed.String()+"-2" {
			t.Fatalf("Assign into the empty role = %+v, %v", got, err)
		}
		got, err = a.Assign(ctx, e.seed, "demo", sessionSA(4))
		if err != nil || got.RoleARN != e.seed.String()+"-1" || !got.Created {
			t.Fatalf("Assign into the hole = %+v, %v", got, err)
		}
		rep, err := a.ExpireEmpty(ctx, e.seed, time.Hour)
		if err != nil || rep.Unmarked != 1 || len(rep.Deleted) != 0 {
			t.Fatalf("ExpireEmpty after refilling = %+v, %v", rep, err)
		}
	})

	t.Run("grace 0 disables deletion and costs nothing", func(t *testing.T) {
		e.proxy.ResetCalls()
		if rep, err := a.ExpireEmpty(ctx, e.seed, 0); err != nil || len(rep.Deleted)+rep.Marked+rep.Unmarked != 0 {
			t.Fatalf("ExpireEmpty(0) = %+v, %v", rep, err)
		}
		if c := e.calls(); len(c) != 0 {
			t.Errorf("disabled expiry made IAM calls: %v", c)
		}
	})

	t.Run("a full pass: figures with and without drift", func(t *testing.T) {
		reg := prometheus.NewRegistry()
		c := Collector{Assigner: a, EmptyRoleGrace: time.Hour, Metrics: NewGCMetrics(reg)}
		scope := sweeper.Scope{Key: e.seed.String(), Claim: SeedClaim(e.seed)}
		e.proxy.ResetCalls()
		if err := c.MaintainScope(ctx, scope); err != nil {
			t.Fatal(err)
		}
		e.onlyReads("maintenance without drift")
		t.Logf("figures: maintenance pass, 3 derived roles (+1 foreign), no drift: %v", e.calls())

		// The seed's inline policy changes: every derived role gets the new document.
		newDoc := `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:GetObject","Resource":"*"}]}`
		if _, err := e.direct.PutRolePolicy(ctx, &iam.PutRolePolicyInput{RoleName: aws.String(e.seed.Name), PolicyName: aws.String(e.seed.Name + "-inline"), PolicyDocument: aws.String(newDoc)}); err != nil {
			t.Fatal(err)
		}
		e.proxy.ResetCalls()
		if err := c.MaintainScope(ctx, scope); err != nil {
			t.Fatal(err)
		}
		calls := e.calls()
		t.Logf("figures: maintenance pass, 3 derived roles (+1 foreign), inline policy drift: %v", calls)
		if calls["iam:PutRolePolicy"] != 3 {
			t.Errorf("PutRolePolicy calls %d, want one per derived role (3)", calls["iam:PutRolePolicy"])
		}
		if got := testutil.ToFloat64(c.Metrics.driftWrites.WithLabelValues("iam:PutRolePolicy")); got != 3 {
			t.Errorf("drift_writes_total{action=iam:PutRolePolicy} = %v, want 3", got)
		}
		want, _ := CanonicalJSON(newDoc)
		for i := range 3 {
			d, err := readRole(ctx, e.direct, role(i), true)
			if err != nil {
				t.Fatal(err)
			}
			if d.inline[e.seed.Name+"-inline"] != want {
				t.Errorf("%s inline policy %q, want the seed's new one", role(i), d.inline)
			}
		}
		if tags, _ := e.tagsOf(foreign); len(tags) != 1 {
			t.Errorf("foreign role was written: tags %v", tags)
		}
	})
}

// The cached seed expires: a seed change reaches roles created after SeedTTL without a restart.
func TestSeedCacheExpiresAgainstMoto(t *testing.T) {
	e := motoEnv(t, "ttl-seed", 2048)
	ctx := ctxT(t)
	a := e.assigner(NewLocalLocker(), Config{Quota: oneSubjectQuota(e)})
	if _, err := a.Assign(ctx, e.seed, "demo", sessionSA(0)); err != nil {
		t.Fatal(err)
	}
	const added = "added-later"
	if _, err := e.direct.PutRolePolicy(ctx, &iam.PutRolePolicyInput{RoleName: aws.String(e.seed.Name), PolicyName: aws.String(added),
		PolicyDocument: aws.String(`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:ListBucket","Resource":"*"}]}`)}); err != nil {
		t.Fatal(err)
	}
	has := func(i int) bool {
		d, err := readRole(ctx, e.direct, derivedName(e.seed, i), false)
		if err != nil {
			t.Fatal(err)
		}
		_, ok := d.inline[added]
		return ok
	}
	if _, err := a.Assign(ctx, e.seed, "demo", sessionSA(1)); err != nil {
		t.Fatal(err)
	}
	if has(1) {
		t.Fatal("the seed was read again within SeedTTL (the cache saves those reads)")
	}
	st := a.state(e.seed)
	st.specAt = st.specAt.Add(-SeedTTL) // as if SeedTTL had passed
	if _, err := a.Assign(ctx, e.seed, "demo", sessionSA(2)); err != nil {
		t.Fatal(err)
	}
	if !has(2) {
		t.Error("a role created after SeedTTL lacks the seed's new inline policy")
	}
}

func TestSortedMinus(t *testing.T) {
	for _, tc := range []struct {
		a, b  []string
		minus []string
	}{
		{a: nil, b: nil, minus: nil},
		{a: []string{"a", "b"}, b: nil, minus: []string{"a", "b"}},
		{a: nil, b: []string{"a"}, minus: nil},
		{a: []string{"a", "b", "c"}, b: []string{"b"}, minus: []string{"a", "c"}},
		{a: []string{"a", "c", "e"}, b: []string{"b", "c", "d", "e", "f"}, minus: []string{"a"}},
		{a: []string{"b", "d"}, b: []string{"a", "c", "e"}, minus: []string{"b", "d"}},
		{a: []string{"x:1", "x:10", "x:2"}, b: []string{"x:1", "x:2"}, minus: []string{"x:10"}},
	} {
		if got := sortedMinus(tc.a, tc.b); !slices.Equal(got, tc.minus) {
			t.Errorf("sortedMinus(%q, %q) = %q, want %q", tc.a, tc.b, got, tc.minus)
		}
	}
}

// TestUnjudged: a round judges what its view lists that the previous round's view did not list
// in the same role (RemoveUnless), nothing of a list it already judged, nothing of unusable roles.
func TestUnjudged(t *testing.T) {
	trust := func(subs ...string) TrustPolicy { return TrustPolicy{subjects: subs} }
	r0 := trust("s:a", "s:b")
	prev := &planView{roles: []RoleView{{Index: 0, Trust: r0}, {Index: 1, Trust: trust("s:c")}, {Index: 2, Trust: trust("s:z"), Broken: true}}}
	for _, tc := range []struct {
		name string
		prev *planView
		v    *planView
		want []string
	}{
		{name: "no view yet", prev: nil, v: nil, want: nil},
		{name: "first round judges every usable role", prev: nil, v: prev, want: []string{"0/s:a", "0/s:b", "1/s:c"}},
		{name: "the same view", prev: prev, v: prev, want: nil},
		{name: "subjects only removed", prev: prev, v: &planView{roles: []RoleView{{Index: 0, Trust: trust("s:b")}, {Index: 1, Trust: trust()}}}, want: nil},
		{name: "a subject added beside judged ones", prev: prev, v: &planView{roles: []RoleView{{Index: 0, Trust: r0}, {Index: 1, Trust: trust("s:c", "s:d")}}}, want: []string{"1/s:d"}},
		{name: "a subject moved to another role", prev: prev, v: &planView{roles: []RoleView{{Index: 0, Trust: trust("s:a")}, {Index: 1, Trust: trust("s:b", "s:c")}}}, want: []string{"1/s:b"}},
		{name: "a new role", prev: prev, v: &planView{roles: []RoleView{{Index: 0, Trust: r0}, {Index: 3, Trust: trust("s:e")}}}, want: []string{"3/s:e"}},
		{name: "a broken role becomes readable", prev: prev, v: &planView{roles: []RoleView{{Index: 2, Trust: trust("s:z")}}}, want: []string{"2/s:z"}},
		{name: "a foreign role is not judged", prev: nil, v: &planView{roles: []RoleView{{Index: 0, Trust: r0, Foreign: true}}}, want: nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			fresh := unjudged(tc.prev, tc.v, func(index int, sub string) { got = append(got, fmt.Sprintf("%d/%s", index, sub)) })
			if !slices.Equal(got, tc.want) || fresh != (len(tc.want) > 0) {
				t.Errorf("judged %q (fresh %v), want %q", got, fresh, tc.want)
			}
		})
	}
}
