package access

import "testing"

func TestPolicy(t *testing.T) {
	const op = "system:serviceaccount:kubestash:kubestash-kubestash-operator"
	cases := []struct {
		name, namespaces, requesters string
		ns, user                     string
		groups                       []string
		ok                           bool
	}{
		{"empty allows nothing", "", "", "demo", op, nil, false},
		{"operator by username", "*", op, "demo", op, nil, true},
		{"other user refused", "*", op, "demo", "alice", []string{"system:authenticated"}, false},
		{"group match", "*", "group:system:serviceaccounts:kubestash", "demo", op, []string{"system:serviceaccounts:kubestash"}, true},
		{"group pattern", "*", "group:system:serviceaccounts:kube*", "demo", op, []string{"system:serviceaccounts:kubestash"}, true},
		{"user: prefix", "*", "user:alice", "demo", "alice", nil, true},
		{"namespace not allowed", "demo,backup-*", "*", "prod", op, nil, false},
		{"namespace glob", "demo,backup-*", "*", "backup-eu", op, nil, true},
		{"anyone", "*", "*", "x", "mallory", nil, true},
		{"look-alike user", "*", op, "demo", op + " ", nil, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Parse(tc.namespaces, tc.requesters)
			if err != nil {
				t.Fatal(err)
			}
			if err := p.Check(tc.ns, tc.user, tc.groups); (err == nil) != tc.ok {
				t.Fatalf("Check = %v, want ok=%v", err, tc.ok)
			}
		})
	}
	if _, err := Parse("[", ""); err == nil {
		t.Error("bad namespace pattern accepted")
	}
	if _, err := Parse("*", "group:"); err == nil {
		t.Error("empty group accepted")
	}
}

// NamespaceAllowed is the namespace half of Check alone: the writer asks it again when it
// finishes a claim (no requester then), so it must agree with Check on every namespace.
func TestNamespaceAllowed(t *testing.T) {
	cases := []struct {
		name, namespaces, ns string
		ok                   bool
	}{
		{"empty allows nothing", "", "demo", false},
		{"any", "*", "demo", true},
		{"exact", "demo", "demo", true},
		{"exact, other namespace", "demo", "prod", false},
		{"glob", "demo,backup-*", "backup-eu", true},
		{"glob prefix only", "demo,backup-*", "xbackup-eu", false},
		{"look-alike", "demo", "demo ", false},
		{"empty namespace (cluster-scoped)", "demo", "", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			// Requesters allow anyone, so Check fails only on the namespace.
			p, err := Parse(tc.namespaces, "*")
			if err != nil {
				t.Fatal(err)
			}
			if got := p.NamespaceAllowed(tc.ns); got != tc.ok {
				t.Fatalf("NamespaceAllowed(%q) = %v, want %v", tc.ns, got, tc.ok)
			}
			if check := p.Check(tc.ns, "anyone", nil) == nil; check != tc.ok {
				t.Fatalf("Check disagrees: ok = %v", check)
			}
		})
	}
}
