package aws

import (
	"math/rand/v2"
	"regexp"
	"strings"
	"testing"
)

// The apiserver's expressions, the oracle of the hand-written checks.
var (
	dnsLabelOracle     = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
	dnsSubdomainOracle = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
)

func TestDNSChecksMatchTheExpressions(t *testing.T) {
	cases := []string{"", "a", "-", "a-", "-a", "a-b", "a.b", "a..b", ".a", "a.", "a.-b", "a-.b", "A", "a_b", "a*", "a?b", "ü", "0", "0-0.9", "x\n", "a b", "a:b"}
	const alphabet = "ab09-.*?:A_ü"
	rng := rand.New(rand.NewPCG(7, 11))
	for range 20000 {
		var b strings.Builder
		for range rng.IntN(9) {
			b.WriteString(string([]rune(alphabet)[rng.IntN(len([]rune(alphabet)))]))
		}
		cases = append(cases, b.String())
	}
	for _, s := range cases {
		if got, want := isDNSLabel(s), dnsLabelOracle.MatchString(s); got != want {
			t.Errorf("isDNSLabel(%q) = %v, the expression says %v", s, got, want)
		}
		if got, want := isDNSSubdomain(s), dnsSubdomainOracle.MatchString(s); got != want {
			t.Errorf("isDNSSubdomain(%q) = %v, the expression says %v", s, got, want)
		}
	}
}

// ParseSubject accepts exactly what Subject builds, with Subject's errors.
func TestParseSubjectChecksLikeSubject(t *testing.T) {
	const alphabet = "ab09-.*:A_ü"
	rng := rand.New(rand.NewPCG(3, 5))
	part := func() string {
		var b strings.Builder
		for range rng.IntN(7) {
			b.WriteString(string([]rune(alphabet)[rng.IntN(len([]rune(alphabet)))]))
		}
		return b.String()
	}
	for range 20000 {
		ns, name := part(), part()
		if strings.Contains(ns, ":") {
			continue // the subject would split elsewhere
		}
		sub, err := Subject(ns, name)
		gotNS, gotName, perr := ParseSubject(SubjectPrefix + ns + ":" + name)
		switch {
		case (err == nil) != (perr == nil) || err != nil && err.Error() != perr.Error():
			t.Fatalf("Subject(%q, %q): %v; ParseSubject: %v", ns, name, err, perr)
		case err == nil && (gotNS != ns || gotName != name || sub != SubjectPrefix+ns+":"+name):
			t.Fatalf("ParseSubject(%q) = %q, %q", sub, gotNS, gotName)
		}
	}
}
