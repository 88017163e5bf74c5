package aws

import (
	"cmp"
	"fmt"
	"io"
	"slices"
	"strconv"
	"text/tabwriter"
	"unicode/utf8"
)

// Fit reports whether subject fits in p under quota, measured on the compact JSON that would be
// sent. next is p with the subject (p itself when it was already there).
//
// A full role is recognised without building its next document: adding a subject to a non-empty
// list costs at least its length plus two quotes and a comma in every OIDC statement, so when p's
// (memoised) size plus that lower bound is over quota, the answer is no. Every yes is measured.
func Fit(p TrustPolicy, subject string, quota int) (next TrustPolicy, size int, ok bool, err error) {
	if !p.Has(subject) && p.Len() > 0 {
		base, err := p.Size()
		if err != nil {
			return p, 0, false, err
		}
		if atLeast := base + p.OIDCStatements()*(utf8.RuneCountInString(subject)+3); atLeast > quota {
			return p, atLeast, false, nil
		}
	}
	next, _ = p.WithSubject(subject)
	size, err = next.Size()
	if err != nil {
		return p, 0, false, err
	}
	return next, size, size <= quota, nil
}

// FirstFit returns the position of the first policy (lowest index first) that can take subject
// under quota, and that policy with the subject; -1 when none can. Space freed by removed
// subjects is found again because every role is measured, not just the last one.
func FirstFit(roles []TrustPolicy, subject string, quota int) (int, TrustPolicy, error) {
	for i, p := range roles {
		next, _, ok, err := Fit(p, subject, quota)
		if err != nil {
			return -1, TrustPolicy{}, err
		}
		if ok {
			return i, next, nil
		}
	}
	return -1, TrustPolicy{}, nil
}

// TheoreticalMax is the largest number of subjects from subjects that one derived role of seed
// can hold under quota, computed arithmetically rather than by building documents: each subject
// after the first adds its quoted length plus a comma to every OIDC statement's list, and the
// shortest subjects pack best. It is the yardstick FirstFit is measured against.
func TheoreticalMax(seed TrustPolicy, subjects []string, quota int) (int, error) {
	if len(subjects) == 0 {
		return 0, nil
	}
	sorted := slices.SortedFunc(slices.Values(subjects), func(a, b string) int { return cmp.Compare(len(a), len(b)) })
	one, err := DeriveTrustPolicy(seed, sorted[:1])
	if err != nil {
		return 0, err
	}
	size, err := one.Size()
	if err != nil {
		return 0, err
	}
	if size > quota {
		return 0, nil
	}
	stmts := one.OIDCStatements()
	n := 1
	for _, s := range sorted[1:] {
		size += stmts * (len(strconv.Quote(s)) + 1)
		if size > quota {
			break
		}
		n++
	}
	return n, nil
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
