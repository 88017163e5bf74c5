package aws

import (
	"errors"
	"fmt"
	"testing"
)

// allowed remembers only the seeds it allowed, no more than maxAllowedSeeds of them, and answers
// as the allowlist does every time: refused and derived-looking seeds stay refused.
func TestAllowedRemembersAllowedSeedsOnly(t *testing.T) {
	allow, err := ParseAllowlist("arn:aws:iam::123456789012:role/kubestash-*")
	if err != nil {
		t.Fatal(err)
	}
	a := NewAssigner(nil, NewLocalLocker(), Config{Seeds: allow}, nil)
	arn := func(name string) RoleARN {
		r, err := ParseRoleARN("arn:aws:iam::123456789012:role/" + name)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	for range 2 {
		if err := a.allowed(arn("kubestash-a")); err != nil {
			t.Fatalf("kubestash-a: %v", err)
		}
		if err := a.allowed(arn("other")); !errors.Is(err, ErrNotAllowed) {
			t.Fatalf("other: %v, want ErrNotAllowed", err)
		}
		if err := a.allowed(arn("kubestash-a-0")); err == nil {
			t.Fatal("kubestash-a-0, named like a derived role of kubestash-a, was allowed")
		}
	}
	if len(a.allowedSeeds) != 1 {
		t.Errorf("remembers %d seeds, want only kubestash-a", len(a.allowedSeeds))
	}
	for i := range maxAllowedSeeds + 50 {
		if err := a.allowed(arn(fmt.Sprintf("kubestash-x%d", i))); err != nil {
			t.Fatalf("kubestash-x%d: %v", i, err)
		}
	}
	if len(a.allowedSeeds) != maxAllowedSeeds {
		t.Errorf("remembers %d seeds, want at most %d", len(a.allowedSeeds), maxAllowedSeeds)
	}
}
