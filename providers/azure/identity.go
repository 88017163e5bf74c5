package azure

import (
	"errors"
	"fmt"
	"regexp"
	"strings"

	"go.klusters.dev/credential-webhook/annotations"
)

// ErrInvalidIdentity is wrapped by every error ParseIdentity returns, so admission can tell a
// malformed request (deny it, the requester must fix the annotations) from a cloud failure.
var ErrInvalidIdentity = errors.New("invalid Azure managed identity annotations")

// Identity names a user-assigned managed identity. The values are kept exactly as written (ARM is
// case-insensitive, so comparisons and cache keys lower-case them, but output is not rewritten).
type Identity struct {
	SubscriptionID string
	ResourceGroup  string
	Name           string
}

// ResourceID is the ARM resource ID of the identity.
func (id Identity) ResourceID() string {
	return "/subscriptions/" + id.SubscriptionID +
		"/resourceGroups/" + id.ResourceGroup +
		"/providers/Microsoft.ManagedIdentity/userAssignedIdentities/" + id.Name
}

// key is the case-folded resource ID: ARM treats these names case-insensitively, so two spellings
// of one identity must share a cache entry (and one ARM call).
func (id Identity) key() string { return strings.ToLower(id.ResourceID()) }

// String is the resource ID (for logs).
func (id Identity) String() string { return id.ResourceID() }

// The character classes are ASCII on purpose: Go's \w is [0-9A-Za-z_], so Unicode look-alikes
// (Cyrillic "а", fullwidth digits, zero-width spaces) and control characters never match.
var (
	guidRE = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)
	// ARM: 1-90 characters of alphanumerics, underscore, parentheses, hyphen, period; not ending
	// in a period.
	resourceGroupRE = regexp.MustCompile(`^[-\w._()]{0,89}[-\w_()]$`)
	// Managed identity names: 3-128 characters of alphanumerics, hyphen, underscore, starting
	// with an alphanumeric.
	identityNameRE = regexp.MustCompile(`^[A-Za-z0-9][-\w]{2,127}$`)
)

// IsGUID reports whether s is a GUID in the 8-4-4-4-12 hex form ARM uses for subscription,
// tenant and client IDs.
func IsGUID(s string) bool { return len(s) == 36 && guidRE.MatchString(s) }

// ParseIdentity reads the three KubeStash annotations (annotations.AzureSubscriptionID,
// AzureRGName, AzureMIName) from a ServiceAccount's or Job's annotations.
//
// ok is false, with a nil error, when none of them is present (or all are empty): the object is
// not an Azure one. When some are present, every missing or invalid one is reported in a single
// error wrapping ErrInvalidIdentity and naming the annotation key. Values are never trimmed or
// normalised: a value with whitespace, a newline or a look-alike character is refused rather
// than silently repaired, because the same string is what the requester will see in ARM.
func ParseIdentity(ann map[string]string) (id Identity, ok bool, err error) {
	sub, rg, name := ann[annotations.AzureSubscriptionID], ann[annotations.AzureRGName], ann[annotations.AzureMIName]
	if sub == "" && rg == "" && name == "" {
		return Identity{}, false, nil
	}
	var errs []error
	check := func(key, v, rule string, valid bool) {
		switch {
		case v == "":
			errs = append(errs, fmt.Errorf("annotation %s is missing (the three Azure annotations go together)", key))
		case !valid:
			errs = append(errs, fmt.Errorf("annotation %s=%s is invalid: %s", key, quote(v), rule))
		}
	}
	check(annotations.AzureSubscriptionID, sub, "must be a subscription GUID like 00000000-0000-0000-0000-000000000000", IsGUID(sub))
	check(annotations.AzureRGName, rg, "a resource group name is 1-90 ASCII letters, digits, '-', '_', '.', '(' or ')', not ending in '.'", len(rg) <= 90 && resourceGroupRE.MatchString(rg))
	check(annotations.AzureMIName, name, "a managed identity name is 3-128 ASCII letters, digits, '-' or '_', starting with a letter or digit", len(name) <= 128 && identityNameRE.MatchString(name))
	if len(errs) > 0 {
		return Identity{}, true, fmt.Errorf("%w: %w", ErrInvalidIdentity, errors.Join(errs...))
	}
	return Identity{SubscriptionID: sub, ResourceGroup: rg, Name: name}, true, nil
}

// quote renders a user-supplied value for an error message: escaped (a newline cannot forge a
// second log line or admission message) and cut short (a megabyte annotation stays out of logs).
func quote(v string) string {
	const max = 64
	if len(v) <= max {
		return fmt.Sprintf("%q", v)
	}
	return fmt.Sprintf("%q... (%d bytes)", v[:max], len(v))
}
