package aws

import (
	"fmt"
	"slices"
	"unicode/utf8"
)

// Placement decides which derived role each subject goes into. It is the only place a role is
// chosen: the writer's lock session (session.placeRound), admission's plan (Assigner.Plan and
// Reserve, also for dry runs), the packing benchmarks and the e2e yardsticks all call Place, so
// what the tests measure is what production runs. Place does no I/O: the caller reads IAM
// before and writes the result after.

// RoleView is one existing derived role as placement sees it.
type RoleView struct {
	Index int
	Trust TrustPolicy
	// Foreign: named like a derived role but not carrying this seed's tag. Broken: its trust
	// policy could not be parsed. Neither is ever chosen, but their index is taken.
	Foreign bool
	Broken  bool
}

func (r RoleView) usable() bool { return !r.Foreign && !r.Broken }

// PlaceOptions are the inputs only some callers have.
type PlaceOptions struct {
	// Seed is the seed's trust policy, which new roles are derived from. Nil when it has not been
	// read: a new role still gets an index, unmeasured and closed to later subjects, and
	// Placement.NeedSeed asks the caller to read the seed and place again.
	Seed *TrustPolicy
	// Reserved are subjects other reviews' plans hold room for, by role index (admission only,
	// for reservationTTL). They count against their role's room without being written, and an
	// index reserved for a role not created yet is taken; such a planned role can take the
	// subject too, when Seed is known.
	Reserved map[int][]string
	// Hints is the role index admission answered for a subject (the writer only): that role is
	// tried first, or created when it does not exist yet (hintedNew), so the ARN the review
	// returned comes true whenever it still fits.
	Hints map[string]int
}

// Decision is where one subject goes.
type Decision struct {
	Subject string
	Index   int  // the role's index; meaningless when Err is set
	Listed  bool // the role lists the subject already: nothing to write
	Creates bool // a new role is created for this subject (RoleCreate)
	// Err is set when the subject cannot be placed: ErrRoleLimitReached (every role full and
	// the limit reached), ErrSubjectTooLarge (it does not fit even an empty role), or a
	// trust policy that cannot be rendered.
	Err error
}

// RoleCreate is a role to create. Subjects are every subject placed in it, the one that needed it
// first; Trust, the policy it is created with, already lists them all, so a new role costs one
// CreateRole however many subjects of the round it takes (burst load: one IAM write per role).
type RoleCreate struct {
	Index    int
	Subjects []string
	Trust    TrustPolicy
}

// TrustWrite is one trust policy write to an existing role: Trust is the role's whole new policy,
// Added the subjects it gains.
type TrustWrite struct {
	Index int
	Trust TrustPolicy
	Added []string
}

// Placement is the outcome of Place.
type Placement struct {
	Decisions []Decision   // one per subject, in the order given
	Creates   []RoleCreate // lowest index first
	Writes    []TrustWrite // lowest index first; roles planned by reservations never get one
	NeedSeed  bool         // a new role was needed while PlaceOptions.Seed was nil
}

// bin is one role during placement: an existing one, one created by this placement, or one
// only planned by reservations.
type bin struct {
	index   int
	usable  bool
	trust   TrustPolicy // what would be written
	measure TrustPolicy // trust plus the subjects reserved in it: what must fit under the quota
	padded  bool        // measure differs from trust
	added   []string
	created bool
	planned bool // planned by reservations (plannedBins), not existing
	// measured: size and stmts hold measure's Size (or its error) and OIDCStatements, for add.
	measured bool
	size     int
	sizeErr  error
	stmts    int
}

// Place decides, by first fit, where each subject goes: a role that already lists it; else,
// for a hinted subject (the writer), the hinted role, created if need be (hintedNew); else the
// lowest-index usable role that can take it under quota (characters, measured on the compact
// JSON that would be sent; space freed by removed subjects is found again because every role is
// measured); else a role only planned by reservations, lowest first; else a new role at the
// lowest index neither used nor reserved, below limit. Subjects are placed in order, each seeing
// the ones before it, so several subjects of one round can share a role, new or not.
func Place(roles []RoleView, subjects []string, quota, limit int, opt PlaceOptions) Placement {
	if !slices.IsSortedFunc(roles, func(a, b RoleView) int { return a.Index - b.Index }) {
		roles = slices.SortedStableFunc(slices.Values(roles), func(a, b RoleView) int { return a.Index - b.Index })
	}
	store := make([]bin, len(roles)) // one allocation: Place runs for every review and round
	bins := make([]*bin, 0, len(roles))
	for i, r := range roles {
		b := &store[i]
		*b = bin{index: r.Index, usable: r.usable(), trust: r.Trust, measure: r.Trust}
		if rs := opt.Reserved[r.Index]; len(rs) > 0 && b.usable {
			for _, s := range rs {
				b.measure, _ = b.measure.WithSubject(s)
			}
			b.padded = true
		}
		bins = append(bins, b)
	}
	planned := plannedBins(bins, opt)
	lists := newListings(bins, len(subjects))
	out := Placement{Decisions: make([]Decision, 0, len(subjects))}
	for _, sub := range subjects {
		d := Decision{Subject: sub}
		if b := lists.find(bins, sub); b != nil {
			d.Index, d.Listed = b.index, true
		} else if idx, ok := hintedNew(bins, planned, opt.Hints, sub, quota, limit); ok {
			d = openRoleAt(&bins, idx, sub, quota, opt.Seed)
			if d.Creates && opt.Seed == nil {
				out.NeedSeed = true
			}
		} else if b := firstFit(bins, planned, sub, quota, opt.Hints); b != nil {
			lists.added(b, sub)
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
			continue
		}
		if len(b.added) > 0 {
			out.Writes = append(out.Writes, TrustWrite{Index: b.index, Trust: b.trust, Added: b.added})
		}
	}
	return out
}

