// Package markers is how this server remembers, on the ServiceAccount itself, what it accepted
// and what it granted, so that nothing it does later can be steered by a changed annotation or a
// re-created name.
//
// A Claim is one cloud identity a ServiceAccount asks for: the cloud and a digest of exactly what
// it asks (the seed role ARN, the managed identity's resource ID). Two of our annotations carry
// claims:
//
//   - pending (annotations.Pending), set by admission for an allowed requester: "aws:<digest>
//     azure:<digest>". The review that set it only planned; the write to IAM or RBAC happens once
//     the ServiceAccount is seen persisted, and only for claims the ServiceAccount still makes.
//   - granted (annotations.Granted), set by this server after the write: "<uid> aws:<digest> ...".
//     Garbage collection keeps a cloud subject only while the ServiceAccount with that UID exists
//     and still makes the claim, so a deleted name re-created by someone else gets nothing.
//
// Only this server (and, for pending, admission on behalf of an allowed requester) may write
// these annotations: the ValidatingAdmissionPolicy shipped in the chart enforces it in the
// apiserver, and admission's own-annotations guard strips forgeries as a second line.
package markers

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"go.klusters.dev/credential-webhook/annotations"
)

// Clouds.
const (
	AWS   = "aws"
	Azure = "azure"
)

// digestLen is the length of a claim digest in hex characters (64 bits): enough that no
// annotation edit can find another seed or identity with the same digest by chance.
const digestLen = 16

// Claim is one cloud identity a ServiceAccount asks for.
type Claim struct {
	Cloud  string
	Digest string
}

func (c Claim) String() string { return c.Cloud + ":" + c.Digest }

// For returns the claim on cloud for what (a canonical seed ARN or managed identity resource ID;
// callers canonicalise, so equal requests give equal claims).
func For(cloud, what string) Claim {
	sum := sha256.Sum256([]byte(cloud + "\n" + what))
	return Claim{Cloud: cloud, Digest: hex.EncodeToString(sum[:])[:digestLen]}
}

// ErrMalformed: a marker that this server did not write (or an older version did).
var ErrMalformed = errors.New("malformed marker")

// Claims is a set of claims, at most one per cloud.
type Claims []Claim

// Get returns the claim on cloud.
func (cs Claims) Get(cloud string) (Claim, bool) {
	for _, c := range cs {
		if c.Cloud == cloud {
			return c, true
		}
	}
	return Claim{}, false
}

// Has reports whether cs holds exactly c.
func (cs Claims) Has(c Claim) bool {
	got, ok := cs.Get(c.Cloud)
	return ok && got == c
}

// With returns cs with c replacing any claim on the same cloud, sorted by cloud.
func (cs Claims) With(c Claim) Claims {
	out := slices.DeleteFunc(slices.Clone(cs), func(x Claim) bool { return x.Cloud == c.Cloud })
	out = append(out, c)
	slices.SortFunc(out, func(a, b Claim) int { return strings.Compare(a.Cloud, b.Cloud) })
	return out
}

// Without returns cs without a claim on cloud.
func (cs Claims) Without(cloud string) Claims {
	return slices.DeleteFunc(slices.Clone(cs), func(x Claim) bool { return x.Cloud == cloud })
}

func (cs Claims) String() string {
	parts := make([]string, len(cs))
	for i, c := range cs {
		parts[i] = c.String()
	}
	return strings.Join(parts, " ")
}

// FormatPending is the value of the pending annotation; empty for no claims.
func FormatPending(cs Claims) string { return cs.String() }

// ParsePending reads a pending annotation.
func ParsePending(v string) (Claims, error) {
	return parseClaims(strings.Fields(v))
}

// FormatGranted is the value of the granted annotation.
func FormatGranted(uid types.UID, cs Claims) string {
	if len(cs) == 0 {
		return string(uid)
	}
	return string(uid) + " " + cs.String()
}

