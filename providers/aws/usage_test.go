package aws

import (
	"math"
	"testing"
	"time"

	"go.klusters.dev/credential-webhook/sweeper"
)

func TestUsageOf(t *testing.T) {
	seed := mustParse(t, seedDoc(oidcStmt(providerA, issuerA, "system:serviceaccount:kubestash:op")))
	role := func(idx, n int) RoleView {
		var subs []string
		for i := range n {
			subs = append(subs, subjectOfLen(70, idx*100+i))
		}
		p, err := DeriveTrustPolicy(seed, subs)
		if err != nil {
			t.Fatal(err)
		}
		return RoleView{Index: idx, Trust: p}
	}
	size := func(r RoleView) int {
		n, err := r.Trust.Size()
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	// quota is exactly a role of three subjects: such a role is full.
	full, two, empty := role(0, 3), role(1, 2), role(2, 0)
	quota := size(full)
	foreign := role(3, 1)
	foreign.Foreign = true
	broken := role(4, 1)
	broken.Broken = true

	for _, tc := range []struct {
		name      string
		roles     []RoleView
		limit     int
		roleCount int
		subjects  int
		fill      float64
	}{
		{"no role yet", nil, 4, 0, 0, 0},
		{"one full role of four", []RoleView{full}, 4, 1, 3, 0.25},
		{"every role full", []RoleView{full, role(1, 3)}, 2, 2, 6, 1},
		{"partly filled", []RoleView{full, two, empty}, 4, 3, 5, float64(quota+size(two)+size(empty)) / float64(4*quota)},
		{"foreign and unreadable roles count as full, their subjects not", []RoleView{foreign, broken}, 2, 2, 0, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := usageOf("arn:aws:iam::123456789012:role/kubestash", tc.roles, quota, tc.limit)
			want := sweeper.SeedUsage{Seed: "arn:aws:iam::123456789012:role/kubestash", Roles: tc.roleCount, Subjects: tc.subjects}
			if got.Seed != want.Seed || got.Roles != want.Roles || got.Subjects != want.Subjects || math.Abs(got.Fill-tc.fill) > 1e-9 {
				t.Errorf("usageOf = %+v; want %+v with fill %v", got, want, tc.fill)
			}
		})
	}
	if u := usageOf("s", []RoleView{full}, quota, 0); u.Fill != 0 || u.Roles != 1 {
		t.Errorf("no limit: %+v", u)
	}
	// The 90 % alert: a seed whose every role holds as many subjects as fit is above it.
	if u := usageOf("s", []RoleView{full, role(1, 3), role(2, 3)}, quota, 3); u.Fill <= 0.9 {
		t.Errorf("all roles full: fill %v, not above 0.9", u.Fill)
	}
}

// SeedUsage reports only seeds with a published view (loaded by a lock session or a plan), from
// memory.
func TestAssignerSeedUsage(t *testing.T) {
	seed := mustParse(t, seedDoc(oidcStmt(providerA, issuerA, "system:serviceaccount:kubestash:op")))
	p, err := DeriveTrustPolicy(seed, []string{subjectOfLen(70, 1), subjectOfLen(70, 2)})
	if err != nil {
		t.Fatal(err)
	}
	a := NewAssigner(nil, nil, Config{RoleCreationLimit: 7, Quota: 4096}, nil)
	arn := func(s string) RoleARN {
		r, err := ParseRoleARN(s)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	a.state(arn("arn:aws:iam::123456789012:role/never-loaded"))
	st := a.state(arn("arn:aws:iam::123456789012:role/kubestash"))
	st.roles = []*roleState{{index: 0, trust: p}}
	st.publish(time.Now())
	got, limit := a.SeedUsage()
	if limit != 7 || len(got) != 1 || got[0].Seed != "arn:aws:iam::123456789012:role/kubestash" || got[0].Roles != 1 || got[0].Subjects != 2 {
		t.Fatalf("SeedUsage = %+v, %d", got, limit)
	}
	n, _ := p.Size()
	if want := float64(n) / (7 * 4096); math.Abs(got[0].Fill-want) > 1e-9 {
		t.Errorf("fill %v, want %v (quota from the configuration)", got[0].Fill, want)
	}
}
