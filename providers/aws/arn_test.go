package aws

import (
	"errors"
	"regexp"
	"strings"
	"testing"
)

func TestParseRoleARN(t *testing.T) {
	tests := []struct {
		in      string
		want    RoleARN
		wantErr string
	}{
		{in: "arn:aws:iam::748392615204:role/kubestash-selfhost", want: RoleARN{"aws", "748392615204", "/", "kubestash-selfhost"}},
		{in: "arn:aws-cn:iam::123456789012:role/a", want: RoleARN{"aws-cn", "123456789012", "/", "a"}},
		{in: "arn:aws-us-gov:iam::123456789012:role/team/backup/seed_1+=,.@-", want: RoleARN{"aws-us-gov", "123456789012", "/team/backup/", "seed_1+=,.@-"}},
		{in: "arn:aws:iam::123456789012:role/" + strings.Repeat("n", 64), want: RoleARN{"aws", "123456789012", "/", strings.Repeat("n", 64)}},
		{in: "arn:aws:iam::123456789012:role/" + strings.Repeat("n", 65), wantErr: "role name"},
		{in: "arn:aws:iam::123456789012:role/seed\n", wantErr: "whitespace"},
		{in: "arn:aws:iam::123456789012:role/seed name", wantErr: "whitespace"},
		{in: "arn:aws:iam::123456789012:role/séed", wantErr: "non-ASCII"},
		{in: "arn:aws:iam::123456789012:role/" + strings.Repeat("a/", 2000) + "x", wantErr: "longer than"},
		{in: "arn:aws:iam::123456789012:user/alice", wantErr: "not a role"},
		{in: "arn:aws:iam::123456789012:policy/p", wantErr: "not a role"},
		{in: "arn:aws:iam::123456789012:oidc-provider/oidc.eks.us-east-1.amazonaws.com/id/X", wantErr: "not a role"},
		{in: "arn:aws:sts::123456789012:assumed-role/r/s", wantErr: "service"},
		{in: "arn:aws:iam:us-east-1:123456789012:role/r", wantErr: "region"},
		{in: "arn:aws-iso:iam::123456789012:role/r", wantErr: "partition"},
		{in: "arn:aws:iam::12345678901:role/r", wantErr: "12 digits"},
		{in: "arn:aws:iam::12345678901x:role/r", wantErr: "12 digits"},
		{in: "arn:aws:iam::123456789012:role/", wantErr: "role name"},
		{in: "arn:aws:iam::123456789012:role//r", wantErr: "segment"},
		{in: "arn:aws:iam::123456789012:role/a*/r", wantErr: "segment"},
		{in: "arn:aws:iam::123456789012:role/aws-service-role/x.amazonaws.com/r", wantErr: "reserved"},
		{in: "arn:aws:iam::123456789012:role/r*", wantErr: "role name"},
		{in: "arn:aws:iam::123456789012", wantErr: "want arn:"},
		{in: "", wantErr: "want arn:"},
		{in: "kubestash-selfhost", wantErr: "want arn:"},
	}
	for _, tt := range tests {
		t.Run(firstN(tt.in, 60), func(t *testing.T) {
			got, err := ParseRoleARN(tt.in)
			if tt.wantErr != "" {
				if err == nil || !errors.Is(err, ErrInvalidARN) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseRoleARN(%q) = %v, %v; want error containing %q", tt.in, got, err, tt.wantErr)
				}
				if len(err.Error()) > 400 {
					t.Errorf("error message is %d bytes; huge inputs must not flood logs", len(err.Error()))
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseRoleARN(%q) = %+v, %v; want %+v", tt.in, got, err, tt.want)
			}
			if got.String() != tt.in {
				t.Errorf("String() = %q, want %q", got.String(), tt.in)
			}
		})
	}
}

