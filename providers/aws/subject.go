package aws

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
)

// SubjectPrefix starts the "sub" claim of every Kubernetes ServiceAccount token.
const SubjectPrefix = "system:serviceaccount:"

// ErrInvalidSubject is wrapped when a namespace/name cannot form a ServiceAccount subject.
var ErrInvalidSubject = errors.New("invalid ServiceAccount subject")

var (
	dnsLabelRE     = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
	dnsSubdomainRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
)

// Subject returns "system:serviceaccount:<ns>:<name>" after checking both parts the way the
// apiserver does. The check matters for security, not tidiness: subjects go under StringLike, so a
// '*' or '?' smuggled into a name would match other ServiceAccounts.
func Subject(namespace, name string) (string, error) {
	if len(namespace) > 63 || !dnsLabelRE.MatchString(namespace) {
		return "", fmt.Errorf("%w: namespace %s is not a DNS-1123 label", ErrInvalidSubject, quoteShort(namespace))
	}
	if len(name) > 253 || !dnsSubdomainRE.MatchString(name) {
		return "", fmt.Errorf("%w: name %s is not a DNS-1123 subdomain", ErrInvalidSubject, quoteShort(name))
	}
	return SubjectPrefix + namespace + ":" + name, nil
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
	if _, err := Subject(namespace, name); err != nil {
		return "", "", err
	}
	return namespace, name, nil
}
