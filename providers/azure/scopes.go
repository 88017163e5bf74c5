package azure

import (
	"fmt"
	"regexp"
	"strings"

	"go.klusters.dev/credential-webhook/glob"
)

// Scopes is the --azure-allowed-scopes allowlist: ARM scopes under which this server may bind
// managed identities. The zero value allows nothing (fail closed).
//
// An entry is an ARM scope prefix, one of
//
//	/subscriptions/<sub>
//	/subscriptions/<sub>/resourceGroups/<rg>
//	/subscriptions/<sub>/resourceGroups/<rg>/providers/Microsoft.ManagedIdentity/userAssignedIdentities/<name>
//
// compared case-insensitively like ARM. Within a value segment, "*" matches any run of characters
// (package glob, the dialect of every allowlist, applied segment by segment) so it never crosses
// a "/", so "/subscriptions/*/resourceGroups/backup-*" means "resource groups
// named backup-... in any subscription". The keywords (subscriptions, resourceGroups, ...) are
// literal. Allowing everything must be spelled "/subscriptions/*": a bare "*" is refused so
// that nobody allows every subscription by a typo.
type Scopes struct {
	entries []scope
}

// scope is one parsed entry: the lower-cased path segments without the leading empty one.
type scope struct {
	raw  string
	segs []string
}

// scopeKeywords are the literal segments at even positions of an entry.
var scopeKeywords = []string{"subscriptions", "", "resourcegroups", "", "providers", "microsoft.managedidentity", "userassignedidentities", ""}

// Value segment patterns: the valid characters of the segment, plus "*".
var (
	subPatternRE  = regexp.MustCompile(`^[0-9a-fA-F*-]{1,36}$`)
	rgPatternRE   = regexp.MustCompile(`^[-\w._()*]{1,90}$`)
	namePatternRE = regexp.MustCompile(`^[-\w*]{1,128}$`)
)

// ParseScopes parses a comma- or whitespace-separated list of scope entries. An empty string
// gives empty Scopes (nothing allowed). Every invalid entry is reported.
func ParseScopes(s string) (Scopes, error) {
	fields := strings.FieldsFunc(s, func(r rune) bool {
		return r == ',' || r == ' ' || r == '\t' || r == '\n' || r == '\r'
	})
	var out Scopes
	var bad []string
	for _, f := range fields {
		sc, err := parseScope(f)
		if err != nil {
			bad = append(bad, err.Error())
			continue
		}
		out.entries = append(out.entries, sc)
	}
	if len(bad) > 0 {
		return Scopes{}, fmt.Errorf("invalid Azure scope(s): %s", strings.Join(bad, "; "))
	}
	return out, nil
}

func parseScope(raw string) (scope, error) {
	if raw == "*" {
		return scope{}, fmt.Errorf(`%q: write "/subscriptions/*" to allow every subscription`, raw)
	}
	if len(raw) > 512 {
		return scope{}, fmt.Errorf("%s: longer than any ARM identity scope", quote(raw))
	}
	p := strings.TrimSuffix(raw, "/")
	if !strings.HasPrefix(p, "/") {
		return scope{}, fmt.Errorf("%q: must start with /subscriptions/", raw)
	}
	segs := strings.Split(strings.ToLower(p[1:]), "/")
	switch len(segs) {
	case 2, 4, 8:
	default:
		return scope{}, fmt.Errorf("%q: expected /subscriptions/<sub>, /subscriptions/<sub>/resourceGroups/<rg> or a managed identity resource ID", raw)
	}
	for i, seg := range segs {
		if kw := scopeKeywords[i]; kw != "" {
			if seg != kw {
				return scope{}, fmt.Errorf("%q: segment %d must be %q", raw, i+1, kw)
			}
			continue
		}
		var ok bool
		switch i {
		case 1:
			ok = subPatternRE.MatchString(seg) && (strings.Contains(seg, "*") || IsGUID(seg))
		case 3:
			ok = rgPatternRE.MatchString(seg)
		case 7:
			ok = namePatternRE.MatchString(seg)
		}
		if !ok {
			return scope{}, fmt.Errorf("%q: segment %d %q is not a valid name or pattern", raw, i+1, seg)
		}
	}
	return scope{raw: raw, segs: segs}, nil
}

// Allows reports whether id lies under one of the scopes.
func (s Scopes) Allows(id Identity) bool {
	idSegs := strings.Split(id.key()[1:], "/")
	for _, sc := range s.entries {
		if sc.matches(idSegs) {
			return true
		}
	}
	return false
}

func (sc scope) matches(idSegs []string) bool {
	if len(sc.segs) > len(idSegs) {
		return false
	}
	for i, p := range sc.segs {
		if !glob.Match(p, idSegs[i]) {
			return false
		}
	}
	return true
}

// Len is the number of entries.
func (s Scopes) Len() int { return len(s.entries) }

// String lists the entries as given, comma-separated (for logs and flag help).
func (s Scopes) String() string {
	raw := make([]string, len(s.entries))
	for i, e := range s.entries {
		raw[i] = e.raw
	}
	return strings.Join(raw, ",")
}
