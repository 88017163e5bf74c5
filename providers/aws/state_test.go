package aws

import "testing"

// state keeps one seedState per seed ARN string, however the RoleARN that names it is spelt:
// the memo by RoleARN (byARN) only saves building the string.
func TestStateIsPerARNString(t *testing.T) {
	a := NewAssigner(nil, NewLocalLocker(), Config{}, nil)
	seed := RoleARN{Partition: "aws", Account: "123456789012", Path: "/team/", Name: "seed"}
	same := RoleARN{Partition: "aws", Account: "123456789012", Path: "/", Name: "team/seed"} // the same string
	other := RoleARN{Partition: "aws", Account: "123456789012", Path: "/team/", Name: "other"}
	if seed.String() != same.String() {
		t.Fatalf("%s and %s should spell the same ARN", seed, same)
	}
	st := a.state(seed)
	for range 2 { // built, then from the memo
		if a.state(seed) != st || a.state(same) != st {
			t.Fatal("one ARN string got two caches")
		}
		if a.state(other) == st {
			t.Fatal("two seeds share a cache")
		}
	}
	if len(a.seeds) != 2 {
		t.Errorf("%d caches, want 2", len(a.seeds))
	}
}
