package aws

import (
	"context"
	"errors"
	"fmt"
	"io"
	"text/tabwriter"
)

// RoleInfo describes one derived role for the roles table.
type RoleInfo struct {
	Index    int
	ARN      string
	Subjects []string
	Chars    int     // size of the trust policy as it would be sent
	Quota    int     // trust policy size quota
	Fill     float64 // Chars / Quota
	Owned    bool    // false: named like a derived role but not tagged with this seed
}

// Roles reports the derived roles of seed as IAM has them now. It reads only and leaves the
// assignment cache alone: an eventually consistent read must never replace a cache that already
// holds this replica's own latest write.
func (a *Assigner) Roles(ctx context.Context, seed RoleARN) ([]RoleInfo, error) {
	if err := a.allowed(seed); err != nil {
		return nil, err
	}
	s := a.newSession(seed, &seedState{}, false)
	s.known = a.publishedTrust(seed)
	if err := s.refresh(ctx); err != nil {
		return nil, err
	}
	quota := a.quotaFor(ctx)
	var out []RoleInfo
	for _, r := range s.st.roles {
		info := RoleInfo{Index: r.index, ARN: r.arn.String(), Quota: quota}
		if r.bad == nil {
			info.Subjects = r.trust.Subjects()
			info.Chars, _ = r.trust.Size()
			info.Fill = float64(info.Chars) / float64(quota)
		}
		if err := s.ensureOwned(ctx, r); err == nil {
			info.Owned = true
		} else if !errors.Is(err, errForeign) {
			return nil, err
		}
		out = append(out, info)
	}
	return out, nil
}

// publishedTrust is the trust policy of every role in seed's published view, by index (nil
// when this replica has none): what Roles may take instead of parsing a document that is the
// same. The cache itself is not read: it belongs to the lock session that may be running.
func (a *Assigner) publishedTrust(seed RoleARN) map[int]TrustPolicy {
	a.mu.Lock()
	st := a.seeds[seed.String()]
	a.mu.Unlock()
	if st == nil {
		return nil
	}
	v := st.publishedView()
	if v == nil {
		return nil
	}
	out := make(map[int]TrustPolicy, len(v.roles))
	for _, r := range v.roles {
		if !r.Broken {
			out[r.Index] = r.Trust
		}
	}
	return out
}

// WriteRolesTable prints roles as an aligned table, one line per role, for the roles subcommand.
// Write errors are the writer's to report (it is a terminal or a buffer).
func WriteRolesTable(w io.Writer, roles []RoleInfo) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "INDEX\tROLE\tSUBJECTS\tCHARS\tQUOTA\tFILL\tOWNED")
	for _, r := range roles {
		owned := "yes"
		if !r.Owned {
			owned = "NO (seed tag missing)"
		}
		fmt.Fprintf(tw, "%d\t%s\t%d\t%d\t%d\t%.1f%%\t%s\n", r.Index, r.ARN, len(r.Subjects), r.Chars, r.Quota, 100*r.Fill, owned)
	}
	_ = tw.Flush()
}

// CeilingWarnFill is the share of a seed's ceiling at which the roles command warns: ahead of
// the chart's CredentialWebhookSeedNearRoleLimit (0.9 by default), because raising the limit or
// the IAM quota takes a change request, not a restart.
const CeilingWarnFill = 0.8

// Ceiling is a seed's derived roles measured against --role-creation-limit roles of the trust
// policy quota each: what the derived_role_fill_ratio gauge reports, from one IAM read.
type Ceiling struct {
	Roles, Limit, Subjects int
	// Fill is the trust policy characters in use over Limit × quota (a foreign or unreadable
	// role counts as full: its index is taken and nothing is placed in it).
	Fill float64
	// Room estimates the subjects that still fit: the characters left at the mean size a
	// subject takes in today's roles (statement overhead included, so it errs low).
	Room int
}

// CeilingOf measures roles (as Roles reports them) against limit.
func CeilingOf(roles []RoleInfo, limit int) Ceiling {
	c := Ceiling{Roles: len(roles), Limit: limit}
	used, measured, quota := 0, 0, 0
	for _, r := range roles {
		quota = max(quota, r.Quota)
		if !r.Owned || r.Chars == 0 { // foreign, or its trust policy unreadable (an empty role still has its statements)
			used += r.Quota
			continue
		}
		c.Subjects += len(r.Subjects)
		used += min(r.Chars, r.Quota)
		measured += min(r.Chars, r.Quota)
	}
	if limit <= 0 || quota <= 0 {
		return c
	}
	c.Fill = float64(used) / float64(limit*quota)
	if free := limit*quota - used; free > 0 && c.Subjects > 0 {
		c.Room = free * c.Subjects / measured
	} else if free > 0 {
		c.Room = -1 // no subject yet to measure by
	}
	return c
}

// WriteCeiling prints the totals line under the roles table and, from CeilingWarnFill on, what
// to do before ServiceAccounts are refused.
func WriteCeiling(w io.Writer, c Ceiling) {
	room := fmt.Sprintf("about %d more subjects fit", c.Room)
	if c.Room < 0 {
		room = "no subject yet to estimate the room by"
	}
	fmt.Fprintf(w, "total: %d derived roles of --role-creation-limit %d, %d subjects, %.1f%% of the ceiling; %s\n", c.Roles, c.Limit, c.Subjects, 100*c.Fill, room)
	if c.Fill >= CeilingWarnFill {
		fmt.Fprintf(w, "WARNING: this seed is at %.0f%% of its ceiling; at 100%% new ServiceAccounts get no role. Check that the ServiceAccounts of ended sessions are deleted, then raise --role-creation-limit (aws.roleCreationLimit) within the account's roles quota, ask AWS for a larger ACLSizePerRole (trust policy) quota (4,096 or 8,192 characters), or spread the ServiceAccounts over more seeds.\n", 100*c.Fill)
	}
}
