package azure

import (
	"strings"
	"testing"
)

func TestParseScopesErrors(t *testing.T) {
	tests := []struct {
		in     string
		errHas string
	}{
		{"*", "/subscriptions/*"},
		{"subscriptions/" + testSub, "must start with"},
		{"/subscription/" + testSub, `"subscriptions"`},
		{"/subscriptions", "expected"},
		{"/subscriptions/" + testSub + "/resourceGroups", "expected"},
		{"/subscriptions/" + testSub + "/rgs/x", `"resourcegroups"`},
		{"/subscriptions/not-a-guid", "not a valid name or pattern"},
		{"/subscriptions//resourceGroups/x", "not a valid name or pattern"},
		{"/subscriptions/" + testSub + "/resourceGroups/a/b", "expected"},
		{"/subscriptions/" + testSub + "/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/x", `"microsoft.managedidentity"`},
		{"/subscriptions/" + testSub + "/resourceGroups/rg%2f", "not a valid name or pattern"},
		{"/subscriptions/" + testSub + "/resourceGroups/rgé", "not a valid name or pattern"},
		{"/subscriptions/" + testSub + "/resourceGroups/" + strings.Repeat("r", 600), "longer than"},
		// One bad entry fails the whole flag: a typo must not silently narrow or widen access.
		{"/subscriptions/" + testSub + ",/subscriptions/bad", "/subscriptions/bad"},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			s, err := ParseScopes(tc.in)
			if err == nil {
				t.Fatalf("no error; parsed %q", s)
			}
			if !strings.Contains(err.Error(), tc.errHas) {
				t.Fatalf("error %q does not contain %q", err, tc.errHas)
			}
		})
	}
}

func TestScopesAllows(t *testing.T) {
	const otherSub = "0b7f2d6e-1a3c-4e5f-9d8b-7c6a5e4d3c2b"
	mi := func(sub, rg, name string) Identity {
		return Identity{SubscriptionID: sub, ResourceGroup: rg, Name: name}
	}
	tests := []struct {
		name   string
		scopes string
		id     Identity
		want   bool
	}{
		{"empty allows nothing", "", mi(testSub, testRG, testMI), false},
		{"subscription", "/subscriptions/" + testSub, mi(testSub, "any", testMI), true},
		{"subscription, trailing slash", "/subscriptions/" + testSub + "/", mi(testSub, "any", testMI), true},
		{"other subscription", "/subscriptions/" + testSub, mi(otherSub, "any", testMI), false},
		{"subscription case-insensitive", "/SUBSCRIPTIONS/" + strings.ToUpper(testSub), mi(testSub, "any", testMI), true},
		{"resource group", "/subscriptions/" + testSub + "/resourceGroups/" + testRG, mi(testSub, testRG, testMI), true},
		{"resource group case-insensitive", "/subscriptions/" + testSub + "/resourcegroups/KubeStash-Backup", mi(testSub, testRG, testMI), true},
		{"other resource group", "/subscriptions/" + testSub + "/resourceGroups/" + testRG, mi(testSub, "prod", testMI), false},
		{"resource group is not a prefix match", "/subscriptions/" + testSub + "/resourceGroups/kubestash", mi(testSub, testRG, testMI), false},
		{"identity", "/subscriptions/" + testSub + "/resourceGroups/" + testRG + "/providers/Microsoft.ManagedIdentity/userAssignedIdentities/" + testMI, mi(testSub, testRG, testMI), true},
		{"other identity", "/subscriptions/" + testSub + "/resourceGroups/" + testRG + "/providers/Microsoft.ManagedIdentity/userAssignedIdentities/" + testMI, mi(testSub, testRG, "other-mi"), false},
		{"every subscription", "/subscriptions/*", mi(otherSub, "x", testMI), true},
		{"RG glob in any subscription", "/subscriptions/*/resourceGroups/kubestash-*", mi(otherSub, testRG, testMI), true},
		{"RG glob mismatch", "/subscriptions/*/resourceGroups/kubestash-*", mi(otherSub, "prod-kubestash-backup", testMI), false},
		{"glob in the middle", "/subscriptions/" + testSub + "/resourceGroups/rg-*-eu", mi(testSub, "rg-prod-eu", testMI), true},
		{"glob in the middle mismatch", "/subscriptions/" + testSub + "/resourceGroups/rg-*-eu", mi(testSub, "rg-prod-us", testMI), false},
		{"glob matches empty", "/subscriptions/" + testSub + "/resourceGroups/rg-*", mi(testSub, "rg-", testMI), true},
		{"glob needs its literal tail", "/subscriptions/" + testSub + "/resourceGroups/*-eu", mi(testSub, "rg-eu-1", testMI), false},
		{"second entry matches", "/subscriptions/" + otherSub + ", /subscriptions/" + testSub, mi(testSub, testRG, testMI), true},
		{"whitespace-separated", "/subscriptions/" + otherSub + "\n/subscriptions/" + testSub, mi(testSub, testRG, testMI), true},
		{"identity glob", "/subscriptions/" + testSub + "/resourceGroups/" + testRG + "/providers/Microsoft.ManagedIdentity/userAssignedIdentities/kubestash-*", mi(testSub, testRG, testMI), true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := ParseScopes(tc.scopes)
			if err != nil {
				t.Fatalf("ParseScopes(%q): %v", tc.scopes, err)
			}
			if got := s.Allows(tc.id); got != tc.want {
				t.Fatalf("Allows(%s) = %v, want %v (scopes %q)", tc.id, got, tc.want, s)
			}
		})
	}
}

func TestScopesString(t *testing.T) {
	in := "/subscriptions/" + testSub + " /subscriptions/*/resourceGroups/KubeStash-*"
	s, err := ParseScopes(in)
	if err != nil {
		t.Fatal(err)
	}
	if s.Len() != 2 || s.String() != "/subscriptions/"+testSub+",/subscriptions/*/resourceGroups/KubeStash-*" {
		t.Fatalf("Len %d, String %q", s.Len(), s)
	}
}
