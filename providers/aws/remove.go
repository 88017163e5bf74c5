package aws

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iam"

	"go.klusters.dev/credential-webhook/annotations"
)

// removeWriters is how many derived roles a collection writes at once.
const removeWriters = 8

// EmptySinceTag marks a derived role that lists no subject with the time (RFC 3339, UTC) it
// became empty. It lives on the role itself so that the time survives restarts and is the same
// for every replica; ExpireEmpty deletes the role once it is older than the grace. The IAM policy
// allows TagRole with this key (restating the seed tag) and UntagRole of it (see doc.go).
const EmptySinceTag = "credential-webhook.klusters.dev/empty-since"

// Remove takes subjects out of every derived role of seed that lists them (garbage collection of
// deleted ServiceAccounts) and returns how many entries it removed. Space freed this way is
// reused by the next Assign (first fit). A role left empty is kept, marked empty since now
// (EmptySinceTag): ExpireEmpty deletes it after a grace. It lists the roles afresh in its lock
// session: the full pass judges what Roles read from IAM, and a subject added there outside this
// server is in no cache (beginSession's reload).
func (a *Assigner) Remove(ctx context.Context, seed RoleARN, subjects []string) (int, error) {
	for _, sub := range subjects {
		if _, _, err := ParseSubject(sub); err != nil {
			return 0, err
		}
	}
	return a.removeWhere(ctx, seed, true, func(int) []string { return subjects })
}

// RemoveUnless takes out of seed's derived roles every subject keep refuses, deciding on the
// published view of the roles (what the last lock session left) instead of reading every role
// again, so a collection after a deletion costs the trust policy writes and no read. keep is
// asked outside the seed's lock: it may call the Kubernetes API (an existence check), and the
// lock must stay short. The removal itself runs in a lock session whose generation check reloads
// the roles when another replica wrote since; subjects that reload reveals are judged in one
// more round, so a subject written by another replica is collected in the same call. (A full
// pass reads IAM afresh with Roles, for what no generation can show: edits in the console.)
func (a *Assigner) RemoveUnless(ctx context.Context, seed RoleARN, keep func(subject string) bool) (int, error) {
	if err := a.allowed(seed); err != nil {
		return 0, err
	}
	st := a.state(seed)
	removed := 0
	var judged *planView // the view the previous round judged
	for round := 0; round < 3; round++ {
		v := st.publishedView()
		gone := map[int][]string{} // by role index
		fresh := unjudged(judged, v, func(index int, sub string) {
			if !keep(sub) {
				gone[index] = append(gone[index], sub)
			}
		})
		if round > 0 && !fresh {
			break // the lock session showed nothing this replica had not judged
		}
		judged = v
		// Always one session, even with nothing gone: its generation check is what reveals
		// subjects another replica wrote (the ServiceAccount just deleted may be one of them).
		// Each role is searched for the subjects judged gone in it: a subject is never moved
		// from one role to another, and one the session's reload shows in a role it was not
		// judged in is judged there in the next round. (Searching every role for every gone
		// subject, and keeping a set of the judged ones, hashed or compared each ~60-byte
		// subject twice a collection: 7 % of benchtool sim's CPU.)
		n, err := a.removeWhere(ctx, seed, false, func(index int) []string { return gone[index] })
		removed += n
		if err != nil {
			return removed, err
		}
	}
	return removed, nil
}

// unjudged calls judge with every subject of v's usable roles that prev (nil: none) did not
// list in the same role, and that role's index, and reports whether there was one. Only a lock
// session that reloaded roles written by another replica, or placed subjects, shows a subject
// its previous view did not: the sessions of RemoveUnless itself only take subjects out.
func unjudged(prev, v *planView, judge func(index int, sub string)) (fresh bool) {
	if v == nil {
		return false
	}
	var before map[int][]string
	if prev != nil {
		before = make(map[int][]string, len(prev.roles))
		for _, r := range prev.roles {
			if r.usable() {
				before[r.Index] = r.Trust.subjects
			}
		}
	}
	for _, r := range v.roles {
		if !r.usable() {
			continue
		}
		old, cur := before[r.Index], r.Trust.subjects
		if len(cur) == 0 || len(old) == len(cur) && &old[0] == &cur[0] {
			continue // the same list: every subject of it was judged
		}
		for _, sub := range sortedMinus(cur, old) {
			fresh = true
			judge(r.Index, sub)
		}
	}
	return fresh
}

