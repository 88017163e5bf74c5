package aws

import (
	"errors"
	"fmt"
	"strings"
)

// SubjectPrefix starts the "sub" claim of every Kubernetes ServiceAccount token.
const SubjectPrefix = "system:serviceaccount:"

// ErrInvalidSubject is wrapped when a namespace/name cannot form a ServiceAccount subject.
var ErrInvalidSubject = errors.New("invalid ServiceAccount subject")

// isDNSLabel reports whether s matches ^[a-z0-9]([-a-z0-9]*[a-z0-9])?$, the apiserver's
// DNS-1123 label without its length limit. Hand-written rather than a regexp: every subject of
// every role is checked on each garbage collection, where the regexp was a fifth of the CPU
// (benchtool sim); subject_test.go holds the expressions as the oracle. A label is a subdomain
// of one label.
func isDNSLabel(s string) bool {
	return strings.IndexByte(s, '.') < 0 && isDNSSubdomain(s)
}

// isDNSSubdomain reports whether s is dot-separated DNS-1123 labels
// (^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$), without the length limit.
//
// One pass over the bytes rather than a label at a time: every garbage collection validates every
// listed subject (ParseSubject), and cutting names at dots was a third of that. The expression
// comes down to: only [a-z0-9.-], an alphanumeric at both ends and on both sides of every dot
// (a label is never empty and never starts or ends with '-'); each byte costs one table lookup.
func isDNSSubdomain(s string) bool {
	if len(s) == 0 || dnsClass[s[0]] != dnsAlnum || dnsClass[s[len(s)-1]] != dnsAlnum {
		return false
	}
	for i := 1; i < len(s)-1; i++ {
		switch dnsClass[s[i]] {
		case dnsAlnum, dnsDash:
		case dnsDot:
			if dnsClass[s[i-1]] != dnsAlnum || dnsClass[s[i+1]] != dnsAlnum {
				return false
			}
		default:
			return false
		}
	}
	return true
}

// dnsClass sorts bytes for isDNSSubdomain.
var dnsClass = func() (t [256]uint8) {
	for c := 'a'; c <= 'z'; c++ {
		t[c] = dnsAlnum
	}
	for c := '0'; c <= '9'; c++ {
		t[c] = dnsAlnum
	}
	t['-'], t['.'] = dnsDash, dnsDot
	return t
}()

const (
	dnsOther uint8 = iota
	dnsAlnum
	dnsDash
	dnsDot
)

// Subject returns "system:serviceaccount:<ns>:<name>" after checking both parts the way the
// apiserver does. The check matters for security, not tidiness: subjects go under StringLike, so a
// '*' or '?' smuggled into a name would match other ServiceAccounts.
func Subject(namespace, name string) (string, error) {
	if err := checkSubjectParts(namespace, name); err != nil {
		return "", err
	}
	return SubjectPrefix + namespace + ":" + name, nil
}

// checkSubjectParts is Subject's check alone: ParseSubject validates every listed subject on
// every garbage collection, where building the subject again only to drop it was a tenth of the
// simulated month's allocations (benchtool sim).
func checkSubjectParts(namespace, name string) error {
	if len(namespace) > 63 || !isDNSLabel(namespace) {
		return fmt.Errorf("%w: namespace %s is not a DNS-1123 label", ErrInvalidSubject, quoteShort(namespace))
	}
	if len(name) > 253 || !isDNSSubdomain(name) {
		return fmt.Errorf("%w: name %s is not a DNS-1123 subdomain", ErrInvalidSubject, quoteShort(name))
	}
	return nil
}

// ParseSubject splits a subject made by Subject back into namespace and name, validating it.
func ParseSubject(s string) (namespace, name string, err error) {
	rest, ok := strings.CutPrefix(s, SubjectPrefix)
	if !ok {
		return "", "", fmt.Errorf("%w: %s does not start with %q", ErrInvalidSubject, quoteShort(s), SubjectPrefix)
	}
	namespace, name, ok = strings.Cut(rest, ":")
	if !ok {
		return "", "", fmt.Errorf("%w: %s has no namespace:name", ErrInvalidSubject, quoteShort(s))
	}
	if err := checkSubjectParts(namespace, name); err != nil {
		return "", "", err
	}
	return namespace, name, nil
}
