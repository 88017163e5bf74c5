package aws

import (
	"slices"
	"testing"
	"time"

	"go.klusters.dev/credential-webhook/testenv/moto"
)

// Expect turns the role ARN a persisted ServiceAccount carries into the writer's hint, only for a
// derived role of that seed in the published view, and never over this replica's own plan.
func TestExpect(t *testing.T) {
	const seedARN = "arn:aws:iam::123456789012:role/kubestash/seed"
	seed, err := ParseRoleARN(seedARN)
	if err != nil {
		t.Fatal(err)
	}
	allow, err := ParseAllowlist(seedARN)
	if err != nil {
		t.Fatal(err)
	}
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
			st.publish()
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

// A replica that plans but does not write reads the roles again, in the background, once its
// view is older than ViewMaxAge: its later plans see the roles the writer created since.
func TestStaleViewIsReadAgain(t *testing.T) {
	srv := moto.Start(t)
	srv.SetEnv(t)
	e := newEnv(t, srv, "view-seed", 2048)
	ctx := ctxT(t)
	writer := e.assigner(NewLocalLocker(), Config{})
	planner := e.assigner(NewLocalLocker(), Config{ViewMaxAge: time.Nanosecond})
	if _, err := writer.Assign(ctx, e.seed, "demo", sessionSA(0)); err != nil {
		t.Fatal(err)
	}
	if _, _, err := planner.Reserve(ctx, e.seed, "demo", sessionSA(1)); err != nil { // loads its view: role 0
		t.Fatal(err)
	}
	per := e.capacity(2048)
	for i := 2; i < per+2; i++ { // fills role 0 and creates role 1
		if _, err := writer.Assign(ctx, e.seed, "demo", sessionSA(i)); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, _, err := planner.Plan(ctx, e.seed, "demo", sessionSA(1000)); err != nil {
			t.Fatal(err)
		}
		v := planner.state(e.seed).publishedView()
		if v != nil && slices.ContainsFunc(v.roles, func(r RoleView) bool { return r.Index == 1 }) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the planner's view never showed role 1, created after it first planned")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if c := e.calls(); c["iam:CreateRole"] != 2 || c["iam:UpdateAssumeRolePolicy"] == 0 {
		t.Errorf("IAM calls %v: the writer's, and reads only from the planner", c)
	}
}

// Without ViewMaxAge the view stays as first read (the sweeper leader's writer publishes its own).
func TestViewWithoutMaxAgeIsNotReadAgain(t *testing.T) {
	srv := moto.Start(t)
	srv.SetEnv(t)
	e := newEnv(t, srv, "still-view-seed", 2048)
	ctx := ctxT(t)
	planner := e.assigner(NewLocalLocker(), Config{})
	if _, _, err := planner.Plan(ctx, e.seed, "demo", sessionSA(0)); err != nil {
		t.Fatal(err)
	}
	e.proxy.ResetCalls()
	for i := range 20 {
		if _, _, err := planner.Plan(ctx, e.seed, "demo", sessionSA(i)); err != nil {
			t.Fatal(err)
		}
	}
	if c := e.calls(); len(c) != 0 {
		t.Errorf("plans from a published view cost IAM calls: %v", c)
	}
}
