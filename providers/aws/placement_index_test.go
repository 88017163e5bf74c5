package aws

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

// placeByScan is Place as it was before the listing index and the full-role shortcut of bin.add
// (listings, firstFit): every subject searched for in every role, every role asked with Fit.
// It is the oracle TestPlaceMatchesScan compares Place with.
func placeByScan(roles []RoleView, subjects []string, quota, limit int, opt PlaceOptions) Placement {
	roles = slices.SortedStableFunc(slices.Values(roles), func(a, b RoleView) int { return a.Index - b.Index })
	var bins []*bin
	for _, r := range roles {
		b := &bin{index: r.Index, usable: r.usable(), trust: r.Trust, measure: r.Trust}
		if rs := opt.Reserved[r.Index]; len(rs) > 0 && b.usable {
			for _, s := range rs {
				b.measure, _ = b.measure.WithSubject(s)
			}
			b.padded = true
		}
		bins = append(bins, b)
	}
	planned := plannedBins(bins, opt)
	add := func(b *bin, sub string) bool {
		if !b.usable {
			return false
		}
		next, _, ok, err := Fit(b.measure, sub, quota)
		if err != nil || !ok {
			return false
		}
		b.measure = next
		if b.padded {
			b.trust, _ = b.trust.WithSubject(sub)
		} else {
			b.trust = next
		}
		b.added = append(b.added, sub)
		return true
	}
	fit := func(sub string) *bin {
		var hinted *bin
		if idx, ok := opt.Hints[sub]; ok {
			if i := slices.IndexFunc(bins, func(b *bin) bool { return b.index == idx }); i >= 0 && add(bins[i], sub) {
				return bins[i]
			} else if i >= 0 {
				hinted = bins[i]
			}
		}
		for _, b := range bins {
			if b != hinted && add(b, sub) {
				return b
			}
		}
		for _, b := range planned {
			if add(b, sub) {
				return b
			}
		}
		return nil
	}
	// newAt: a hint naming a role that neither exists nor is planned, below limit, at most two
	// past the lowest index that is neither, and for a subject at most two usable roles have
	// room for, is where the subject's role is created.
	newAt := func(sub string) (int, bool) {
		idx, ok := opt.Hints[sub]
		if !ok || idx < 0 || idx >= limit {
			return 0, false
		}
		taken := map[int]bool{}
		for _, b := range append(slices.Clone(bins), planned...) {
			taken[b.index] = true
		}
		free := 0
		for taken[free] {
			free++
		}
		roomy := 0
		for _, b := range bins {
			if _, _, ok, err := Fit(b.measure, sub, quota); b.usable && ok && err == nil {
				roomy++
			}
		}
		return idx, !taken[idx] && idx <= free+2 && roomy <= 2
	}
	var out Placement
	for _, sub := range subjects {
		d := Decision{Subject: sub}
		if b := listing(bins, sub); b != nil {
			d.Index, d.Listed = b.index, true
		} else if idx, ok := newAt(sub); ok {
			d = openRoleAt(&bins, idx, sub, quota, opt.Seed)
			if d.Creates && opt.Seed == nil {
				out.NeedSeed = true
			}
		} else if b := fit(sub); b != nil {
			d.Index = b.index
		} else {
			d = openRole(&bins, planned, sub, quota, limit, opt.Seed)
			if d.Creates && opt.Seed == nil {
				out.NeedSeed = true
			}
		}
		out.Decisions = append(out.Decisions, d)
	}
	for _, b := range bins {
		if b.created {
			out.Creates = append(out.Creates, RoleCreate{Index: b.index, Subjects: b.added, Trust: b.trust})
		} else if len(b.added) > 0 {
			out.Writes = append(out.Writes, TrustWrite{Index: b.index, Trust: b.trust, Added: b.added})
		}
	}
	return out
}

// describePlacement renders a placement for comparison: decisions, and each role written or
// created with its subjects, added subjects and document.
func describePlacement(t *testing.T, pl Placement) string {
	t.Helper()
	doc := func(p TrustPolicy) string {
		js, err := p.JSON()
		if err != nil {
			return "error: " + err.Error()
		}
		return js
	}
	s := fmt.Sprintf("needSeed %v\n", pl.NeedSeed)
	for _, d := range pl.Decisions {
		s += fmt.Sprintf("%s -> %d listed %v creates %v err %v\n", d.Subject, d.Index, d.Listed, d.Creates, d.Err)
	}
	for _, c := range pl.Creates {
		s += fmt.Sprintf("create %d %v %s\n", c.Index, c.Subjects, doc(c.Trust))
	}
	for _, w := range pl.Writes {
		s += fmt.Sprintf("write %d %v %s\n", w.Index, w.Added, doc(w.Trust))
	}
	return s
}

// TestPlaceMatchesScan: Place decides exactly as the plain scan does (placeByScan), over random
// rounds small (no index) and large (indexed), with subjects listed in several roles, repeated
// in a round, reserved, hinted, of several lengths, in foreign, broken and full roles.
func TestPlaceMatchesScan(t *testing.T) {
	seed := mustParse(t, seedDoc(oidcStmt(providerA, issuerA, "system:serviceaccount:kubestash:op"), oidcStmt(providerB, issuerB)))
	rng := rand.New(rand.NewPCG(7, 11))
	pool := make([]string, 300)
	for i := range pool {
		pool[i] = subjectOfLen(40+rng.IntN(60), i)
	}
	pick := func() string { return pool[rng.IntN(len(pool))] }
	for iter := range 400 {
		quota := 1200 + rng.IntN(1500)
		var roles []RoleView
		for idx := range rng.IntN(12) {
			if rng.IntN(5) == 0 {
				continue // a hole
			}
			var subs []string
			for range rng.IntN(20) {
				subs = append(subs, pick())
			}
			p, err := DeriveTrustPolicy(seed, subs)
			if err != nil {
				t.Fatal(err)
			}
			r := RoleView{Index: idx, Trust: p}
			switch rng.IntN(10) {
			case 0:
				r.Foreign = true
			case 1:
				r.Broken = true
			}
			roles = append(roles, r)
		}
		rng.Shuffle(len(roles), func(i, j int) { roles[i], roles[j] = roles[j], roles[i] })
		n := 1 + rng.IntN(10)
		if iter%2 == 1 {
			n = indexFrom + rng.IntN(60)
		}
		var subjects []string
		for range n {
			subjects = append(subjects, pick())
		}
		opt := PlaceOptions{Seed: &seed}
		if rng.IntN(4) == 0 {
			opt.Seed = nil
		}
		if rng.IntN(3) == 0 {
			opt.Reserved = map[int][]string{}
			for range 1 + rng.IntN(6) {
				idx := rng.IntN(16)
				opt.Reserved[idx] = append(opt.Reserved[idx], pick())
			}
			opt.Hints = map[string]int{}
			for range 1 + rng.IntN(6) {
				opt.Hints[subjects[rng.IntN(len(subjects))]] = rng.IntN(16)
			}
		}
		limit := 4 + rng.IntN(16)
		got := describePlacement(t, Place(roles, subjects, quota, limit, opt))
		want := describePlacement(t, placeByScan(roles, subjects, quota, limit, opt))
		if got != want {
			t.Fatalf("round %d (%d subjects over %d roles, quota %d): Place\n%s\nthe scan\n%s", iter, len(subjects), len(roles), quota, got, want)
		}
	}
}
