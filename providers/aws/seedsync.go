package aws

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"
)

// SyncReport is what one SyncFromSeed wrote: the number of IAM writes by action
// ("iam:PutRolePolicy"), a bounded set of keys.
type SyncReport struct {
	Writes map[string]int
}

func (r *SyncReport) count(ws []write) {
	for _, w := range ws {
		if r.Writes == nil {
			r.Writes = map[string]int{}
		}
		action, _, _ := strings.Cut(w.action(), " ")
		r.Writes[action]++
	}
}

// SyncFromSeed re-reads the seed and makes every derived role match it again: attached and inline
// policies (extras removed, changed documents rewritten), permissions boundary, description, max
// session duration, tags, and the trust statements (subjects kept). A role whose subjects would
// no longer fit under the quota with the seed's new statements keeps its old trust policy and is
// reported in the error. The seed it read replaces the cached one (see SeedTTL). Roles read here
// also tell ExpireEmpty their marks, so a garbage collection pass reads each role once. The roles
// are listed afresh first (beginSession's reload): the trust policy compared with the seed is
// IAM's, so a statement added outside this server is found and removed.
func (a *Assigner) SyncFromSeed(ctx context.Context, seed RoleARN) (SyncReport, error) {
	var rep SyncReport
	s, done, err := a.beginSession(ctx, seed, true)
	if err != nil {
		return rep, err
	}
	defer done()
	spec, err := s.readSeed(ctx, true)
	if err != nil {
		return rep, err
	}
	s.st.setSeed(spec, a.now())
	quota := a.quotaFor(ctx)
	var errs []error
	for _, r := range s.st.roles {
		if r.bad != nil || r.owner == ownerOther {
			continue
		}
		// r.trust is usually what this process last wrote, and what IAM returns: not parsed again.
		target, err := readRoleKnown(ctx, a.api, r.arn.Name, a.provider(seed), true, r.trust)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if s.setOwner(r, target); r.owner != ownerUs {
			continue
		}
		r.mark = markOf(target.tags)
		// The mark is ours, not the seed's: policyDiff would remove it as a tag the seed lacks.
		target.tags = maps.Clone(target.tags)
		delete(target.tags, EmptySinceTag)
		ws, err := s.syncDrift(ctx, spec, target)
		rep.count(ws)
		if err != nil {
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
		rep.count([]write{updateTrust{role: r.arn.Name}})
		if err := s.writeTrust(ctx, r, want); err != nil {
			errs = append(errs, err)
			continue
		}
		a.log.Info("re-synced trust statements from seed", "role", r.arn.String())
	}
	if err := errors.Join(errs...); err != nil {
		return rep, fmt.Errorf("syncing derived roles of %s: %w", seed, err)
	}
	return rep, nil
}

// syncDrift sends the writes that make target match seed (policyDiff, full) and returns the ones
// it sent, a failed one included. seed must have been read with its inline documents.
func (s *session) syncDrift(ctx context.Context, seed, target *roleSpec) ([]write, error) {
	if err := seed.readInlineDocs(ctx, s.a.api, inlineDocsNeeded(seed, target, true)); err != nil {
		return nil, err
	}
	ws, err := policyDiff(seed, target, true)
	if err != nil {
		return nil, err
	}
	before := s.w.sent()
	err = s.w.apply(ctx, ws...)
	if len(ws) > 0 {
		s.a.log.Info("repaired drift of a derived role from its seed", "role", target.arn.String(), "writes", s.w.sent()-before)
	}
	return ws[:s.w.sent()-before], err
}
