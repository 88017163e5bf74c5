package aws

import (
	"context"
	"errors"
	"fmt"

	corev1 "k8s.io/api/core/v1"

	"go.klusters.dev/credential-webhook/annotations"
)

// Finish assigns a ServiceAccount admission accepted but could not finish (it carries our
// pending marker; the sweeper checks that). It returns the annotations to set. The seed is checked
// against the allowlist again: the list may have changed since admission.
func (a *Assigner) Finish(ctx context.Context, sa *corev1.ServiceAccount) (map[string]string, error) {
	raw := sa.Annotations[annotations.SeedRole]
	if raw == "" {
		return nil, nil
	}
	seed, err := ParseRoleARN(raw)
	if err != nil {
		return nil, fmt.Errorf("seed role annotation: %w", err)
	}
	res, err := a.Assign(ctx, seed, sa.Namespace, sa.Name)
	if err != nil {
		return nil, err
	}
	return map[string]string{annotations.AWSRoleARN: res.RoleARN}, nil
}

// Collector removes from every derived role the subjects whose ServiceAccount no longer
// exists. Seeds says which seeds to look at (those named by live ServiceAccounts and those with a
// lock Lease: a seed whose last ServiceAccount was deleted still has its Lease).
type Collector struct {
	Assigner *Assigner
	Seeds    func(ctx context.Context) ([]string, error)
}

// Collect costs one ListRoles and one GetRole per derived role per seed (Roles), plus one
// UpdateAssumeRolePolicy per role that changed.
func (c Collector) Collect(ctx context.Context, existing func(namespace, name string) bool) (int, error) {
	seeds, err := c.Seeds(ctx)
	if err != nil {
		return 0, err
	}
	removed := 0
	var errs []error
	for _, s := range seeds {
		seed, err := ParseRoleARN(s)
		if err != nil || c.Assigner.allowed(seed) != nil {
			continue
		}
		roles, err := c.Assigner.Roles(ctx, seed)
		if err != nil {
			errs = append(errs, fmt.Errorf("listing derived roles of %s: %w", seed, err))
			continue
		}
		var gone []string
		for _, r := range roles {
			if !r.Owned {
				continue
			}
			for _, sub := range r.Subjects {
				ns, name, err := ParseSubject(sub)
				if err == nil && !existing(ns, name) {
					gone = append(gone, sub)
				}
			}
		}
		if len(gone) == 0 {
			continue
		}
		n, err := c.Assigner.Remove(ctx, seed, gone)
		removed += n
		if err != nil {
			errs = append(errs, fmt.Errorf("removing %d subjects from %s: %w", len(gone), seed, err))
		}
	}
	return removed, errors.Join(errs...)
}
