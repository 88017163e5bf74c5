package aws

import (
	"context"
	"errors"
	"fmt"
	"slices"
)

// Remove takes subjects out of every derived role of seed that lists them (garbage collection of
// deleted ServiceAccounts) and returns how many entries it removed. Space freed this way is
// reused by the next Assign (first fit). Roles left empty are kept: see DeleteEmpty.
func (a *Assigner) Remove(ctx context.Context, seed RoleARN, subjects []string) (int, error) {
	for _, sub := range subjects {
		if _, _, err := ParseSubject(sub); err != nil {
			return 0, err
		}
	}
	s, done, err := a.begin(ctx, seed)
	if err != nil {
		return 0, err
	}
	defer done()
	removed := 0
	var errs []error
	for _, r := range s.st.roles {
		if r.bad != nil || r.owner == ownerOther {
			continue
		}
		cand, n := r.trust.WithoutSubjects(subjects...)
		if n == 0 {
			continue
		}
		if err := s.ensureOwned(ctx, r); errors.Is(err, errForeign) {
			continue
		} else if err != nil {
			errs = append(errs, err)
			continue
		}
		if err := s.writeTrust(ctx, r, cand); err != nil {
			errs = append(errs, err)
			continue
		}
		removed += n
		a.log.Info("removed ServiceAccounts from derived role", "role", r.arn.String(), "removed", n, "left", cand.Len())
	}
	if err := errors.Join(errs...); err != nil {
		return removed, fmt.Errorf("removing subjects from derived roles of %s: %w", seed, err)
	}
	return removed, nil
}

// DeleteEmpty deletes derived roles of seed that list no subject (detaching and deleting their
// policies first, as IAM requires) and returns their ARNs. Empty roles are cheap to keep and a
// busy cluster refills them quickly, so the sweeper calls this sparingly.
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
