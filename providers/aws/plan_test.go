package aws

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// planSeed is the seed of the planner tests and an allowlist of just it.
func planSeed(t *testing.T) (RoleARN, Allowlist) {
	t.Helper()
	const seedARN = "arn:aws:iam::123456789012:role/kubestash/seed"
	seed, err := ParseRoleARN(seedARN)
	if err != nil {
		t.Fatal(err)
	}
	allow, err := ParseAllowlist(seedARN)
	if err != nil {
		t.Fatal(err)
	}
	return seed, allow
}

// Expect turns the role ARN a persisted ServiceAccount carries into the writer's hint, only for a
// derived role of that seed in the published view, and never over this replica's own plan.
func TestExpect(t *testing.T) {
	seed, allow := planSeed(t)
	seedARN := seed.String()
	role := func(i int) string {
		r, err := Derived(seed, i)
		if err != nil {
			t.Fatal(err)
		}
		return r.String()
	}
	for _, tc := range []struct {
		name    string
		seed    string
		roleARN string
		own     int // a reservation this replica made, -1: none
		want    int // the hint, -1: none
	}{
		{"a derived role in the view", seedARN, role(1), -1, 1},
		{"the first one", seedARN, role(0), -1, 0},
		{"this replica's plan wins", seedARN, role(1), 0, 0},
		{"a role the view does not have", seedARN, role(7), -1, -1},
		{"a foreign role", seedARN, role(2), -1, -1},
		{"another seed's role", seedARN, "arn:aws:iam::123456789012:role/kubestash/other-1", -1, -1},
		{"another path", seedARN, "arn:aws:iam::123456789012:role/elsewhere/seed-1", -1, -1},
		{"the seed itself", seedARN, seedARN, -1, -1},
		{"no annotation", seedARN, "", -1, -1},
		{"garbage", seedARN, "seed-1", -1, -1},
		{"a seed not allowed", "arn:aws:iam::123456789012:role/kubestash/other", "arn:aws:iam::123456789012:role/kubestash/other-1", -1, -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := NewAssigner(nil, NewLocalLocker(), Config{Seeds: allow}, nil)
			st := a.state(seed)
			st.roles = []*roleState{{index: 0}, {index: 1}, {index: 2, owner: ownerOther}}
			st.publish(time.Now())
			sub, err := Subject("backups", "session-1")
			if err != nil {
				t.Fatal(err)
			}
			if tc.own >= 0 {
				st.plan.reserved = map[string]reservation{sub: {index: tc.own, until: time.Now().Add(time.Minute)}}
			}
			s, err := ParseRoleARN(tc.seed)
			if err != nil {
				t.Fatal(err)
			}
			a.Expect(s, "backups", "session-1", tc.roleARN)
			got, ok := a.state(s).hints([]string{sub}, time.Now())[sub]
			if !ok {
				got = -1
			}
			if got != tc.want {
				t.Errorf("hint %d, want %d", got, tc.want)
			}
		})
	}
}

// Background refreshes of plan views start at most once a planRefreshGap per replica, whatever
// seeds reviews name.
func TestMayRefresh(t *testing.T) {
	a := NewAssigner(nil, NewLocalLocker(), Config{}, nil)
	t0 := time.Now()
	for _, step := range []struct {
		at   time.Duration
		want bool
	}{{0, true}, {planRefreshGap / 2, false}, {planRefreshGap, true}, {planRefreshGap + time.Millisecond, false}, {3 * planRefreshGap, true}} {
		if got := a.mayRefresh(t0.Add(step.at)); got != step.want {
			t.Errorf("mayRefresh at +%v = %v, want %v", step.at, got, step.want)
		}
	}
}

// settle drops the reservations of the subjects a new view lists in a role of ours (the view
// counts them now, where they are), and keeps those it does not list, or lists only in a
// foreign role.
func TestSettle(t *testing.T) {
	seed := mustParse(t, seedDoc(oidcStmt(providerA, issuerA)))
	role := func(idx int, foreign bool, subs ...string) RoleView {
		p, err := DeriveTrustPolicy(seed, subs)
		if err != nil {
			t.Fatal(err)
		}
		return RoleView{Index: idx, Trust: p, Foreign: foreign}
	}
	a, b, c, d := subjectOfLen(60, 1), subjectOfLen(60, 2), subjectOfLen(60, 3), subjectOfLen(60, 4)
	until := time.Now().Add(time.Minute)
	p := &planner{reserved: map[string]reservation{
		a: {index: 0, until: until}, // written where planned
		b: {index: 0, until: until}, // written elsewhere (the plan missed)
		c: {index: 1, until: until}, // listed only by a foreign role
		d: {index: 2, until: until}, // not written yet
	}}
	p.settle(&planView{roles: []RoleView{role(0, false, a), role(1, true, c), role(3, false, b)}})
	var left []string
	for sub := range p.reserved {
		left = append(left, sub)
	}
	slices.Sort(left)
	if want := []string{c, d}; !slices.Equal(left, want) {
		t.Errorf("reservations left %v, want %v", left, want)
	}
}

// A view published by a session that never read the seed (garbage collection on a fresh
// leader) cannot measure a new role: plans that need one all name the lowest free index and
// reserve nothing, so the writer, which creates a planned role at its index, fills that one in
// order instead of creating a role per plan. Once the view has the seed, plans reserve and
// share the new role until it is full.
func TestPlansWithoutTheSeedReserveNoNewRole(t *testing.T) {
	seed, allow := planSeed(t)
	trust := mustParse(t, seedDoc(oidcStmt(providerA, issuerA)))
	for _, withSeed := range []bool{false, true} {
		a := NewAssigner(nil, NewLocalLocker(), Config{Seeds: allow, Quota: 2048}, nil)
		st := a.state(seed)
		if withSeed {
			st.setSeed(&roleSpec{arn: seed, trust: trust}, time.Now())
		}
		st.publish(time.Now())
		var got []string
		for i := range 3 {
			arn, _, err := a.Reserve(context.Background(), seed, "backups", fmt.Sprintf("session-%d", i))
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, arn[strings.LastIndexByte(arn, '-')+1:])
		}
		st.plan.mu.Lock()
		reserved := len(st.plan.reserved)
		st.plan.mu.Unlock()
		want, wantReserved := []string{"0", "0", "0"}, 3
		if !withSeed {
			wantReserved = 0
		}
		if !slices.Equal(got, want) || reserved != wantReserved {
			t.Errorf("seed known %v: plans name roles %v with %d reservations, want %v with %d", withSeed, got, reserved, want, wantReserved)
		}
	}
}
