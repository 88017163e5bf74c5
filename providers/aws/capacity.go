package aws

import (
	"cmp"
	"slices"
	"strconv"
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

// TheoreticalMax is the largest number of subjects from subjects that one derived role of seed
// can hold under quota, computed arithmetically rather than by building documents: each subject
// after the first adds its quoted length plus a comma to every OIDC statement's list, and the
// shortest subjects pack best. It is the yardstick Place is measured against.
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
