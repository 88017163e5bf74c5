package azure

import (
	"errors"
	"regexp"
	"runtime/metrics"
	"strings"
	"testing"

	"go.klusters.dev/credential-webhook/annotations"
)

// Fuzz targets for the Azure inputs a user controls: the three identity annotations on a
// ServiceAccount or Job, and the --azure-allowed-scopes flag they are checked against. Seeds are
// inline plus testdata/fuzz/<FuzzName>/, run by plain `go test`; run longer with scripts/fuzz.sh.

// heapAllocs is the total of bytes ever allocated on the heap, read without stopping the world;
// small allocations are counted per cached span, hence allocSlack.
func heapAllocs() uint64 {
	s := []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

const allocSlack = 4 << 20

// checkAllocs fails when f allocated more than perByte bytes per input byte plus allocSlack.
func checkAllocs(t *testing.T, n int, perByte uint64, what string, f func()) {
	t.Helper()
	before := heapAllocs()
	f()
	if got, limit := heapAllocs()-before, perByte*uint64(n)+allocSlack; got > limit {
		t.Fatalf("%s allocated %d bytes for a %d-byte input (limit %d)", what, got, n, limit)
	}
}

// maxFuzzInput bounds each string input; the production bound is the apiserver's 256 KiB of
// annotations, and every check here is linear, which the allocation check enforces.
const maxFuzzInput = 64 << 10

// FuzzParseIdentity: ParseIdentity never panics; an accepted identity is plain ASCII without
// "/" in any part (so its resource ID has exactly the 8 segments scopes are matched on and cannot
// climb out of its resource group), and an error names the annotation and stays short however
// large the value.
func FuzzParseIdentity(f *testing.F) {
	for _, c := range [][3]string{
		{"00000000-0000-0000-0000-0000000000aa", "backup-rg", "kubestash-mi"},
		{"00000000-0000-0000-0000-0000000000aa", "backup-rg/../other-rg", "kubestash-mi"},
		{"00000000-0000-0000-0000-0000000000aa", "backup-rg", "kubestash-mi/../../x"},
		{"00000000-0000-0000-0000-0000000000aa", "bаckup-rg", "kubestash-mi"}, // Cyrillic а
		{"00000000-0000-0000-0000-0000000000aa", "backup-rg.", "kubestash-mi"},
		{"00000000-0000-0000-0000-0000000000aa", "backup-rg\n", "kubestash-mi"},
		{"０0000000-0000-0000-0000-0000000000aa", "backup-rg", "kubestash-mi"}, // fullwidth 0
		{"", "", ""},
		{"", "backup-rg", ""},
		{"00000000-0000-0000-0000-0000000000aa", "(rg)", "mi_"},
	} {
		f.Add(c[0], c[1], c[2])
	}
	f.Fuzz(func(t *testing.T, sub, rg, name string) {
		if len(sub)+len(rg)+len(name) > maxFuzzInput {
			return
		}
		ann := map[string]string{}
		for k, v := range map[string]string{annotations.AzureSubscriptionID: sub, annotations.AzureRGName: rg, annotations.AzureMIName: name} {
			if v != "" {
				ann[k] = v
			}
		}
		var id Identity
		var ok bool
		var err error
		checkAllocs(t, len(sub)+len(rg)+len(name), 16, "ParseIdentity", func() { id, ok, err = ParseIdentity(ann) })
		if !ok {
			if err != nil || len(ann) > 0 {
				t.Fatalf("ok=false for %d annotations, err %v", len(ann), err)
			}
			return
		}
		if err != nil {
			if !errors.Is(err, ErrInvalidIdentity) {
				t.Fatalf("error does not wrap ErrInvalidIdentity: %.200v", err)
			}
			// Three annotation keys, three short quoted values, the rules: a few hundred bytes.
			if len(err.Error()) > 2048 {
				t.Fatalf("error is %d bytes: %.300v", len(err.Error()), err)
			}
			return
		}
		if id.SubscriptionID != sub || id.ResourceGroup != rg || id.Name != name {
			t.Fatalf("values were rewritten: %+v", id)
		}
		for _, v := range []string{sub, rg, name} {
			for i := 0; i < len(v); i++ {
				if c := v[i]; c <= ' ' || c >= 0x7f || c == '/' {
					t.Fatalf("accepted byte %#x in %q", c, v)
				}
			}
		}
		if !IsGUID(sub) || len(rg) > 90 || strings.HasSuffix(rg, ".") || len(name) < 3 || len(name) > 128 {
			t.Fatalf("accepted an identity ARM would refuse: %+v", id)
		}
		if segs := strings.Split(id.ResourceID(), "/"); len(segs) != 9 {
			t.Fatalf("resource ID %q has %d segments", id.ResourceID(), len(segs)-1)
		}
	})
}

// scopeRE is an independent oracle for Scopes.Allows on one entry: the entry's segments as a
// prefix of the identity's lower-cased resource ID, '*' matching within one segment only.
func scopeRE(entry string) *regexp.Regexp {
	segs := strings.Split(strings.ToLower(strings.TrimSuffix(entry, "/")), "/")
	for i, s := range segs {
		parts := strings.Split(s, "*")
		for j, p := range parts {
			parts[j] = regexp.QuoteMeta(p)
		}
		segs[i] = strings.Join(parts, "[^/]*")
	}
	return regexp.MustCompile(`^` + strings.Join(segs, "/") + `(/.*)?$`)
}

// FuzzScopes: ParseScopes never panics; a bare "*" is never accepted; and Allows agrees with
// an independently built matcher on every identity ParseIdentity accepts, so no spelling of an
// identity (case, look-alikes, extra segments) crosses a scope boundary.
func FuzzScopes(f *testing.F) {
	const sub, rg, mi = "00000000-0000-0000-0000-0000000000aa", "backup-rg", "kubestash-mi"
	for _, c := range [][4]string{
		{"/subscriptions/" + sub + "/resourceGroups/" + rg, sub, rg, mi},
		{"/subscriptions/" + sub + "/resourceGroups/" + rg, "00000000-0000-0000-0000-0000000000ff", rg, mi},
		{"/subscriptions/" + sub + "/resourceGroups/" + rg, sub, "backup-rg-2", mi},
		{"/subscriptions/*/resourceGroups/backup-*", sub, "BACKUP-RG", mi},
		{"/subscriptions/*", sub, rg, mi},
		{"*", sub, rg, mi},
		{"/subscriptions/" + sub + "/resourceGroups/" + rg + "/providers/Microsoft.ManagedIdentity/userAssignedIdentities/kubestash-*", sub, rg, "kubestash-mi"},
		{"/subscriptions/" + sub + "/resourceGroups/*rg, /subscriptions/x", sub, rg, mi},
		{"/subscriptions/" + sub + "/resourcegroups/" + rg + "/", sub, rg, mi},
		{"/SUBSCRIPTIONS/" + sub, sub, rg, mi},
	} {
		f.Add(c[0], c[1], c[2], c[3])
	}
	f.Fuzz(func(t *testing.T, list, sub, rg, name string) {
		if len(list) > maxFuzzInput || len(sub)+len(rg)+len(name) > 4096 {
			return
		}
		var s Scopes
		var err error
		checkAllocs(t, len(list), 32, "ParseScopes", func() { s, err = ParseScopes(list) })
		if err != nil {
			return
		}
		for _, e := range s.entries {
			if e.raw == "*" {
				t.Fatal(`a bare "*" was accepted`)
			}
		}
		id, ok, err := ParseIdentity(map[string]string{
			annotations.AzureSubscriptionID: sub, annotations.AzureRGName: rg, annotations.AzureMIName: name,
		})
		if !ok || err != nil {
			return
		}
		got := s.Allows(id)
		want := false
		for _, e := range s.entries {
			if scopeRE(e.raw).MatchString(strings.ToLower(id.ResourceID())) {
				want = true
			}
		}
		if got != want {
			t.Fatalf("Scopes(%q).Allows(%s) = %v, oracle says %v", list, id.ResourceID(), got, want)
		}
		if len(s.entries) == 0 && got {
			t.Fatal("empty scopes allowed an identity")
		}
	})
}