func TestDerived(t *testing.T) {
	seed := RoleARN{"aws", "123456789012", "/team/", "kubestash"}
	tests := []struct {
		seedName string
		i        int
		want     string
		wantErr  string
	}{
		{seedName: "kubestash", i: 0, want: "arn:aws:iam::123456789012:role/team/kubestash-0"},
		{seedName: "kubestash", i: 99, want: "arn:aws:iam::123456789012:role/team/kubestash-99"},
		{seedName: strings.Repeat("s", 62), i: 9, want: "arn:aws:iam::123456789012:role/team/" + strings.Repeat("s", 62) + "-9"},
		{seedName: strings.Repeat("s", 62), i: 10, wantErr: "at most 61 characters"},
		{seedName: strings.Repeat("s", 64), i: 0, wantErr: "IAM allows 64"},
		{seedName: "kubestash", i: -1, wantErr: "negative"},
	}
	for _, tt := range tests {
		s := seed
		s.Name = tt.seedName
		got, err := Derived(s, tt.i)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Derived(%s, %d) = %v, %v; want error containing %q", tt.seedName, tt.i, got, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got.String() != tt.want {
			t.Errorf("Derived(%s, %d) = %v, %v; want %s", tt.seedName, tt.i, got, err, tt.want)
		}
		if idx, ok := derivedIndex(s, got.Name); !ok || idx != tt.i {
			t.Errorf("derivedIndex(%q) = %d, %v; want %d", got.Name, idx, ok, tt.i)
		}
	}
}

func TestDerivedIndex(t *testing.T) {
	seed := RoleARN{"aws", "123456789012", "/", "seed"}
	tests := []struct {
		name string
		want int
		ok   bool
	}{
		{"seed-0", 0, true},
		{"seed-17", 17, true},
		{"seed-01", 0, false}, // not canonical: would alias seed-1
		{"seed-", 0, false},
		{"seed", 0, false},
		{"seed-1a", 0, false},
		{"seed-1-2", 0, false}, // a derived role of seed-1, not of seed
		{"seedx-1", 0, false},
		{"seed--1", 0, false},
		{"seed-+1", 0, false},
		{"seed-1234567", 0, false},
		{"other-1", 0, false},
	}
	for _, tt := range tests {
		got, ok := derivedIndex(seed, tt.name)
		if ok != tt.ok || (ok && got != tt.want) {
			t.Errorf("derivedIndex(%q) = %d, %v; want %d, %v", tt.name, got, ok, tt.want, tt.ok)
		}
	}
}

func TestAllowlist(t *testing.T) {
	tests := []struct {
		list  string
		arn   string
		allow bool
	}{
		{"arn:aws:iam::123456789012:role/kubestash-*", "arn:aws:iam::123456789012:role/kubestash-selfhost", true},
		{"arn:aws:iam::123456789012:role/kubestash-*", "arn:aws:iam::123456789012:role/kubestash", false},
		{"arn:aws:iam::123456789012:role/kubestash-*", "arn:aws:iam::210987654321:role/kubestash-x", false},
		{"arn:aws:iam::*:role/kubestash", "arn:aws:iam::210987654321:role/kubestash", true},
		{"arn:aws:iam::*:role/kubestash", "arn:aws:iam::210987654321:role/kubestashX", false},
		{" arn:aws:iam::1:role/a , arn:aws:iam::123456789012:role/b ", "arn:aws:iam::123456789012:role/b", true},
		{"arn:aws:iam::123456789012:role/team/*", "arn:aws:iam::123456789012:role/team/deep/seed", true},
		{"arn:aws:iam::123456789012:role/*/seed", "arn:aws:iam::123456789012:role/team/seed", true},
		{"arn:aws:iam::123456789012:role/*/seed", "arn:aws:iam::123456789012:role/seed", false},
		{"*", "arn:aws-cn:iam::123456789012:role/anything", true},
		{"*", "not-an-arn", false}, // only valid role ARNs are ever allowed
		{"", "arn:aws:iam::123456789012:role/a", false},
		{"arn:aws:iam::123456789012:role/a", "arn:aws:iam::123456789012:role/a\n", false},
		{"arn:aws:iam::123456789012:role/a*b*c", "arn:aws:iam::123456789012:role/aXbYbZc", true},
		{"arn:aws:iam::123456789012:role/a*b*c", "arn:aws:iam::123456789012:role/aXbYbZ", false},
	}
	for _, tt := range tests {
		l, err := ParseAllowlist(tt.list)
		if err != nil {
			t.Fatalf("ParseAllowlist(%q): %v", tt.list, err)
		}
		if got := l.Allows(tt.arn); got != tt.allow {
			t.Errorf("Allowlist(%q).Allows(%q) = %v, want %v", tt.list, tt.arn, got, tt.allow)
		}
	}
	for _, bad := range []string{"kubestash-*", "arn:aws:iam::1:role/a b", "arn:aws:iam::1:role/é", "arn:" + strings.Repeat("x", 1000),
		"arn:aws:iam::1:role/kubestash-?", "arn:aws:iam::1:role/kubestash-[ab]"} { // one glob dialect: '*' only
		if _, err := ParseAllowlist(bad); err == nil {
			t.Errorf("ParseAllowlist(%q) accepted", bad)
		}
	}
}