// plannedBins are the roles reservations planned that do not exist yet, lowest index first.
// Without the seed their size is unknown: they only take their index.
func plannedBins(bins []*bin, opt PlaceOptions) []*bin {
	var out []*bin
	for idx, subs := range opt.Reserved {
		if slices.ContainsFunc(bins, func(b *bin) bool { return b.index == idx }) {
			continue
		}
		b := &bin{index: idx, planned: true}
		if opt.Seed != nil {
			if p, err := DeriveTrustPolicy(*opt.Seed, subs); err == nil {
				b.usable, b.trust, b.measure = true, p, p
			}
		}
		out = append(out, b)
	}
	slices.SortFunc(out, func(a, b *bin) int { return a.index - b.index })
	return out
}

// listing is the lowest usable role that lists sub already.
func listing(bins []*bin, sub string) *bin {
	for _, b := range bins {
		if b.usable && !b.created && b.trust.Has(sub) {
			return b
		}
	}
	return nil
}

// listings answers listing for a batch from an index of every subject the roles list, lowest
// index first: a burst's subjects were each searched for in every role (45 roles, ~330 subjects
// a step in benchtool sim), a quarter of Place. Only existing usable roles are indexed, as
// listing looks at no other; a subject a round adds to one joins the index (added).
type listings struct {
	index map[string]*bin // nil: too few subjects to pay for it, listing searches
}

// indexFrom is the batch size from which the index pays for itself: building it hashes every
// listed subject (~1,000 in benchtool sim), about what 16 subjects' searches cost over 45 roles.
const indexFrom = 16

func newListings(bins []*bin, subjects int) listings {
	if subjects < indexFrom {
		return listings{}
	}
	n := 0
	for _, b := range bins {
		n += b.trust.Len()
	}
	l := listings{index: make(map[string]*bin, n+subjects)}
	for _, b := range bins { // by index: the lowest role listing a subject is kept
		if !b.usable || b.created {
			continue
		}
		for _, sub := range b.trust.subjects {
			if _, ok := l.index[sub]; !ok {
				l.index[sub] = b
			}
		}
	}
	return l
}

// find is listing(bins, sub).
func (l listings) find(bins []*bin, sub string) *bin {
	if l.index == nil {
		return listing(bins, sub)
	}
	return l.index[sub]
}

// added records that firstFit put sub into b, which lists it from now on (a role this placement
// creates is not listed: listing skips it). firstFit only runs for a subject listed nowhere, so
// b is the lowest role listing it.
func (l listings) added(b *bin, sub string) {
	if l.index != nil && b.usable && !b.created && !b.planned {
		l.index[sub] = b
	}
}

// firstFit adds sub to the first role that can take it: the hinted one, then every role by
// index, then the planned ones. It runs only for a subject listing found in no role, so the
// existing roles' trust policies lack it (see bin.add).
func firstFit(bins, planned []*bin, sub string, quota int, hints map[string]int) *bin {
	runes := utf8.RuneCountInString(sub)
	var hinted *bin
	if idx, ok := hints[sub]; ok {
		if i := slices.IndexFunc(bins, func(b *bin) bool { return b.index == idx }); i >= 0 && bins[i].add(sub, runes, quota) {
			return bins[i]
		} else if i >= 0 {
			hinted = bins[i]
		}
	}
	for _, b := range bins {
		if b != hinted && b.add(sub, runes, quota) {
			return b
		}
	}
	for _, b := range planned {
		if b.add(sub, runes, quota) {
			return b
		}
	}
	return nil
}

// add puts sub (of runes characters) into b when it fits under quota. Only for a subject that no
// existing usable role lists (firstFit).
func (b *bin) add(sub string, runes, quota int) bool {
	if !b.usable {
		return false
	}
	if !b.created && !b.planned && !b.padded && b.measure.Len() > 0 {
		// Fit's test for a full role, without its search for sub (measure is trust, which lacks
		// sub) nor its count of sub's characters for every role: a burst's subject is tried
		// against every full role before the one with room, and these were half of Place.
		if !b.measured {
			b.size, b.sizeErr = b.measure.Size()
			b.stmts, b.measured = b.measure.OIDCStatements(), true
		}
		if b.sizeErr != nil || b.size+b.stmts*(runes+3) > quota {
			return false
		}
	}
	next, _, ok, err := Fit(b.measure, sub, quota)
	if err != nil || !ok {
		return false
	}
	b.measure, b.measured = next, false
	if b.padded {
		b.trust, _ = b.trust.WithSubject(sub)
	} else {
		b.trust = next
	}
	b.added = append(b.added, sub)
	return true
}