// sortedMinus returns the strings of a that b lacks; a and b are sorted.
func sortedMinus(a, b []string) []string {
	if len(b) == 0 {
		return a
	}
	var out []string
	j := 0
	for _, s := range a {
		for j < len(b) && b[j] < s {
			j++
		}
		if j == len(b) || b[j] != s {
			out = append(out, s)
		}
	}
	return out
}

// publishedView is the view the last lock session left, nil before the first.
func (st *seedState) publishedView() *planView {
	st.plan.mu.Lock()
	defer st.plan.mu.Unlock()
	return st.plan.view
}

// removeWhere removes from each derived role of seed the subjects gone names for its index (those
// the role does not list are ignored), under the seed's lock; reload lists the roles again first
// (beginSession).
func (a *Assigner) removeWhere(ctx context.Context, seed RoleARN, reload bool, gone func(index int) []string) (int, error) {
	s, done, err := a.beginSession(ctx, seed, reload)
	if err != nil {
		return 0, err
	}
	defer done()
	type removal struct {
		r    *roleState
		cand TrustPolicy
		n    int
	}
	var todo []removal
	for _, r := range s.st.roles {
		if r.bad != nil || r.owner == ownerOther {
			continue
		}
		subjects := gone(r.index)
		if len(subjects) == 0 {
			continue
		}
		if cand, n := r.trust.WithoutSubjects(subjects...); n > 0 {
			todo = append(todo, removal{r: r, cand: cand, n: n})
		}
	}
	// The roles' writes run removeWriters at a time: one after the other, a collection that
	// touched 25 roles held the seed's lock for 25 IAM round trips (2.5 s at 100 ms), and every
	// assignment queued behind it waited that long. A few workers rather than a goroutine per
	// role: each new goroutine grew its stack to a write's depth (3.5 % of benchtool sim's CPU).
	var mu sync.Mutex // guards removed
	errs := make([]error, len(todo))
	removed := 0
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(len(todo), removeWriters) {
		wg.Go(func() {
			for i := int(next.Add(1) - 1); i < len(todo); i = int(next.Add(1) - 1) {
				t := todo[i]
				if err := s.ensureOwned(ctx, t.r); errors.Is(err, errForeign) {
					continue
				} else if err != nil {
					errs[i] = err
					continue
				}
				if err := s.writeTrust(ctx, t.r, t.cand); err != nil {
					errs[i] = err
					continue
				}
				mu.Lock()
				removed += t.n
				mu.Unlock()
				a.log.Info("removed ServiceAccounts from derived role", "role", t.r.arn.String(), "removed", t.n, "left", t.cand.Len())
				if t.cand.Len() == 0 {
					// Stamped every time a role becomes empty, so a mark left from an earlier
					// emptiness (the role filled up and emptied again since) never shortens
					// the grace. A failure is no failure of the removal: the next ExpireEmpty
					// marks it.
					if err := s.markEmpty(ctx, t.r, a.now()); err != nil {
						a.log.Warn("cannot mark an emptied derived role; the next garbage collection does", "role", t.r.arn.String(), "err", err)
					}
				}
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return removed, fmt.Errorf("removing subjects from derived roles of %s: %w", seed, err)
	}
	return removed, nil
}

// EmptyReport is what one ExpireEmpty did.
type EmptyReport struct {
	Deleted  []string // ARNs of the derived roles deleted
	Marked   int      // empty roles found without a mark, marked empty since now
	Unmarked int      // marks removed from roles that have subjects again
}

// emptyRole is what the expiry decision knows of one derived role.
type emptyRole struct {
	Subjects  int
	Owned     bool // carries our seed tag (read)
	Broken    bool // its trust policy is unreadable
	Reserved  bool // admission planned a subject into it, the writer has not written it yet
	MarkKnown bool // its tags were read
	Since     time.Time
}

type emptyVerdict int8

const (
	keepRole   emptyVerdict = iota
	markRole                // empty and not marked: mark it empty since now
	unmarkRole              // has subjects, still marked from an earlier emptiness
	expireRole              // empty for longer than the grace: delete it
)

// expiryVerdict decides what to do with one derived role, given now and the grace (> 0; 0 or
// less keeps every role and writes nothing). Only roles we own, that are empty, marked for longer
// than the grace and not promised to a subject by admission are deleted. A mark from the future
// (another replica's clock, a hand edit) is replaced: counting the grace from a time that has not
// come yet would keep the role forever. Index holes left by a deletion are fine: placement takes
// the lowest free index, so the next role needed fills the hole.
func expiryVerdict(r emptyRole, now time.Time, grace time.Duration) emptyVerdict {
	switch {
	case grace <= 0 || !r.Owned || r.Broken || !r.MarkKnown:
		return keepRole
	case r.Subjects > 0:
		if !r.Since.IsZero() {
			return unmarkRole
		}
		return keepRole
	case r.Since.IsZero() || r.Since.After(now):
		return markRole
	case r.Reserved || now.Sub(r.Since) < grace:
		return keepRole
	}
	return expireRole
}

// ExpireEmpty deletes the derived roles of seed that have listed no subject for longer than
// grace, marks newly empty ones and unmarks refilled ones (expiryVerdict). It runs under the
// seed's lock, like every assignment, so no placement can land in a role while it is deleted;
// every role the cache shows empty is read again under that lock (one GetRole) and decided on
// what IAM says now. A role that is not tagged as ours is never touched, nor is the seed.
func (a *Assigner) ExpireEmpty(ctx context.Context, seed RoleARN, grace time.Duration) (EmptyReport, error) {
	return a.expireEmpty(ctx, seed, grace, a.now)
}

func (a *Assigner) expireEmpty(ctx context.Context, seed RoleARN, grace time.Duration, clock func() time.Time) (EmptyReport, error) {
	var rep EmptyReport
	if grace <= 0 {
		return rep, nil
	}
	s, done, err := a.begin(ctx, seed)
	if err != nil {
		return rep, err
	}
	defer done()
	reserved := s.st.reservedIndexes(clock())
	var errs []error
	for _, r := range slices.Clone(s.st.roles) {
		if r.bad != nil || r.owner == ownerOther || r.arn == seed {
			continue
		}
		in := emptyRole{Subjects: r.trust.Len(), Owned: r.owner == ownerUs, Reserved: reserved[r.index], MarkKnown: r.mark.known, Since: r.mark.since}
		if in.Subjects == 0 {
			fresh, err := s.reread(ctx, r)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			in.Owned, in.MarkKnown, in.Since = r.owner == ownerUs, true, r.mark.since
			in.Broken = fresh.bad != nil
			if fresh.bad == nil && fresh.trust.Len() > 0 {
				// The cache is behind IAM: never delete on it; the next session reloads.
				s.st.loaded = false
				continue
			}
		}
		now := clock()
		switch expiryVerdict(in, now, grace) {
		case markRole:
			if err := s.markEmpty(ctx, r, now); err != nil {
				errs = append(errs, err)
				continue
			}
			rep.Marked++
		case unmarkRole:
			if err := s.unmark(ctx, r); err != nil {
				errs = append(errs, err)
				continue
			}
			rep.Unmarked++
		case expireRole:
			if err := s.deleteRole(ctx, r); err != nil {
				errs = append(errs, err)
				continue
			}
			rep.Deleted = append(rep.Deleted, r.arn.String())
			a.log.Info("deleted derived role empty for longer than the grace", "role", r.arn.String(), "emptySince", in.Since, "grace", grace)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return rep, fmt.Errorf("expiring empty derived roles of %s: %w", seed, err)
	}
	return rep, nil
}

// rereadResult is a role as one GetRole shows it.
type rereadResult struct {
	trust TrustPolicy
	bad   error
}

// reread reads r again (one GetRole) and records its owner and mark. The trust policy is
// returned, not cached: an eventually consistent read must not replace this replica's own
// latest write in the cache.
func (s *session) reread(ctx context.Context, r *roleState) (rereadResult, error) {
	out, err := s.a.api.GetRole(ctx, &iam.GetRoleInput{RoleName: aws.String(r.arn.Name)})
	if err != nil {
		return rereadResult{}, fmt.Errorf("iam:GetRole %s: %w", r.arn.Name, err)
	}
	tags := map[string]string{}
	for _, t := range out.Role.Tags {
		tags[aws.ToString(t.Key)] = aws.ToString(t.Value)
	}
	arn, err := ParseRoleARN(aws.ToString(out.Role.Arn))
	if err != nil {
		return rereadResult{}, err
	}
	s.setOwner(r, &roleSpec{arn: arn, tags: tags})
	r.mark = markOf(tags)
	var res rereadResult
	res.trust, res.bad = ParseTrustPolicyFor(aws.ToString(out.Role.AssumeRolePolicyDocument), s.a.provider(s.seed))
	return res, nil
}

// markEmpty tags r as empty since now, restating the seed tag as the IAM policy requires.
func (s *session) markEmpty(ctx context.Context, r *roleState, now time.Time) error {
	since := now.UTC().Truncate(time.Second)
	err := s.w.apply(ctx, tagRole{role: r.arn.Name, tags: map[string]string{
		annotations.SeedTag: s.seed.String(),
		EmptySinceTag:       since.Format(time.RFC3339),
	}})
	if err != nil {
		r.mark = emptyMark{}
		return err
	}
	r.mark = emptyMark{known: true, since: since}
	return nil
}

// unmark removes r's EmptySinceTag.
func (s *session) unmark(ctx context.Context, r *roleState) error {
	if err := s.w.apply(ctx, untagRole{role: r.arn.Name, keys: []string{EmptySinceTag}}); err != nil {
		r.mark = emptyMark{}
		return err
	}
	r.mark = emptyMark{known: true}
	return nil
}

// DeleteEmpty deletes derived roles of seed that list no subject (detaching and deleting their
// policies first, as IAM requires) and returns their ARNs, at once and whatever their marks say:
// the operator's tool. Garbage collection uses ExpireEmpty, which waits for a grace.
func (a *Assigner) DeleteEmpty(ctx context.Context, seed RoleARN) ([]string, error) {
	s, done, err := a.begin(ctx, seed)
	if err != nil {
		return nil, err
	}
	defer done()
	var deleted []string
	var errs []error
	for _, r := range slices.Clone(s.st.roles) {
		if r.bad != nil || r.owner == ownerOther || r.trust.Len() > 0 {
			continue
		}
		if err := s.ensureOwned(ctx, r); errors.Is(err, errForeign) {
			continue
		} else if err != nil {
			errs = append(errs, err)
			continue
		}
		if err := s.deleteRole(ctx, r); err != nil {
			errs = append(errs, err)
			continue
		}
		deleted = append(deleted, r.arn.String())
	}
	return deleted, errors.Join(errs...)
}

// deleteRole deletes r (deletionWrites). A write that finds its target gone is no failure: an
// abandoned attempt of an earlier session was applied after all.
func (s *session) deleteRole(ctx context.Context, r *roleState) error {
	spec := &roleSpec{arn: r.arn}
	if err := readPolicies(ctx, s.a.api, spec, false); err != nil {
		return err
	}
	for _, op := range deletionWrites(spec) {
		err := s.w.apply(ctx, op)
		if err == nil || isNoSuchEntity(err) {
			continue
		}
		if _, last := op.(deleteRole); last {
			s.st.loaded = false
		}
		return err
	}
	s.st.roles = slices.DeleteFunc(s.st.roles, func(x *roleState) bool { return x == r })
	s.a.log.Info("deleted empty derived role", "role", r.arn.String())
	return nil
}
