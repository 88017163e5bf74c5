// Package access decides who may ask this server for cloud access: which namespaces and which
// requesting users or groups. Whoever can create a ServiceAccount can write our input
// annotations, so the annotations prove nothing; the requester (the review's userInfo, known only
// at admission) and the namespace must be allowed too. Seed roles and Azure scopes have their own
// allowlists in their providers.
package access

import (
	"fmt"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"

	"go.klusters.dev/credential-webhook/glob"
)

// Policy is an allowlist of namespaces and requesters. Empty lists allow nothing.
type Policy struct {
	namespaces []string // globs
	users      []string // globs
	groups     []string // globs
}

// Parse builds a Policy. namespaces is a comma-separated list of namespace globs ("*" for any);
// requesters a comma-separated list of "user:NAME" or "group:NAME" globs (a bare NAME is a user;
// "*" is anyone).
func Parse(namespaces, requesters string) (Policy, error) {
	var p Policy
	for _, ns := range split(namespaces) {
		if err := glob.Validate(ns); err != nil {
			return Policy{}, fmt.Errorf("--allowed-namespaces: %w", err)
		}
		p.namespaces = append(p.namespaces, ns)
	}
	for _, r := range split(requesters) {
		kind, name, found := strings.Cut(r, ":")
		if !found || (kind != "user" && kind != "group") {
			// "system:serviceaccount:ns:sa" also contains colons: anything not starting with
			// user: or group: is a whole username.
			kind, name = "user", r
		}
		if name == "" {
			return Policy{}, fmt.Errorf("requester %q has no name", r)
		}
		if err := glob.Validate(name); err != nil {
			return Policy{}, fmt.Errorf("--allowed-requesters %q: %w", r, err)
		}
		if r == "*" {
			p.users, p.groups = append(p.users, "*"), append(p.groups, "*")
			continue
		}
		if kind == "user" {
			p.users = append(p.users, name)
		} else {
			p.groups = append(p.groups, name)
		}
	}
	return p, nil
}

func split(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// match is the allowlists' one dialect (package glob): '*' is any run, the rest literal.
func match(patterns []string, s string) bool { return glob.Any(patterns, s) }

// Check returns nil when namespace and the requester are allowed, else an error saying which
// is not (safe to show to the requester: it names only their own request).
func (p Policy) Check(namespace, username string, groups []string) error {
	if !validNamespace(namespace) {
		return fmt.Errorf("namespace %.80q is not a valid namespace name", namespace)
	}
	if !match(p.namespaces, namespace) {
		return fmt.Errorf("namespace %q is not allowed to request cloud identities (--allowed-namespaces)", namespace)
	}
	if match(p.users, username) {
		return nil
	}
	for _, g := range groups {
		if match(p.groups, g) {
			return nil
		}
	}
	return fmt.Errorf("requester %q is not allowed to request cloud identities (--allowed-requesters)", username)
}

// NamespaceAllowed reports whether namespace may hold ServiceAccounts with cloud identities.
// The writer checks it again when it finishes a claim: the list may have changed since admission.
func (p Policy) NamespaceAllowed(namespace string) bool {
	return validNamespace(namespace) && match(p.namespaces, namespace)
}

// validNamespace: a review body may name anything, the apiserver only DNS-1123 labels. Checked
// before matching so that no glob, however broad, lets a name the apiserver could never hold
// (with "/" or ":" that would change the meaning of an IAM subject) reach a cloud.
func validNamespace(ns string) bool { return len(validation.IsDNS1123Label(ns)) == 0 }
