package aws

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"go.klusters.dev/credential-webhook/glob"
)

// Limits from the IAM API reference. They bound what we accept before any character is checked,
// so a hostile annotation cannot make us do work proportional to its size.
const (
	maxRoleNameLen   = 64
	maxRolePathLen   = 512
	maxPolicyNameLen = 128
	// maxARNLen is generous for "arn:aws-us-gov:iam::<12>:role" + path + name.
	maxARNLen = 32 + maxRolePathLen + maxRoleNameLen
)

// isNameChar reports whether c is in IAM's role-name alphabet [\w+=,.@-], \w in ASCII on purpose
// (no unicode look-alikes). Path segments are held to it too: IAM allows any printable ASCII
// there, and the narrower alphabet keeps paths safe to place in ListRoles prefixes, tags, globs
// and log lines. (Byte loops rather than regular expressions: every ARN the garbage collection
// compares is parsed, and the regexp engine was 2.4 % of benchtool sim's CPU.)
func isNameChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
		c == '_' || c == '+' || c == '=' || c == ',' || c == '.' || c == '@' || c == '-'
}

// isIAMName reports whether s is 1 to limit characters of the role-name alphabet: role names
// (limit 64), policy names (128) and path segments (no limit of their own: 0).
func isIAMName(s string, limit int) bool {
	if s == "" || limit > 0 && len(s) > limit {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isNameChar(s[i]) {
			return false
		}
	}
	return true
}

