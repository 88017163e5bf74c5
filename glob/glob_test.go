package glob

import (
	"regexp"
	"strings"
	"testing"
)

func TestMatch(t *testing.T) {
	for _, tc := range []struct {
		pattern, s string
		want       bool
	}{
		{"", "", true},
		{"", "a", false},
		{"*", "", true},
		{"*", "arn:aws:iam::1:role/a/b", true},
		{"demo", "demo", true},
		{"demo", "demo2", false},
		{"demo", "xdemo", false},
		{"backup-*", "backup-eu", true},
		{"backup-*", "xbackup-eu", false},
		{"*-eu", "backup-eu", true},
		{"*-eu", "backup-eu-1", false},
		{"a*b*c", "aXbYc", true},
		{"a*b*c", "aXcYb", false},
		{"a**b", "ab", true},
		{"arn:aws:iam::123456789012:role/kubestash-*", "arn:aws:iam::123456789012:role/kubestash-x", true},
		{"arn:aws:iam::123456789012:role/kubestash-*", "arn:aws:iam::123456789012:role/path/kubestash-x", false},
		{"arn:aws:iam::*:role/*", "arn:aws:iam::1:role/p/q", true}, // '*' crosses '/' and ':'
		{"a?c", "abc", false}, // '?' is literal
		{"a?c", "a?c", true},
	} {
		if got := Match(tc.pattern, tc.s); got != tc.want {
			t.Errorf("Match(%q, %q) = %v, want %v", tc.pattern, tc.s, got, tc.want)
		}
	}
}

// Match agrees with an independent oracle (a regexp built from the pattern) on generated inputs.
func TestMatchOracle(t *testing.T) {
	alphabet := []string{"a", "b", "*", "/", ":"}
	var patterns []string
	var gen func(prefix string, n int)
	gen = func(prefix string, n int) {
		patterns = append(patterns, prefix)
		if n == 0 {
			return
		}
		for _, c := range alphabet {
			gen(prefix+c, n-1)
		}
	}
	gen("", 4)
	inputs := []string{"", "a", "b", "ab", "ba", "a/b", "a:b", "aab", "abab", "/", "::", "a/b:a"}
	for _, p := range patterns {
		re := regexp.MustCompile("^" + strings.ReplaceAll(regexp.QuoteMeta(p), `\*`, ".*") + "$")
		for _, s := range inputs {
			if got, want := Match(p, s), re.MatchString(s); got != want {
				t.Fatalf("Match(%q, %q) = %v, oracle %v", p, s, got, want)
			}
		}
	}
}

// A hostile pattern and input finish quickly (no exponential backtracking).
func TestMatchHostile(t *testing.T) {
	if Match(strings.Repeat("a*", 300)+"b", strings.Repeat("a", 5000)) {
		t.Fatal("matched without the final b")
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		pattern string
		ok      bool
	}{
		{"*", true},
		{"backup-*", true},
		{"system:serviceaccount:kubestash:*", true},
		{"", false},
		{"team-?", false},
		{"team-[ab]", false},
		{`team-\*`, false},
	} {
		if err := Validate(tc.pattern); (err == nil) != tc.ok {
			t.Errorf("Validate(%q) = %v, want ok=%v", tc.pattern, err, tc.ok)
		}
	}
	if err := Validate("team-?"); err == nil || !strings.Contains(err.Error(), "only '*'") {
		t.Errorf("message does not explain the dialect: %v", err)
	}
}

func TestAny(t *testing.T) {
	if !Any([]string{"x", "de*"}, "demo") || Any([]string{"x", "y"}, "demo") || Any(nil, "demo") {
		t.Fatal("Any")
	}
}
