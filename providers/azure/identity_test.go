package azure

import (
	"errors"
	"strings"
	"testing"

	"go.klusters.dev/credential-webhook/annotations"
)

const (
	testSub = "6c1e3b5a-93f4-4d2b-8a7e-2f1c9d0b4e57"
	testRG  = "kubestash-backup"
	testMI  = "kubestash-selfhost"
)

func azAnn(sub, rg, name string) map[string]string {
	m := map[string]string{}
	if sub != "" {
		m[annotations.AzureSubscriptionID] = sub
	}
	if rg != "" {
		m[annotations.AzureRGName] = rg
	}
	if name != "" {
		m[annotations.AzureMIName] = name
	}
	return m
}

func TestParseIdentity(t *testing.T) {
	tests := []struct {
		name   string
		ann    map[string]string
		want   Identity
		ours   bool
		errHas []string // substrings the error must contain; nil means no error
		errNot []string // substrings it must not contain
		noLine string   // no line of the error may start with this
	}{
		{name: "no annotations", ann: nil},
		{name: "unrelated annotations", ann: map[string]string{annotations.SeedRole: "arn:aws:iam::748392615204:role/x"}},
		{name: "all three empty", ann: map[string]string{annotations.AzureSubscriptionID: "", annotations.AzureRGName: "", annotations.AzureMIName: ""}},
		{name: "valid", ann: azAnn(testSub, testRG, testMI), ours: true,
			want: Identity{SubscriptionID: testSub, ResourceGroup: testRG, Name: testMI}},
		{name: "valid upper-case GUID, odd but legal RG", ann: azAnn(strings.ToUpper(testSub), "rg_(prod).eu-1", "Mi_1-a"), ours: true,
			want: Identity{SubscriptionID: strings.ToUpper(testSub), ResourceGroup: "rg_(prod).eu-1", Name: "Mi_1-a"}},
		{name: "shortest and longest", ann: azAnn(testSub, "r", strings.Repeat("a", 128)), ours: true,
			want: Identity{SubscriptionID: testSub, ResourceGroup: "r", Name: strings.Repeat("a", 128)}},
		{name: "RG of 90", ann: azAnn(testSub, strings.Repeat("r", 90), "abc"), ours: true,
			want: Identity{SubscriptionID: testSub, ResourceGroup: strings.Repeat("r", 90), Name: "abc"}},
		{name: "only name", ann: azAnn("", "", testMI), ours: true,
			errHas: []string{annotations.AzureSubscriptionID + " is missing", annotations.AzureRGName + " is missing"},
			errNot: []string{annotations.AzureMIName}},
		{name: "only subscription and RG", ann: azAnn(testSub, testRG, ""), ours: true,
			errHas: []string{annotations.AzureMIName + " is missing"}},
		{name: "subscription not a GUID", ann: azAnn("my-subscription", testRG, testMI), ours: true,
			errHas: []string{annotations.AzureSubscriptionID + `="my-subscription" is invalid`, "GUID"}},
		{name: "GUID without dashes", ann: azAnn(strings.ReplaceAll(testSub, "-", ""), testRG, testMI), ours: true,
			errHas: []string{annotations.AzureSubscriptionID}},
		{name: "GUID in braces", ann: azAnn("{"+testSub+"}", testRG, testMI), ours: true,
			errHas: []string{annotations.AzureSubscriptionID}},
		{name: "RG ends in dot", ann: azAnn(testSub, "rg.", testMI), ours: true,
			errHas: []string{annotations.AzureRGName, "not ending in '.'"}},
		{name: "RG of 91", ann: azAnn(testSub, strings.Repeat("r", 91), testMI), ours: true,
			errHas: []string{annotations.AzureRGName}},
		{name: "RG with slash (path injection)", ann: azAnn(testSub, "rg/../../x", testMI), ours: true,
			errHas: []string{annotations.AzureRGName}},
		{name: "name too short", ann: azAnn(testSub, testRG, "ab"), ours: true,
			errHas: []string{annotations.AzureMIName, "3-128"}},
		{name: "name of 129", ann: azAnn(testSub, testRG, strings.Repeat("a", 129)), ours: true,
			errHas: []string{annotations.AzureMIName}},
		{name: "name starts with hyphen", ann: azAnn(testSub, testRG, "-abc"), ours: true,
			errHas: []string{annotations.AzureMIName}},
		{name: "name with dot", ann: azAnn(testSub, testRG, "a.bc"), ours: true,
			errHas: []string{annotations.AzureMIName}},
		{name: "every value wrong reports all three", ann: azAnn("x", "rg.", "a"), ours: true,
			errHas: []string{annotations.AzureSubscriptionID, annotations.AzureRGName, annotations.AzureMIName}},
		// Hostile input.
		{name: "trailing newline", ann: azAnn(testSub+"\n", testRG, testMI), ours: true,
			errHas: []string{`\n"`}},
		{name: "newline forging a log line", ann: azAnn(testSub, testRG, "abc\nlevel=ERROR msg=forged"), ours: true,
			errHas: []string{annotations.AzureMIName, `abc\nlevel=ERROR`}, noLine: "level="},
		{name: "leading space", ann: azAnn(testSub, " "+testRG, testMI), ours: true,
			errHas: []string{annotations.AzureRGName}},
		{name: "NUL byte", ann: azAnn(testSub, testRG, "abc\x00def"), ours: true,
			errHas: []string{annotations.AzureMIName}},
		{name: "Cyrillic a look-alike", ann: azAnn(testSub, testRG, "kubestаsh"), ours: true,
			errHas: []string{annotations.AzureMIName}},
		{name: "fullwidth digits in GUID", ann: azAnn(strings.Replace(testSub, "6", "６", 1), testRG, testMI), ours: true,
			errHas: []string{annotations.AzureSubscriptionID}},
		{name: "zero-width space in RG", ann: azAnn(testSub, "kube\u200bstash", testMI), ours: true,
			errHas: []string{annotations.AzureRGName}},
		{name: "Unicode letter in RG", ann: azAnn(testSub, "rgé", testMI), ours: true,
			errHas: []string{annotations.AzureRGName}},
		{name: "1 MiB value is refused and not echoed", ann: azAnn(testSub, testRG, strings.Repeat("a", 1<<20)), ours: true,
			errHas: []string{annotations.AzureMIName, "(1048576 bytes)"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, ours, err := ParseIdentity(tc.ann)
			if ours != tc.ours {
				t.Fatalf("ours = %v, want %v", ours, tc.ours)
			}
			if tc.errHas == nil {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				if got != tc.want {
					t.Fatalf("got %+v, want %+v", got, tc.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("no error, got %+v", got)
			}
			if !errors.Is(err, ErrInvalidIdentity) {
				t.Errorf("error does not wrap ErrInvalidIdentity: %v", err)
			}
			if got != (Identity{}) {
				t.Errorf("identity returned with an error: %+v", got)
			}
			if len(err.Error()) > 1000 {
				t.Errorf("error message is %d bytes long", len(err.Error()))
			}
			for _, s := range tc.errHas {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not contain %q", err, s)
				}
			}
			for _, s := range tc.errNot {
				if strings.Contains(err.Error(), s) {
					t.Errorf("error %q contains %q", err, s)
				}
			}
			// Lines of the joined error are our own; the user's value must not start one.
			for _, line := range strings.Split(err.Error(), "\n") {
				if tc.noLine != "" && strings.HasPrefix(line, tc.noLine) {
					t.Errorf("error line %q starts with %q", line, tc.noLine)
				}
			}
		})
	}
}

func TestResourceID(t *testing.T) {
	id := Identity{SubscriptionID: testSub, ResourceGroup: "RG-1", Name: "mi-a"}
	want := "/subscriptions/" + testSub + "/resourceGroups/RG-1/providers/Microsoft.ManagedIdentity/userAssignedIdentities/mi-a"
	if got := id.ResourceID(); got != want {
		t.Fatalf("ResourceID() = %q, want %q", got, want)
	}
	other := Identity{SubscriptionID: strings.ToUpper(testSub), ResourceGroup: "rg-1", Name: "MI-A"}
	if id.key() != other.key() {
		t.Fatalf("case variants have different cache keys: %q vs %q", id.key(), other.key())
	}
}