// isAccountID reports whether s is an AWS account ID: exactly 12 decimal digits.
func isAccountID(s string) bool {
	if len(s) != 12 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// Partitions whose IAM we know. Anything else (aws-iso, typos) is refused rather than guessed.
var partitions = map[string]bool{"aws": true, "aws-cn": true, "aws-us-gov": true}

// ErrInvalidARN is wrapped by every ParseRoleARN failure.
var ErrInvalidARN = errors.New("invalid IAM role ARN")

// RoleARN is a parsed IAM role ARN. Path always starts and ends with "/" ("/" for no path).
type RoleARN struct {
	Partition string
	Account   string
	Path      string
	Name      string
}

// ParseRoleARN accepts exactly arn:<partition>:iam::<12 digits>:role<path><name>.
func ParseRoleARN(s string) (RoleARN, error) {
	fail := func(format string, args ...any) (RoleARN, error) {
		return RoleARN{}, fmt.Errorf("%w %s: %s", ErrInvalidARN, quoteShort(s), fmt.Sprintf(format, args...))
	}
	if len(s) > maxARNLen {
		return fail("longer than %d characters", maxARNLen)
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c >= 0x7f {
			return fail("contains whitespace, control or non-ASCII characters")
		}
	}
	parts := strings.SplitN(s, ":", 6)
	if len(parts) != 6 || parts[0] != "arn" {
		return fail("want arn:<partition>:iam::<account>:role/<name>")
	}
	partition, service, region, account, resource := parts[1], parts[2], parts[3], parts[4], parts[5]
	if !partitions[partition] {
		return fail("partition %q is not aws, aws-cn or aws-us-gov", partition)
	}
	if service != "iam" {
		return fail("service %q is not iam", service)
	}
	if region != "" {
		return fail("IAM ARNs have no region, got %q", region)
	}
	if !isAccountID(account) {
		return fail("account %q is not 12 digits", account)
	}
	rest, ok := strings.CutPrefix(resource, "role/")
	if !ok {
		return fail("resource %q is not a role", resource)
	}
	path, name := "/", rest
	if i := strings.LastIndexByte(rest, '/'); i >= 0 {
		path, name = "/"+rest[:i+1], rest[i+1:]
	}
	if !isIAMName(name, maxRoleNameLen) {
		return fail("role name %q must be 1-%d characters of A-Z a-z 0-9 _+=,.@-", name, maxRoleNameLen)
	}
	if err := checkPath(path); err != nil {
		return fail("%v", err)
	}
	return RoleARN{Partition: partition, Account: account, Path: path, Name: name}, nil
}

// ParsePolicyARN checks a managed policy ARN, as a permissions boundary is named:
// arn:<partition>:iam::<12 digits or "aws">:policy<path><name>.
func ParsePolicyARN(s string) (string, error) {
	fail := func(format string, args ...any) (string, error) {
		return "", fmt.Errorf("invalid IAM policy ARN %s: %s", quoteShort(s), fmt.Sprintf(format, args...))
	}
	if len(s) > maxARNLen+128 {
		return fail("too long")
	}
	parts := strings.SplitN(s, ":", 6)
	if len(parts) != 6 || parts[0] != "arn" || !partitions[parts[1]] || parts[2] != "iam" || parts[3] != "" {
		return fail("want arn:<partition>:iam::<account>:policy/<name>")
	}
	if parts[4] != "aws" && !isAccountID(parts[4]) {
		return fail("account %q is neither 12 digits nor aws", parts[4])
	}
	rest, ok := strings.CutPrefix(parts[5], "policy/")
	if !ok {
		return fail("resource %q is not a policy", parts[5])
	}
	path, name := "/", rest
	if i := strings.LastIndexByte(rest, '/'); i >= 0 {
		path, name = "/"+rest[:i+1], rest[i+1:]
	}
	if !isIAMName(name, maxPolicyNameLen) {
		return fail("policy name %q must be 1-128 characters of A-Z a-z 0-9 _+=,.@-", name)
	}
	if err := checkPath(path); err != nil {
		return fail("%v", err)
	}
	return s, nil
}

func checkPath(path string) error {
	if len(path) > maxRolePathLen {
		return fmt.Errorf("path longer than %d characters", maxRolePathLen)
	}
	if path == "/" {
		return nil
	}
	inner := strings.TrimSuffix(strings.TrimPrefix(path, "/"), "/")
	for _, seg := range strings.Split(inner, "/") {
		if !isIAMName(seg, 0) {
			return fmt.Errorf("path %q has an empty or invalid segment %q", path, seg)
		}
	}
	// Service-linked and SSO roles live under reserved paths where CreateRole is impossible.
	if strings.HasPrefix(path, "/aws-service-role/") || strings.HasPrefix(path, "/aws-reserved/") {
		return fmt.Errorf("path %q is reserved by AWS", path)
	}
	return nil
}

func (a RoleARN) String() string {
	return "arn:" + a.Partition + ":iam::" + a.Account + ":role" + a.Path + a.Name
}

// IsZero reports whether a is the zero RoleARN.
func (a RoleARN) IsZero() bool { return a == RoleARN{} }

// Derived returns the ARN of the i-th derived role of seed: name "<seed>-<i>", same path.
func Derived(seed RoleARN, i int) (RoleARN, error) {
	if i < 0 {
		return RoleARN{}, fmt.Errorf("derived role index %d is negative", i)
	}
	name := seed.Name + "-" + strconv.Itoa(i)
	if len(name) > maxRoleNameLen {
		return RoleARN{}, fmt.Errorf("derived role name %q is %d characters, IAM allows %d: shorten the seed role name %q to at most %d characters",
			name, len(name), maxRoleNameLen, seed.Name, maxRoleNameLen-len(name)+len(seed.Name))
	}
	d := seed
	d.Name = name
	return d, nil
}

// DerivedIndex is THE rule for "role is a derived role of seed", used everywhere (discovery,
// admission's Decide, refusing derived roles as seeds): same partition, account and path, and
// name "<seed name>-<i>" with i in canonical decimal form (no sign, no leading zero, at most six
// digits), so "seed-01" or "seed-1a" are never mistaken for ours. It returns i.
func DerivedIndex(role, seed RoleARN) (int, bool) {
	if role.Partition != seed.Partition || role.Account != seed.Account || role.Path != seed.Path {
		return 0, false
	}
	return derivedIndex(seed, role.Name)
}

// IsDerivedFrom reports whether roleARN names a derived role of seedARN (DerivedIndex); invalid
// or empty ARNs are not.
func IsDerivedFrom(roleARN, seedARN string) bool {
	r, err := ParseRoleARN(roleARN)
	if err != nil {
		return false
	}
	s, err := ParseRoleARN(seedARN)
	if err != nil {
		return false
	}
	_, ok := DerivedIndex(r, s)
	return ok
}

// derivedParent returns the seed role would be a derived role of, by name alone: role without
// its "-<i>" suffix (DerivedIndex holds between them).
func derivedParent(role RoleARN) (RoleARN, bool) {
	i := strings.LastIndexByte(role.Name, '-')
	if i <= 0 {
		return RoleARN{}, false
	}
	parent := role
	parent.Name = role.Name[:i]
	if _, ok := DerivedIndex(role, parent); !ok {
		return RoleARN{}, false
	}
	return parent, true
}

// derivedIndex is the name part of DerivedIndex: roleName is "<seed>-<i>", i canonical.
func derivedIndex(seed RoleARN, roleName string) (int, bool) {
	digits, ok := strings.CutPrefix(roleName, seed.Name+"-")
	if !ok || digits == "" || len(digits) > 6 || (len(digits) > 1 && digits[0] == '0') {
		return 0, false
	}
	for i := 0; i < len(digits); i++ {
		if digits[i] < '0' || digits[i] > '9' {
			return 0, false
		}
	}
	n, err := strconv.Atoi(digits)
	return n, err == nil
}

// Allowlist is a set of role-ARN globs. "*" matches any run of characters, "/" and ":" included,
// as in IAM policies: "arn:aws:iam::123456789012:role/kubestash-*" also matches roles under a path
// that starts with "kubestash-". An empty Allowlist allows nothing.
type Allowlist struct {
	globs []string
}

// ParseAllowlist parses comma-separated globs; blanks around entries are ignored.
func ParseAllowlist(s string) (Allowlist, error) {
	var l Allowlist
	for _, g := range strings.Split(s, ",") {
		g = strings.TrimSpace(g)
		if g == "" {
			continue
		}
		if len(g) > maxARNLen {
			return Allowlist{}, fmt.Errorf("allowlist entry %s is longer than %d characters", quoteShort(g), maxARNLen)
		}
		for i := 0; i < len(g); i++ {
			if c := g[i]; c <= ' ' || c >= 0x7f {
				return Allowlist{}, fmt.Errorf("allowlist entry %s contains whitespace, control or non-ASCII characters", quoteShort(g))
			}
		}
		if g != "*" && !strings.HasPrefix(g, "arn:") {
			return Allowlist{}, fmt.Errorf("allowlist entry %q is neither \"*\" nor an ARN glob starting with arn:", g)
		}
		if err := glob.Validate(g); err != nil {
			return Allowlist{}, fmt.Errorf("allowlist entry: %w", err)
		}
		l.globs = append(l.globs, g)
	}
	return l, nil
}

// Allows reports whether arn is a valid role ARN matched by one of the globs.
func (l Allowlist) Allows(arn string) bool {
	parsed, err := ParseRoleARN(arn)
	if err != nil {
		return false
	}
	canonical := parsed.String()
	return glob.Any(l.globs, canonical)
}

// DerivedSeed reports whether seed is named like a derived role of another seed this allowlist
// allows ("<allowed seed>-<i>" on the same path, DerivedIndex), and returns that seed. Such a
// role is never usable as a seed: cloning a derived role would bypass --role-creation-limit
// ("kubestash-x-0" into "kubestash-x-0-0", ...) and re-clone trust the webhook wrote itself.
func (l Allowlist) DerivedSeed(seed RoleARN) (RoleARN, bool) {
	parent, ok := derivedParent(seed)
	if !ok || !l.Allows(parent.String()) {
		return RoleARN{}, false
	}
	return parent, true
}

// String returns the globs joined by commas.
func (l Allowlist) String() string { return strings.Join(l.globs, ",") }

// quoteShort quotes s for an error message, cut so a huge input does not flood logs.
func quoteShort(s string) string {
	const max = 120
	if len(s) > max {
		return strconv.Quote(s[:max]) + "..."
	}
	return strconv.Quote(s)
}
