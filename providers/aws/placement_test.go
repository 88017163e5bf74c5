package aws

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestPlace(t *testing.T) {
	seed := mustParse(t, seedDoc(oidcStmt(providerA, issuerA, "system:serviceaccount:kubestash:op")))
	sub := func(i int) string { return subjectOfLen(70, i) }
	// role holds subjects sub(from) ... sub(from+n-1).
	role := func(idx, from, n int) RoleView {
		var subs []string
		for i := range n {
			subs = append(subs, sub(from+i))
		}
		p, err := DeriveTrustPolicy(seed, subs)
		if err != nil {
			t.Fatal(err)
		}
		return RoleView{Index: idx, Trust: p}
	}
	// q3 is exactly the size of a role of three subjects: a role of two has room for exactly one.
	q3, err := role(0, 0, 3).Trust.Size()
	if err != nil {
		t.Fatal(err)
	}
	foreign := func(r RoleView) RoleView { r.Foreign = true; return r }
	broken := func(r RoleView) RoleView { r.Broken = true; return r }
	withSeed := PlaceOptions{Seed: &seed}
	// New subjects are 100+.
	s1, s2, s3, s4, s5 := sub(100), sub(101), sub(102), sub(103), sub(104)

	type dec struct {
		index   int
		listed  bool
		creates bool
		err     error
	}
	type wantWrite struct {
		index int
		added []string
	}
	type create struct {
		index    int
		subjects string // comma-separated, the one that needed the role first
	}
	tests := []struct {
		name     string
		roles    []RoleView
		subjects []string
		quota    int
		limit    int
		opt      PlaceOptions
		want     []dec
		creates  []create
		writes   []wantWrite
		needSeed bool
	}{
		{
			name:  "first fit: the lowest index with room",
			roles: []RoleView{role(0, 0, 3), role(1, 10, 2), role(2, 20, 2)},
			quota: q3, limit: 10, opt: withSeed, subjects: []string{s1},
			want:   []dec{{index: 1}},
			writes: []wantWrite{{1, []string{s1}}},
		},
		{
			name:  "roles given out of order are placed by index",
			roles: []RoleView{role(2, 20, 2), role(0, 0, 3), role(1, 10, 2)},
			quota: q3, limit: 10, opt: withSeed, subjects: []string{s1},
			want:   []dec{{index: 1}},
			writes: []wantWrite{{1, []string{s1}}},
		},
		{
			name:  "a subject fits when the policy is exactly at the quota",
			roles: []RoleView{role(0, 0, 2)},
			quota: q3, limit: 10, opt: withSeed, subjects: []string{s1},
			want:   []dec{{index: 0}},
			writes: []wantWrite{{0, []string{s1}}},
		},
		{
			name:  "one character under that, a new role",
			roles: []RoleView{role(0, 0, 2)},
			quota: q3 - 1, limit: 10, opt: withSeed, subjects: []string{s1},
			want:    []dec{{index: 1, creates: true}},
			creates: []create{{1, s1}},
		},
		{
			name:  "foreign and broken roles are skipped, their indexes taken",
			roles: []RoleView{foreign(role(0, 0, 1)), broken(role(1, 10, 1))},
			quota: q3, limit: 10, opt: withSeed, subjects: []string{s1},
			want:    []dec{{index: 2, creates: true}},
			creates: []create{{2, s1}},
		},
		{
			name:  "a new role takes the lowest free index",
			roles: []RoleView{role(0, 0, 3), role(2, 20, 3)},
			quota: q3, limit: 10, opt: withSeed, subjects: []string{s1},
			want:    []dec{{index: 1, creates: true}},
			creates: []create{{1, s1}},
		},
		{
			name:  "already listed: nothing to write",
			roles: []RoleView{role(0, 0, 2), role(1, 10, 3)},
			quota: q3, limit: 10, opt: withSeed, subjects: []string{sub(11)},
			want: []dec{{index: 1, listed: true}},
		},
		{
			name:  "listed by a foreign role only: placed like any subject",
			roles: []RoleView{foreign(role(0, 0, 3)), role(1, 10, 2)},
			quota: q3, limit: 10, opt: withSeed, subjects: []string{sub(1)},
			want:   []dec{{index: 1}},
			writes: []wantWrite{{1, []string{sub(1)}}},
		},
		{
			name:  "several subjects of one round share a new role: created listing them all, no second write",
			roles: []RoleView{role(0, 0, 3)},
			quota: q3, limit: 10, opt: withSeed, subjects: []string{s1, s2, s3},
			want:    []dec{{index: 1, creates: true}, {index: 1}, {index: 1}},
			creates: []create{{1, s1 + "," + s2 + "," + s3}},
		},
		{
			name:  "one round fills an existing role, then new roles up to the limit",
			roles: []RoleView{role(0, 0, 2)},
			quota: q3, limit: 2, opt: withSeed, subjects: []string{s1, s2, s3, s4, s5},
			want: []dec{{index: 0}, {index: 1, creates: true}, {index: 1}, {index: 1},
				{err: ErrRoleLimitReached}},
			creates: []create{{1, s2 + "," + s3 + "," + s4}},
			writes:  []wantWrite{{0, []string{s1}}},
		},
		{
			name:  "limit reached",
			roles: []RoleView{role(0, 0, 3)},
			quota: q3, limit: 1, opt: withSeed, subjects: []string{s1},
			want: []dec{{err: ErrRoleLimitReached}},
		},
		{
			name:  "a subject larger than an empty role",
			quota: 100, limit: 10, opt: withSeed, subjects: []string{s1},
			want: []dec{{err: ErrSubjectTooLarge}},
		},
		{
			name:  "reservations count against their role's room",
			roles: []RoleView{role(0, 0, 1), role(1, 10, 1)},
			quota: q3, limit: 10, subjects: []string{s1},
			opt:    PlaceOptions{Seed: &seed, Reserved: map[int][]string{0: {sub(50), sub(51)}, 1: {sub(52)}}},
			want:   []dec{{index: 1}},
			writes: []wantWrite{{1, []string{s1}}},
		},
		{
			name:  "a role only planned by reservations takes a subject when it fits",
			roles: []RoleView{role(0, 0, 3)},
			quota: q3, limit: 10, subjects: []string{s1},
			opt:  PlaceOptions{Seed: &seed, Reserved: map[int][]string{1: {sub(50)}}},
			want: []dec{{index: 1}},
		},
		{
			name:  "existing roles come before planned ones",
			roles: []RoleView{role(0, 0, 3), role(2, 20, 2)},
			quota: q3, limit: 10, subjects: []string{s1},
			opt:    PlaceOptions{Seed: &seed, Reserved: map[int][]string{1: {sub(50)}}},
			want:   []dec{{index: 2}},
			writes: []wantWrite{{2, []string{s1}}},
		},
		{
			name:  "a full planned role's index is taken",
			roles: []RoleView{role(0, 0, 3)},
			quota: q3, limit: 10, subjects: []string{s1},
			opt:     PlaceOptions{Seed: &seed, Reserved: map[int][]string{1: {sub(50), sub(51), sub(52)}}},
			want:    []dec{{index: 2, creates: true}},
			creates: []create{{2, s1}},
		},
		{
			name:  "without the seed a planned role only takes its index, and the new role is unmeasured",
			roles: []RoleView{role(0, 0, 3)},
			quota: q3, limit: 10, subjects: []string{s1},
			opt:      PlaceOptions{Reserved: map[int][]string{1: {sub(50)}}},
			want:     []dec{{index: 2, creates: true}},
			creates:  []create{{2, s1}},
			needSeed: true,
		},
		{
			name:  "the hinted role comes first",
			roles: []RoleView{role(0, 0, 1), role(1, 10, 1)},
			quota: q3, limit: 10, opt: PlaceOptions{Seed: &seed, Hints: map[string]int{s1: 1}},
			subjects: []string{s1, s2},
			want:     []dec{{index: 1}, {index: 0}},
			writes:   []wantWrite{{0, []string{s2}}, {1, []string{s1}}},
		},
		{
			// The burst case: a subject planned for the next role is queued before the last
			// one planned for this role; each gets its plan.
			name:  "a hint naming a role not created yet creates it there",
			roles: []RoleView{role(0, 0, 2)},
			quota: q3, limit: 10, opt: PlaceOptions{Seed: &seed, Hints: map[string]int{s1: 1, s2: 1, s3: 0}},
			subjects: []string{s1, s2, s3},
			want:     []dec{{index: 1, creates: true}, {index: 1}, {index: 0}},
			creates:  []create{{1, s1 + "," + s2}},
			writes:   []wantWrite{{0, []string{s3}}},
		},
		{
			name:  "a hint may skip two free indexes",
			roles: []RoleView{role(0, 0, 3)},
			quota: q3, limit: 10, opt: PlaceOptions{Seed: &seed, Hints: map[string]int{s1: 3}},
			subjects: []string{s1},
			want:     []dec{{index: 3, creates: true}},
			creates:  []create{{3, s1}},
		},
		{
			name:  "a hint further out is first fit",
			roles: []RoleView{role(0, 0, 2)},
			quota: q3, limit: 10, opt: PlaceOptions{Seed: &seed, Hints: map[string]int{s1: 4, s2: 4}},
			subjects: []string{s1, s2},
			want:     []dec{{index: 0}, {index: 1, creates: true}},
			creates:  []create{{1, s2}},
			writes:   []wantWrite{{0, []string{s1}}},
		},
		{
			// A chain of plans each naming the next index (reviews prove nothing) cannot have
			// the writer open a role per subject: while three roles have room, a hint for a
			// new one is first fit, so at most three roles are left part full.
			name:  "a hint for a new role while three roles have room is first fit",
			roles: []RoleView{role(0, 0, 2), role(1, 10, 2)},
			quota: q3, limit: 10, opt: PlaceOptions{Seed: &seed, Hints: map[string]int{s1: 2, s2: 3, s3: 4}},
			subjects: []string{s1, s2, s3},
			want:     []dec{{index: 2, creates: true}, {index: 0}, {index: 4, creates: true}},
			creates:  []create{{2, s1}, {4, s3}},
			writes:   []wantWrite{{0, []string{s2}}},
		},
		{
			name:  "a hint at the limit is first fit",
			roles: []RoleView{role(0, 0, 2)},
			quota: q3, limit: 2, opt: PlaceOptions{Seed: &seed, Hints: map[string]int{s1: 2}},
			subjects: []string{s1},
			want:     []dec{{index: 0}},
			writes:   []wantWrite{{0, []string{s1}}},
		},
		{
			name:  "a hint naming a foreign role is first fit",
			roles: []RoleView{role(0, 0, 2), foreign(role(1, 10, 1))},
			quota: q3, limit: 10, opt: PlaceOptions{Seed: &seed, Hints: map[string]int{s1: 1}},
			subjects: []string{s1},
			want:     []dec{{index: 0}},
			writes:   []wantWrite{{0, []string{s1}}},
		},
		{
			name:  "a full hinted role falls back to first fit",
			roles: []RoleView{role(0, 0, 2), role(1, 10, 3)},
			quota: q3, limit: 10, opt: PlaceOptions{Seed: &seed, Hints: map[string]int{s1: 1}},
			subjects: []string{s1},
			want:     []dec{{index: 0}},
			writes:   []wantWrite{{0, []string{s1}}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pl := Place(tc.roles, tc.subjects, tc.quota, tc.limit, tc.opt)
			if len(pl.Decisions) != len(tc.subjects) {
				t.Fatalf("%d decisions for %d subjects", len(pl.Decisions), len(tc.subjects))
			}
			for i, d := range pl.Decisions {
				w := tc.want[i]
				if d.Subject != tc.subjects[i] {
					t.Errorf("decision %d is for %s, want %s", i, d.Subject, tc.subjects[i])
				}
				if w.err != nil {
					if !errors.Is(d.Err, w.err) {
						t.Errorf("subject %d: err %v, want %v", i, d.Err, w.err)
					}
					continue
				}
				if got := (dec{index: d.Index, listed: d.Listed, creates: d.Creates, err: d.Err}); got != w {
					t.Errorf("subject %d: %+v, want %+v", i, got, w)
				}
			}
			var creates []create
			for _, c := range pl.Creates {
				creates = append(creates, create{c.Index, strings.Join(c.Subjects, ",")})
				if !tc.needSeed && !slices.Equal(c.Trust.Subjects(), slices.Sorted(slices.Values(c.Subjects))) {
					t.Errorf("role %d is created with %v, want exactly %v", c.Index, c.Trust.Subjects(), c.Subjects)
				}
				if size, _ := c.Trust.Size(); !tc.needSeed && size > tc.quota {
					t.Errorf("role %d would be created with %d characters, quota %d", c.Index, size, tc.quota)
				}
			}
			if !slices.Equal(creates, tc.creates) {
				t.Errorf("creates %v, want %v", creates, tc.creates)
			}
			var writes []wantWrite
			for _, w := range pl.Writes {
				writes = append(writes, wantWrite{w.Index, w.Added})
				if size, _ := w.Trust.Size(); size > tc.quota {
					t.Errorf("role %d would be %d characters, quota %d", w.Index, size, tc.quota)
				}
				for _, s := range w.Added {
					if !w.Trust.Has(s) {
						t.Errorf("role %d write lacks %s", w.Index, s)
					}
				}
				for _, rs := range tc.opt.Reserved[w.Index] {
					if w.Trust.Has(rs) {
						t.Errorf("role %d write includes %s, which is only reserved", w.Index, rs)
					}
				}
			}
			if !slices.EqualFunc(writes, tc.writes, func(a, b wantWrite) bool { return a.index == b.index && slices.Equal(a.added, b.added) }) {
				t.Errorf("writes %v, want %v", writes, tc.writes)
			}
			if pl.NeedSeed != tc.needSeed {
				t.Errorf("NeedSeed %v, want %v", pl.NeedSeed, tc.needSeed)
			}
		})
	}
}

// TestPlaceAfter: the roles after a placement are the input with its writes and creations.
func TestPlaceAfter(t *testing.T) {
	seed := mustParse(t, seedDoc(oidcStmt(providerA, issuerA, "system:serviceaccount:kubestash:op")))
	quota := 2048
	var views []RoleView
	var subjects []string
	for i := range 60 {
		subjects = append(subjects, subjectOfLen(70, i))
	}
	// All at once, as one round, and one by one, as single assignments: the same roles.
	pl := Place(nil, subjects, quota, 100, PlaceOptions{Seed: &seed})
	batch := pl.After(nil)
	for _, s := range subjects {
		views = Place(views, []string{s}, quota, 100, PlaceOptions{Seed: &seed}).After(views)
	}
	if len(batch) != len(views) || len(batch) < 2 {
		t.Fatalf("%d roles in one round, %d one by one", len(batch), len(views))
	}
	for i := range batch {
		if batch[i].Index != i || !slices.Equal(batch[i].Trust.Subjects(), views[i].Trust.Subjects()) {
			t.Errorf("role %d: %v in one round, %v one by one", i, batch[i].Trust.Subjects(), views[i].Trust.Subjects())
		}
	}
}
