// Package glob is the one pattern dialect of every allowlist this server reads: seed roles
// (--aws-seed-roles), Azure scopes (--azure-allowed-scopes), namespaces (--allowed-namespaces)
// and requesters (--allowed-requesters). A pattern matches a whole string; '*' matches any run
// of characters, '/' and ':' included, possibly empty; every other byte matches itself. There is
// no '?', no character class and no escape: the values matched (ARNs, resource IDs, namespace
// and user names) need none, and one small grammar is one an administrator can predict.
//
// Validate refuses the characters other dialects give a meaning to ('?', '[', '\'), so a
// pattern written for path.Match or a shell fails loudly at startup instead of silently matching
// literally.
package glob

import (
	"fmt"
	"strings"
)

// Match reports whether s matches pattern. It backtracks only to the last star, so it runs in
// O(len(pattern)*len(s)) at worst, with no recursion for a hostile pattern or input to exploit.
func Match(pattern, s string) bool {
	p, i := 0, 0
	star, mark := -1, 0
	for i < len(s) {
		switch {
		case p < len(pattern) && pattern[p] == '*':
			star, mark = p, i
			p++
		case p < len(pattern) && pattern[p] == s[i]:
			p++
			i++
		case star >= 0:
			p = star + 1
			mark++
			i = mark
		default:
			return false
		}
	}
	for p < len(pattern) && pattern[p] == '*' {
		p++
	}
	return p == len(pattern)
}

// Validate returns an error when pattern is empty or uses a character another glob dialect
// gives a meaning to.
func Validate(pattern string) error {
	if pattern == "" {
		return fmt.Errorf("empty pattern")
	}
	if i := strings.IndexAny(pattern, `?[\`); i >= 0 {
		return fmt.Errorf("pattern %q uses %q: only '*' (any run of characters) is special here; list the names instead", pattern, pattern[i])
	}
	return nil
}

// Any reports whether s matches one of patterns.
func Any(patterns []string, s string) bool {
	for _, p := range patterns {
		if Match(p, s) {
			return true
		}
	}
	return false
}