func TestSubject(t *testing.T) {
	tests := []struct {
		ns, name string
		want     string
		ok       bool
	}{
		{"demo", "sample-backup-daemon-demo-session-1778072138", "system:serviceaccount:demo:sample-backup-daemon-demo-session-1778072138", true},
		{"demo", "a.b.c", "system:serviceaccount:demo:a.b.c", true},
		{"demo", "*", "", false},
		{"demo", "a?", "", false},
		{"*", "a", "", false},
		{"Demo", "a", "", false},
		{"demo", "A", "", false},
		{"demo", "", "", false},
		{"demo", "a:b", "", false},
		{"de.mo", "a", "", false}, // namespaces are labels, no dots
		{"demo", strings.Repeat("a", 254), "", false},
		{strings.Repeat("n", 64), "a", "", false},
		{"demo", "-a", "", false},
	}
	for _, tt := range tests {
		got, err := Subject(tt.ns, tt.name)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("Subject(%q, %q) = %q, %v; want %q ok=%v", tt.ns, tt.name, got, err, tt.want, tt.ok)
		}
		if err != nil && !errors.Is(err, ErrInvalidSubject) {
			t.Errorf("Subject(%q, %q) error %v does not wrap ErrInvalidSubject", tt.ns, tt.name, err)
		}
		if tt.ok {
			ns, name, err := ParseSubject(got)
			if err != nil || ns != tt.ns || name != tt.name {
				t.Errorf("ParseSubject(%q) = %q, %q, %v", got, ns, name, err)
			}
		}
	}
	for _, bad := range []string{"system:serviceaccount:demo", "system:serviceaccount:demo:*", "user:demo:a", noSubject} {
		if _, _, err := ParseSubject(bad); err == nil {
			t.Errorf("ParseSubject(%q) accepted", bad)
		}
	}
}

