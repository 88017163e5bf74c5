package aws

import (
	"context"
	"errors"
	"fmt"
)

// SyncFromSeed re-reads the seed and makes every derived role match it again: attached and inline
// policies (extras removed, changed documents rewritten), permissions boundary, description, max
// session duration, tags, and the trust statements (subjects kept). A role whose subjects would
// no longer fit under the quota with the seed's new statements keeps its old trust policy and is
// reported in the error.
func (a *Assigner) SyncFromSeed(ctx context.Context, seed RoleARN) error {
	s, done, err := a.begin(ctx, seed)
	if err != nil {
		return err
	}
	defer done()
	spec, err := s.readSeed(ctx, true)
	if err != nil {
		return err
	}
	s.st.spec = spec
	quota := a.quotaFor(ctx)
	var errs []error
	for _, r := range s.st.roles {
		if r.bad != nil || r.owner == ownerOther {
			continue
		}
		target, err := readRoleFor(ctx, a.api, r.arn.Name, a.provider(seed), true)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if s.setOwner(r, target); r.owner != ownerUs {
			continue
		}
		if _, err := s.syncRole(ctx, spec, target, true); err != nil {
			errs = append(errs, err)
			continue
		}
		r.complete = true
		want, err := DeriveTrustPolicy(spec.trust, r.trust.Subjects())
		if err != nil {
			errs = append(errs, err)
			continue
		}
		wantJS, err1 := want.JSON()
		haveJS, err2 := r.trust.JSON()
		if err := errors.Join(err1, err2); err != nil {
			errs = append(errs, err)
			continue
		}
		if wantJS == haveJS {
			continue
		}
		if size, _ := want.Size(); size > quota {
			errs = append(errs, fmt.Errorf("derived role %s: with the seed's current trust statements its %d subjects need %d characters, quota %d", r.arn, want.Len(), size, quota))
			continue
		}
		if err := s.writeTrust(ctx, r, want); err != nil {
			errs = append(errs, err)
			continue
		}
		a.log.Info("re-synced trust statements from seed", "role", r.arn.String())
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("syncing derived roles of %s: %w", seed, err)
	}
	return nil
}
