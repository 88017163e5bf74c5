package markers

import (
	"errors"
	"regexp"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"go.klusters.dev/credential-webhook/annotations"
)

const (
	seedA = "arn:aws:iam::123456789012:role/kubestash/seed-a"
	seedB = "arn:aws:iam::123456789012:role/kubestash/seed-b"
	miA   = "/subscriptions/6c1e3b5a-93f4-4d2b-8a7e-2f1c9d0b4e57/resourcegroups/kubestash-backup/providers/microsoft.managedidentity/userassignedidentities/kubestash-selfhost"
)

var claimRE = regexp.MustCompile(`^(aws|azure):[0-9a-f]{16}$`)

func TestFor(t *testing.T) {
	a := For(AWS, seedA)
	cases := []struct {
		name string
		got  Claim
		same bool // equal to a
	}{
		{"same input, same claim (deterministic)", For(AWS, seedA), true},
		{"other seed", For(AWS, seedB), false},
		{"same text on the other cloud", For(Azure, seedA), false},
		// Callers canonicalise; For itself must not: a seed differing only in case or
		// whitespace is another request, and so another claim.
		{"case differs", For(AWS, strings.ToUpper(seedA)), false},
		{"trailing space", For(AWS, seedA+" "), false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if !claimRE.MatchString(tc.got.String()) {
				t.Fatalf("claim %q is not <cloud>:<16 hex>", tc.got)
			}
			if (tc.got == a) != tc.same {
				t.Fatalf("For = %v, a = %v, want equal = %v", tc.got, a, tc.same)
			}
		})
	}
	if a.Cloud != AWS || For(Azure, miA).Cloud != Azure {
		t.Fatalf("cloud not kept: %v", a)
	}
	// A claim from For always parses back: what admission writes, the writer can read.
	if cs, err := ParsePending(For(Azure, miA).String()); err != nil || !cs.Has(For(Azure, miA)) {
		t.Fatalf("ParsePending(For) = %v, %v", cs, err)
	}
}

func TestClaimsSetOperations(t *testing.T) {
	a, b, z := For(AWS, seedA), For(AWS, seedB), For(Azure, miA)
	cs := Claims{}.With(z).With(a)
	if cs.String() != a.String()+" "+z.String() {
		t.Fatalf("With does not sort by cloud: %q", cs)
	}
	cs2 := cs.With(b)
	if len(cs2) != 2 || !cs2.Has(b) || cs2.Has(a) || !cs2.Has(z) {
		t.Fatalf("With did not replace the claim on the same cloud: %v", cs2)
	}
	if !cs.Has(a) {
		t.Fatal("With changed its receiver")
	}
	if w := cs.Without(AWS); len(w) != 1 || !w.Has(z) || !cs.Has(a) {
		t.Fatalf("Without = %v (receiver %v)", w, cs)
	}
	if _, ok := (Claims{}).Get(AWS); ok {
		t.Fatal("empty set has a claim")
	}
}

func TestPendingRoundTrip(t *testing.T) {
	a, z := For(AWS, seedA), For(Azure, miA)
	cases := []struct {
		name  string
		in    Claims
		value string
	}{
		{"none", nil, ""},
		{"aws", Claims{a}, a.String()},
		{"azure", Claims{z}, z.String()},
		{"both, sorted by cloud", Claims{}.With(z).With(a), a.String() + " " + z.String()},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			v := FormatPending(tc.in)
			if v != tc.value {
				t.Fatalf("FormatPending = %q, want %q", v, tc.value)
			}
			got, err := ParsePending(v)
			if err != nil {
				t.Fatal(err)
			}
			if got.String() != tc.in.String() {
				t.Fatalf("ParsePending(%q) = %v, want %v", v, got, tc.in)
			}
		})
	}
	// Any whitespace separates; the order written does not matter.
	got, err := ParsePending("  " + z.String() + "\t" + a.String() + "\n")
	if err != nil || !got.Has(a) || !got.Has(z) || FormatPending(got) != a.String()+" "+z.String() {
		t.Fatalf("ParsePending(reordered) = %v, %v", got, err)
	}
}

func TestGrantedRoundTrip(t *testing.T) {
	a, z := For(AWS, seedA), For(Azure, miA)
	const uid = types.UID("0f3c2b1a-9e8d-4c7b-a6f5-e4d3c2b1a098")
	cases := []struct {
		name  string
		in    Claims
		value string
	}{
		{"uid only", nil, string(uid)},
		{"aws", Claims{a}, string(uid) + " " + a.String()},
		{"both", Claims{a, z}, string(uid) + " " + a.String() + " " + z.String()},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			v := FormatGranted(uid, tc.in)
			if v != tc.value {
				t.Fatalf("FormatGranted = %q, want %q", v, tc.value)
			}
			gu, got, err := ParseGranted(v)
			if err != nil || gu != uid || got.String() != tc.in.String() {
				t.Fatalf("ParseGranted(%q) = %q, %v, %v", v, gu, got, err)
			}
		})
	}
}

