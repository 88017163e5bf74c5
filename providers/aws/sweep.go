package aws

import (
	"context"
	"errors"
	"fmt"

	corev1 "k8s.io/api/core/v1"

	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/markers"
	"go.klusters.dev/credential-webhook/sweeper"
)

// Cloud is AWS as the writer and the sweeper see it (sweeper.Cloud).
type Cloud struct{ Assigner *Assigner }

func (Cloud) Name() string { return markers.AWS }

func (Cloud) Claim(ann map[string]string) (markers.Claim, bool) { return ClaimOf(ann) }

func (Cloud) Outputs() []string { return []string{annotations.AWSRoleARN} }

// Finish adds the ServiceAccount, persisted and still claiming its seed (the caller checked), to
// a derived role of the seed and returns the role ARN to set. The seed is checked against the
// allowlist again: the list may have changed since admission.
func (c Cloud) Finish(ctx context.Context, sa *corev1.ServiceAccount) (map[string]string, error) {
	seed, err := ParseRoleARN(sa.Annotations[annotations.SeedRole])
	if err != nil {
		return nil, fmt.Errorf("%w: seed role annotation: %w", markers.ErrRefused, err)
	}
	res, err := c.Assigner.Assign(ctx, seed, sa.Namespace, sa.Name)
	if Permanent(err) {
		return nil, fmt.Errorf("%w: %w", markers.ErrRefused, err)
	}
	if err != nil {
		return nil, err
	}
	return map[string]string{annotations.AWSRoleARN: res.RoleARN}, nil
}

// Permanent reports errors that retrying cannot cure for this ServiceAccount and seed.
func Permanent(err error) bool {
	return errors.Is(err, ErrNotAllowed) || errors.Is(err, ErrSeedMismatch) || errors.Is(err, ErrSeedNotOIDC) ||
		errors.Is(err, ErrInvalidSubject) || errors.Is(err, ErrSubjectTooLarge) || errors.Is(err, ErrInvalidARN)
}

// Collector removes from every derived role the subjects whose ServiceAccount no longer
// exists or lost its standing for the seed (markers.Keeps: re-created under the same name, or
// no longer asking for that seed). Seeds says which seeds to look at: the server's own (those it
// holds a lock Lease for, that is wrote for), never seeds named by ServiceAccount annotations.
// Only seeds the allowlist allows are collected. It is a sweeper.ScopedCollector: a scope is
// one seed.
type Collector struct {
	Assigner *Assigner
	Seeds    func(ctx context.Context) ([]string, error)
}

// Scopes lists the configured seeds to collect (sweeper.ScopedCollector), each with the claim
// a ServiceAccount granted that seed carries. Seeds that are no ARN or not allowed cost nothing.
func (c Collector) Scopes(ctx context.Context) ([]sweeper.Scope, error) {
	seeds, err := c.Seeds(ctx)
	if err != nil {
		return nil, err
	}
	var out []sweeper.Scope
	seen := map[string]bool{}
	for _, s := range seeds {
		seed, err := ParseRoleARN(s)
		if err != nil || c.Assigner.allowed(seed) != nil || seen[seed.String()] {
			continue
		}
		seen[seed.String()] = true
		out = append(out, sweeper.Scope{Key: seed.String(), Claim: SeedClaim(seed)})
	}
	return out, nil
}

// Collect collects every scope: one ListRoles and one GetRole per derived role per seed (Roles),
// plus one UpdateAssumeRolePolicy per role that changed.
func (c Collector) Collect(ctx context.Context, lookup markers.Lookup) (int, error) {
	scopes, err := c.Scopes(ctx)
	if err != nil {
		return 0, err
	}
	removed := 0
	var errs []error
	for _, s := range scopes {
		n, err := c.CollectScope(ctx, s, lookup)
		removed += n
		if err != nil {
			errs = append(errs, err)
		}
	}
	return removed, errors.Join(errs...)
}

// CollectScope collects one seed (sweeper.ScopedCollector).
func (c Collector) CollectScope(ctx context.Context, scope sweeper.Scope, lookup markers.Lookup) (int, error) {
	seed, err := ParseRoleARN(scope.Key)
	if err != nil {
		return 0, err
	}
	if err := c.Assigner.allowed(seed); err != nil {
		return 0, nil // no longer configured: nothing of ours to look at
	}
	roles, err := c.Assigner.Roles(ctx, seed)
	if err != nil {
		return 0, fmt.Errorf("listing derived roles of %s: %w", seed, err)
	}
	want := SeedClaim(seed)
	var gone []string
	for _, r := range roles {
		if !r.Owned {
			continue
		}
		for _, sub := range r.Subjects {
			ns, name, err := ParseSubject(sub)
			if err != nil {
				continue
			}
			if sa, exists := lookup(ns, name); !markers.Keeps(sa, exists, ClaimOf, want) {
				gone = append(gone, sub)
			}
		}
	}
	if len(gone) == 0 {
		return 0, nil
	}
	n, err := c.Assigner.Remove(ctx, seed, gone)
	if err != nil {
		return n, fmt.Errorf("removing %d subjects from %s: %w", len(gone), seed, err)
	}
	return n, nil
}
