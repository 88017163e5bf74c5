package aws

import (
	"go.klusters.dev/credential-webhook/sweeper"
)

// SeedUsage implements sweeper.UsageReporter: every seed this replica holds a published view of
// (the roles its last lock session left behind; on the sweeper leader, every seed in use, since
// each full garbage collection pass opens a session per seed), with --role-creation-limit. It
// makes no IAM call and never waits for a lock session. Only allowed seeds ever get a cache (Assign,
// Plan and the sessions check the allowlist first), so the seeds come from configuration, not
// from whatever a ServiceAccount names.
func (a *Assigner) SeedUsage() ([]sweeper.SeedUsage, int) {
	a.mu.Lock()
	states := make(map[string]*seedState, len(a.seeds))
	for seed, st := range a.seeds {
		states[seed] = st
	}
	a.mu.Unlock()
	quota := a.knownQuota()
	var out []sweeper.SeedUsage
	for seed, st := range states {
		st.plan.mu.Lock()
		v := st.plan.view
		st.plan.mu.Unlock()
		if v == nil {
			continue // never loaded: nothing known, nothing reported
		}
		out = append(out, usageOf(seed, v.roles, quota, a.cfg.RoleCreationLimit))
	}
	return out, a.cfg.RoleCreationLimit
}

// knownQuota is the trust policy quota without asking IAM: learnt, configured, else the default.
func (a *Assigner) knownQuota() int {
	a.quotaMu.Lock()
	defer a.quotaMu.Unlock()
	switch {
	case a.quota > 0:
		return a.quota
	case a.cfg.Quota > 0:
		return a.cfg.Quota
	}
	return DefaultQuota
}

// usageOf measures one seed's derived roles against its ceiling, limit roles of quota characters
// each. A foreign or unreadable role counts as full: its index is taken and nothing is ever
// placed in it.
func usageOf(seed string, roles []RoleView, quota, limit int) sweeper.SeedUsage {
	u := sweeper.SeedUsage{Seed: seed, Roles: len(roles)}
	if quota <= 0 || limit <= 0 {
		return u
	}
	used := 0
	for _, r := range roles {
		if !r.usable() {
			used += quota
			continue
		}
		u.Subjects += r.Trust.Len()
		n, err := r.Trust.Size()
		if err != nil {
			n = quota // cannot be measured: cannot be written either
		}
		used += min(n, quota)
	}
	u.Fill = float64(used) / float64(limit*quota)
	return u
}

var _ sweeper.UsageReporter = (*Assigner)(nil)