func TestMalformedRejected(t *testing.T) {
	d := For(AWS, seedA).Digest
	pending := []struct{ name, value string }{
		{"no colon", "aws"},
		{"unknown cloud", "gcp:" + d},
		{"cloud in upper case", "AWS:" + d},
		{"empty digest", "aws:"},
		{"digest too short", "aws:" + d[:15]},
		{"digest too long", "aws:" + d + "0"},
		{"upper-case hex", "aws:" + strings.ToUpper(d)},
		{"not hex", "aws:" + strings.Repeat("g", 16)},
		{"two claims on one cloud", "aws:" + d + " aws:" + strings.Repeat("0", 16)},
		{"the old free-text reason", "role-limit"},
		{"a granted value is not a pending one", "uid-1 aws:" + d},
	}
	for _, tc := range pending {
		t.Run("pending/"+tc.name, func(t *testing.T) {
			if cs, err := ParsePending(tc.value); !errors.Is(err, ErrMalformed) || cs != nil {
				t.Fatalf("ParsePending(%q) = %v, %v; want ErrMalformed and no claims", tc.value, cs, err)
			}
		})
	}
	granted := []struct{ name, value string }{
		{"empty", ""},
		{"blank", "   "},
		{"no uid", "aws:" + d},
		{"bad claim after the uid", "uid-1 aws:xyz"},
		{"two claims on one cloud", "uid-1 aws:" + d + " aws:" + d},
	}
	for _, tc := range granted {
		t.Run("granted/"+tc.name, func(t *testing.T) {
			if _, _, err := ParseGranted(tc.value); !errors.Is(err, ErrMalformed) {
				t.Fatalf("ParseGranted(%q) err = %v, want ErrMalformed", tc.value, err)
			}
		})
	}
}

func TestStanding(t *testing.T) {
	a, b, z := For(AWS, seedA), For(AWS, seedB), For(Azure, miA)
	const uid, other = types.UID("uid-1"), types.UID("uid-2")
	cases := []struct {
		name             string
		uid              types.UID
		pending, granted string
		want             Claim
		ok               bool
	}{
		{"nothing", uid, "", "", a, false},
		{"pending", uid, a.String(), "", a, true},
		{"pending among others", uid, FormatPending(Claims{a, z}), "", z, true},
		{"pending for another seed", uid, b.String(), "", a, false},
		{"pending for the other cloud only", uid, z.String(), "", a, false},
		{"malformed pending does not count", uid, "aws", "", a, false},
		{"granted to the same UID", uid, "", FormatGranted(uid, Claims{a}), a, true},
		{"granted with the UID only", uid, "", FormatGranted(uid, nil), a, false},
		{"granted for another seed", uid, "", FormatGranted(uid, Claims{b}), a, false},
		{"granted to another UID (re-created name)", other, "", FormatGranted(uid, Claims{a}), a, false},
		{"empty UID never matches", "", "", FormatGranted(uid, Claims{a}), a, false},
		{"malformed granted", uid, "", "uid-1 aws:nothex", a, false},
		{"malformed pending, valid granted", uid, "junk", FormatGranted(uid, Claims{a}), a, true},
		{"pending for another seed, granted for this one", uid, b.String(), FormatGranted(uid, Claims{a}), a, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := Standing(tc.uid, tc.pending, tc.granted, tc.want); got != tc.ok {
				t.Fatalf("Standing(%q, %q, %q, %v) = %v, want %v", tc.uid, tc.pending, tc.granted, tc.want, got, tc.ok)
			}
		})
	}
}

// claimOfSeed stands for a provider's ClaimOf: the claim the seed annotation makes.
func claimOfSeed(ann map[string]string) (Claim, bool) {
	s := ann[annotations.SeedRole]
	if s == "" {
		return Claim{}, false
	}
	return For(AWS, s), true
}

func TestKeeps(t *testing.T) {
	a := For(AWS, seedA)
	sa := func(uid types.UID, ann map[string]string) *corev1.ServiceAccount {
		return &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "sa", UID: uid, Annotations: ann}}
	}
	granted := map[string]string{annotations.SeedRole: seedA, annotations.Granted: FormatGranted("uid-1", Claims{a})}
	cases := []struct {
		name   string
		sa     *corev1.ServiceAccount
		exists bool
		ok     bool
	}{
		{"gone", nil, false, false},
		{"gone, even with a stale object at hand", sa("uid-1", granted), false, false},
		{"may exist, not known yet (grace period, failed read)", nil, true, true},
		{"granted to this UID", sa("uid-1", granted), true, true},
		{"re-created under the same name (other UID)", sa("uid-2", granted), true, false},
		{"pending, not granted yet", sa("uid-3", map[string]string{annotations.SeedRole: seedA, annotations.Pending: a.String()}), true, true},
		{"claim changed to another seed", sa("uid-1", map[string]string{annotations.SeedRole: seedB, annotations.Granted: granted[annotations.Granted]}), true, false},
		{"claim changed, pending marker for the new seed", sa("uid-1", map[string]string{annotations.SeedRole: seedB, annotations.Pending: For(AWS, seedB).String(), annotations.Granted: granted[annotations.Granted]}), true, false},
		{"seed annotation removed", sa("uid-1", map[string]string{annotations.Granted: granted[annotations.Granted]}), true, false},
		{"no markers at all", sa("uid-1", map[string]string{annotations.SeedRole: seedA}), true, false},
		{"no annotations", sa("uid-1", nil), true, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := Keeps(tc.sa, tc.exists, claimOfSeed, a); got != tc.ok {
				t.Fatalf("Keeps = %v, want %v", got, tc.ok)
			}
		})
	}
}

func TestPendingOn(t *testing.T) {
	aws := Claim{Cloud: AWS, Digest: "ec9daefd2f76d000"}.String()
	azure := Claim{Cloud: Azure, Digest: "8db8e437f25cb5c4"}.String()
	for _, tc := range []struct {
		value, cloud string
		want         bool
	}{
		{"", AWS, false},
		{aws, AWS, true},
		{aws, Azure, false},
		{azure, AWS, false},
		{aws + " " + azure, Azure, true},
		{"aws", AWS, true},          // malformed (an old free-text marker): every cloud re-plans
		{"role-limit", Azure, true}, // likewise
	} {
		if got := PendingOn(tc.value, tc.cloud); got != tc.want {
			t.Errorf("PendingOn(%q, %s) = %v, want %v", tc.value, tc.cloud, got, tc.want)
		}
	}
}
