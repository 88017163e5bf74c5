package access

import (
	"regexp"
	"runtime/metrics"
	"strings"
	"testing"
)

// FuzzPolicy drives Parse and Check with arbitrary flag values and requests (seeds inline plus
// testdata/fuzz/FuzzPolicy/, run by plain `go test`; longer runs: scripts/fuzz.sh). Parse never
// panics; Check never allows a request that no pattern matches (checked against an independent
// regexp oracle, so a change of matcher cannot widen access silently), an empty requester list allows
// nobody, and a requester listed without glob characters is allowed only under exactly that name.
func FuzzPolicy(f *testing.F) {
	const op = "system:serviceaccount:kubestash:kubestash-kubestash-operator"
	for _, c := range [][5]string{
		{"*", op, "demo", op, ""},
		{"*", op, "demo", op + " ", ""},
		{"*", op, "demo", "system:serviceaccount:kubestash:kubestash-kubestash-operatoR", ""},
		{"demo,backup-*", "group:backup-admins", "backup-x", "mallory", "backup-admins"},
		{"demo", "group:backup-admins", "kube-system", "mallory", "backup-admins"},
		{"*", "", "demo", op, "system:masters"},
		{"*", "*", "demo", "anyone", ""},
		{"[", op, "demo", op, ""},
		{"*", "user:", "demo", "", ""},
		{"*", "group:system:*", "demo", "x", "system:masters"},
		{" demo , ", "user:a\\*", "demo", "a*", ""},
	} {
		f.Add(c[0], c[1], c[2], c[3], c[4])
	}
	f.Fuzz(func(t *testing.T, namespaces, requesters, ns, user, group string) {
		n := len(namespaces) + len(requesters) + len(ns) + len(user) + len(group)
		if n > 16<<10 {
			return
		}
		var p Policy
		var err error
		before := heapAllocs()
		p, err = Parse(namespaces, requesters)
		var groups []string
		if group != "" {
			groups = []string{group}
		}
		var checkErr error
		if err == nil {
			checkErr = p.Check(ns, user, groups)
		}
		if got := heapAllocs() - before; got > 32*uint64(n)+4<<20 {
			t.Fatalf("Parse and Check allocated %d bytes for %d bytes of input", got, n)
		}
		if err != nil {
			return
		}
		if checkErr != nil {
			return
		}
		// Allowed: the namespace and the requester must each match a listed pattern.
		if !anyMatch(split(namespaces), ns) {
			t.Fatalf("namespace %q allowed by %q", ns, namespaces)
		}
		var users, grps []string
		for _, r := range split(requesters) {
			switch {
			case r == "*":
				users, grps = append(users, "*"), append(grps, "*")
			case strings.HasPrefix(r, "group:"):
				grps = append(grps, strings.TrimPrefix(r, "group:"))
			default:
				users = append(users, strings.TrimPrefix(r, "user:"))
			}
		}
		if len(users)+len(grps) == 0 {
			t.Fatalf("no requesters listed, yet %q was allowed", user)
		}
		if !anyMatch(users, user) && !(group != "" && anyMatch(grps, group)) {
			t.Fatalf("requester %q (group %q) allowed by %q", user, group, requesters)
		}
		if !strings.ContainsAny(requesters, `*?[\`) && !strings.Contains(requesters, "group:") {
			listed := false
			for _, u := range users {
				listed = listed || u == user
			}
			if !listed {
				t.Fatalf("requester %q allowed by the literal list %q", user, requesters)
			}
		}
	})
}

// anyMatch is an oracle independent of package glob: each pattern as an anchored regexp where
// '*' is ".*" and everything else literal.
func anyMatch(patterns []string, s string) bool {
	for _, p := range patterns {
		re := regexp.MustCompile("^" + strings.ReplaceAll(regexp.QuoteMeta(p), `\*`, "(?s:.*)") + "$")
		if re.MatchString(s) {
			return true
		}
	}
	return false
}

// heapAllocs is the total of bytes ever allocated on the heap, read without stopping the world
// (small allocations are counted per cached span, hence the slack in the bound above).
func heapAllocs() uint64 {
	s := []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}