// ParseGranted reads a granted annotation.
func ParseGranted(v string) (types.UID, Claims, error) {
	f := strings.Fields(v)
	if len(f) == 0 || strings.Contains(f[0], ":") {
		return "", nil, fmt.Errorf("%w: granted marker has no UID", ErrMalformed)
	}
	cs, err := parseClaims(f[1:])
	return types.UID(f[0]), cs, err
}

func parseClaims(fields []string) (Claims, error) {
	var out Claims
	for _, f := range fields {
		cloud, digest, ok := strings.Cut(f, ":")
		if !ok || (cloud != AWS && cloud != Azure) || len(digest) != digestLen || !isHex(digest) {
			return nil, fmt.Errorf("%w: %.40q is not <cloud>:<digest>", ErrMalformed, f)
		}
		if _, dup := out.Get(cloud); dup {
			return nil, fmt.Errorf("%w: two claims on %s", ErrMalformed, cloud)
		}
		out = out.With(Claim{Cloud: cloud, Digest: digest})
	}
	return out, nil
}

func isHex(s string) bool {
	for _, r := range s {
		if !('0' <= r && r <= '9' || 'a' <= r && r <= 'f') {
			return false
		}
	}
	return true
}

// Standing says whether a ServiceAccount (its uid and annotations) may keep what it was given
// for want, the claim it makes now on that cloud: the claim is pending (admitted, write under
// way) or was granted to this very object (same UID). Anything else — a re-created name, a
// changed seed or identity, a marker someone else wrote — has no standing.
func Standing(uid types.UID, pendingValue, grantedValue string, want Claim) bool {
	if p, err := ParsePending(pendingValue); err == nil && p.Has(want) {
		return true
	}
	if grantedValue == "" {
		return false
	}
	gu, g, err := ParseGranted(grantedValue)
	return err == nil && gu == uid && uid != "" && g.Has(want)
}

// PendingOn reports whether the pending annotation value holds a claim on cloud. A malformed
// value counts as pending on every cloud, so each re-plans rather than trust it. A plugin asks
// about its own cloud only: a ServiceAccount using both clouds, updated while one is pending,
// must not make the other re-plan a claim it already finished.
func PendingOn(pendingValue, cloud string) bool {
	if pendingValue == "" {
		return false
	}
	p, err := ParsePending(pendingValue)
	if err != nil {
		return true
	}
	_, ok := p.Get(cloud)
	return ok
}

// IsGranted reports whether the granted annotation value covers claim c. It does not compare
// the UID: on an UPDATE review the object is the one granted; garbage collection uses Keeps.
func IsGranted(grantedValue string, c Claim) bool {
	_, g, err := ParseGranted(grantedValue)
	return err == nil && g.Has(c)
}

// Lookup answers garbage collection about the ServiceAccount namespace/name. exists is false
// only when it is surely gone; sa is nil when it may exist but is not known yet (a grace period,
// a failed read): then everything it holds stays.
type Lookup func(namespace, name string) (sa *corev1.ServiceAccount, exists bool)

// Keeps reports whether what a cloud holds for a ServiceAccount on the grounds of claim want (a
// trust policy subject for a seed, a binding subject for an identity) stays: the ServiceAccount
// may exist but is not known yet, or it exists, still makes exactly that claim (claimOf its
// annotations now) and has standing for it (pending, or granted to this very UID).
func Keeps(sa *corev1.ServiceAccount, exists bool, claimOf func(map[string]string) (Claim, bool), want Claim) bool {
	if !exists {
		return false
	}
	if sa == nil {
		return true
	}
	if cur, ok := claimOf(sa.Annotations); !ok || cur != want {
		return false
	}
	return Standing(sa.UID, sa.Annotations[annotations.Pending], sa.Annotations[annotations.Granted], want)
}

// ErrRefused marks a permanent refusal to finish a claim (a seed or scope no longer allowed):
// retrying cannot help, so the claim is dropped with a Warning Event.
var ErrRefused = errors.New("refused")