// One rule for "is a derived role": DerivedIndex, and everything built on it.
func TestDerivedRule(t *testing.T) {
	seed, _ := ParseRoleARN("arn:aws:iam::123456789012:role/kubestash/seed")
	for arn, want := range map[string]bool{
		"arn:aws:iam::123456789012:role/kubestash/seed-0":    true,
		"arn:aws:iam::123456789012:role/kubestash/seed-42":   true,
		"arn:aws:iam::123456789012:role/kubestash/seed-01":   false,
		"arn:aws:iam::123456789012:role/kubestash/seed-1-2":  false,
		"arn:aws:iam::123456789012:role/other/seed-0":        false,
		"arn:aws:iam::123456789012:role/kubestash/x/seed-0":  false,
		"arn:aws:iam::999999999999:role/kubestash/seed-0":    false,
		"arn:aws-cn:iam::123456789012:role/kubestash/seed-0": false,
		"arn:aws:iam::123456789012:role/kubestash/seed":      false,
	} {
		role, err := ParseRoleARN(arn)
		if err != nil {
			t.Fatal(err)
		}
		if _, got := DerivedIndex(role, seed); got != want {
			t.Errorf("DerivedIndex(%s) = %v, want %v", arn, got, want)
		}
		if got := IsDerivedFrom(arn, seed.String()); got != want {
			t.Errorf("IsDerivedFrom(%s) = %v, want %v", arn, got, want)
		}
	}

	list, _ := ParseAllowlist("arn:aws:iam::123456789012:role/kubestash-*,arn:aws:iam::123456789012:role/backup/exact")
	for arn, wantParent := range map[string]string{
		"arn:aws:iam::123456789012:role/kubestash-x-0":    "arn:aws:iam::123456789012:role/kubestash-x",
		"arn:aws:iam::123456789012:role/kubestash-x-0-12": "arn:aws:iam::123456789012:role/kubestash-x-0",
		"arn:aws:iam::123456789012:role/backup/exact-3":   "arn:aws:iam::123456789012:role/backup/exact",
		"arn:aws:iam::123456789012:role/kubestash-x":      "",
		"arn:aws:iam::123456789012:role/kubestash-1":      "", // "kubestash" itself is not allowed
		"arn:aws:iam::123456789012:role/kubestash-x-01":   "",
		"arn:aws:iam::123456789012:role/other/exact-3":    "",
	} {
		role, _ := ParseRoleARN(arn)
		parent, ok := list.DerivedSeed(role)
		if ok != (wantParent != "") || (ok && parent.String() != wantParent) {
			t.Errorf("DerivedSeed(%s) = %s, %v; want %q", arn, parent, ok, wantParent)
		}
	}
}

func TestParsePolicyARN(t *testing.T) {
	for arn, ok := range map[string]bool{
		"arn:aws:iam::123456789012:policy/boundary":             true,
		"arn:aws:iam::123456789012:policy/boundaries/kubestash": true,
		"arn:aws:iam::aws:policy/PowerUserAccess":               true,
		"arn:aws-us-gov:iam::123456789012:policy/b":             true,
		"arn:aws:iam::123456789012:role/boundary":               false,
		"arn:aws:iam::12345:policy/b":                           false,
		"arn:aws:iam::123456789012:policy/":                     false,
		"arn:aws:iam::123456789012:policy/b*":                   false,
		"arn:aws:s3:::bucket":                                   false,
		"":                                                      false,
	} {
		if _, err := ParsePolicyARN(arn); (err == nil) != ok {
			t.Errorf("ParsePolicyARN(%q) = %v, want ok %v", arn, err, ok)
		}
	}
}

// TestIAMNameAlphabet checks the byte loops that replaced regular expressions against IAM's
// documented patterns, byte by byte and at the length limits.
func TestIAMNameAlphabet(t *testing.T) {
	one := regexp.MustCompile(`^[A-Za-z0-9_+=,.@-]$`)
	for c := 0; c < 256; c++ {
		s := string([]byte{byte(c)})
		if got, want := isIAMName(s, 1), one.MatchString(s); got != want {
			t.Errorf("isIAMName(%q) = %v, the pattern says %v", s, got, want)
		}
	}
	cases := []struct {
		s    string
		max  int
		want bool
	}{
		{"", 64, false},
		{"", 0, false},
		{strings.Repeat("a", 64), 64, true},
		{strings.Repeat("a", 65), 64, false},
		{strings.Repeat("a", 600), 0, true},
		{"kubestash-backup-0", 64, true},
		{"a/b", 0, false},
		{"tab\there", 0, false},
		{"caf\u00e9", 0, false},
	}
	for _, c := range cases {
		if got := isIAMName(c.s, c.max); got != c.want {
			t.Errorf("isIAMName(%.20q, %d) = %v, want %v", c.s, c.max, got, c.want)
		}
	}
	for s, want := range map[string]bool{"123456789012": true, "12345678901": false, "1234567890123": false, "12345678901a": false, "": false, "-12345678901": false} {
		if got := isAccountID(s); got != want {
			t.Errorf("isAccountID(%q) = %v, want %v", s, got, want)
		}
	}
}