// openRole places sub in a new role at the lowest free index, inserted among bins by index so
// the next subjects can join it.
func openRole(bins *[]*bin, planned []*bin, sub string, quota, limit int, seed *TrustPolicy) Decision {
	idx := freeIndex(*bins, planned)
	if idx >= limit {
		return Decision{Subject: sub, Err: fmt.Errorf("%w: all %d derived roles are full or planned (raise --role-creation-limit or the ACLSizePerRole quota)", ErrRoleLimitReached, limit)}
	}
	return openRoleAt(bins, idx, sub, quota, seed)
}

// newRoleHintSlack bounds the roles a hint for a role that does not exist yet may leave with
// room behind it: the hinted index is at most this far past the lowest free one, and at most
// this many usable roles could take the subject instead (hintedNew).
const newRoleHintSlack = 2

// hintedNew reports the index the writer creates a role at for sub, when admission planned sub
// into a role that does not exist yet (a hint naming no role, created or planned, here). Without
// it, a burst's plans missed even on one replica: the writer gave every new role the lowest free
// index and filled it in queue order, so when a subject planned for the next role was queued
// before the last ones planned for this one, it took their room, they overflowed into the next
// role, and every plan after them was off by one (e2e BenchmarkFlowCreationToTrust, one replica:
// 640 of 1,000 plans missed).
//
// Hints come from reservations, which reviews make, and a review proves nothing: a chain of
// plans naming the next index each could otherwise have the writer create a role for every
// subject, up to the role creation limit, while earlier roles have room. So the index must be
// below limit and at most newRoleHintSlack past the lowest free one, and at most
// newRoleHintSlack usable roles may have room for sub: in an honest burst those are the roles
// whose last planned subjects are still to come; past that, sub goes by first fit.
func hintedNew(bins, planned []*bin, hints map[string]int, sub string, quota, limit int) (int, bool) {
	idx, ok := hints[sub]
	if !ok || idx < 0 || idx >= limit {
		return 0, false
	}
	has := func(b *bin) bool { return b.index == idx }
	if slices.ContainsFunc(bins, has) || slices.ContainsFunc(planned, has) {
		return 0, false // firstFit tries it (bins), or reservations own it (planned)
	}
	if idx > freeIndex(bins, planned)+newRoleHintSlack {
		return 0, false
	}
	roomy := 0
	for _, b := range bins {
		if !b.usable {
			continue
		}
		if _, _, fits, err := Fit(b.measure, sub, quota); err == nil && fits {
			if roomy++; roomy > newRoleHintSlack {
				return 0, false
			}
		}
	}
	return idx, true
}

// openRoleAt creates the role idx (not taken) for sub.
func openRoleAt(bins *[]*bin, idx int, sub string, quota int, seed *TrustPolicy) Decision {
	b := &bin{index: idx, created: true, added: []string{sub}}
	if seed != nil {
		p, err := DeriveTrustPolicy(*seed, []string{sub})
		if err != nil {
			return Decision{Subject: sub, Err: err}
		}
		size, err := p.Size()
		if err != nil {
			return Decision{Subject: sub, Err: err}
		}
		if size > quota {
			return Decision{Subject: sub, Err: fmt.Errorf("%w: the trust policy would be %d characters, quota %d", ErrSubjectTooLarge, size, quota)}
		}
		b.usable, b.trust, b.measure = true, p, p
	}
	i, _ := slices.BinarySearchFunc(*bins, idx, func(x *bin, idx int) int { return x.index - idx })
	*bins = slices.Insert(*bins, i, b)
	return Decision{Subject: sub, Index: idx, Creates: true}
}

// freeIndex is the lowest index neither a role nor planned.
func freeIndex(bins, planned []*bin) int {
	taken := make(map[int]bool, len(bins)+len(planned))
	for _, b := range bins {
		taken[b.index] = true
	}
	for _, b := range planned {
		taken[b.index] = true
	}
	i := 0
	for taken[i] {
		i++
	}
	return i
}

// After returns roles as they are once p is written: Writes applied, Creates added, by index.
func (p Placement) After(roles []RoleView) []RoleView {
	out := slices.Clone(roles)
	for _, c := range p.Creates {
		out = append(out, RoleView{Index: c.Index, Trust: c.Trust})
	}
	for _, w := range p.Writes {
		if i := slices.IndexFunc(out, func(r RoleView) bool { return r.Index == w.Index }); i >= 0 {
			out[i].Trust = w.Trust
		}
	}
	slices.SortStableFunc(out, func(a, b RoleView) int { return a.Index - b.Index })
	return out
}
