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
