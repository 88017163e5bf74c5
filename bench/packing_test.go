package bench

import (
	"strings"
	"testing"

	awsp "go.klusters.dev/credential-webhook/providers/aws"
)

func TestSubjectSets(t *testing.T) {
	tests := []struct {
		name   string
		subs   []string
		length int // 0: mixed lengths
	}{
		{"backup", BackupSubjects(50), 71},
		{"retention", RetentionSubjects(50), 88},
		{"restore", RestoreSubjects(50), 50},
		{"mixed", MixedSubjects(50), 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if len(tc.subs) != 50 {
				t.Fatalf("%d subjects, want 50", len(tc.subs))
			}
			seen := map[string]bool{}
			for _, s := range tc.subs {
				if seen[s] {
					t.Fatalf("duplicate subject %s", s)
				}
				seen[s] = true
				if _, _, err := awsp.ParseSubject(s); err != nil {
					t.Fatalf("%s: %v", s, err)
				}
				if tc.length > 0 && len(s) != tc.length {
					t.Fatalf("%s is %d characters, want %d", s, len(s), tc.length)
				}
			}
		})
	}
	mixed := MixedSubjects(40)
	if !strings.Contains(mixed[1], ":retention-policy-") || !strings.Contains(strings.Join(mixed, " "), "-restore-") {
		t.Errorf("the mix must hold retention and restore ServiceAccounts: %v", mixed[:4])
	}
}

func TestRoleModelPredictsSizes(t *testing.T) {
	for _, clusters := range []int{1, 2} {
		seed, err := SeedTrust(clusters)
		if err != nil {
			t.Fatal(err)
		}
		if seed.OIDCStatements() != clusters {
			t.Fatalf("seed has %d OIDC statements, want %d", seed.OIDCStatements(), clusters)
		}
		subs := MixedSubjects(30)
		m, err := MeasureRoleModel(seed, subs[0], subs[1], subs[2])
		if err != nil {
			t.Fatal(err)
		}
		p, err := awsp.DeriveTrustPolicy(seed, subs)
		if err != nil {
			t.Fatal(err)
		}
		size, _ := p.Size()
		want := m.Overhead
		for _, s := range subs {
			want += m.Cost(s)
		}
		if size != want {
			t.Errorf("%d clusters: 30 subjects measure %d, model says %d", clusters, size, want)
		}
	}
}

// Packing must place every subject, never exceed the quota, and for equal-length names fill every
// full role to exactly the theoretical maximum (the design's >= 99 % target).
func TestRunPacking(t *testing.T) {
	for _, c := range PackingCases(300) {
		for _, quota := range []int{2048, 8192} {
			r, err := RunPacking(c, quota)
			if err != nil {
				t.Fatalf("%s at %d: %v", c.Name, quota, err)
			}
			if r.Subjects != 300 {
				t.Errorf("%s at %d: %d subjects placed", c.Name, quota, r.Subjects)
			}
			if r.Roles < r.LowerBound {
				t.Errorf("%s at %d: %d roles is below the lower bound %d: the bound is wrong", c.Name, quota, r.Roles, r.LowerBound)
			}
			if r.MeanFill > 1 || r.MeanFill < 0.9 {
				t.Errorf("%s at %d: mean fill %.3f", c.Name, quota, r.MeanFill)
			}
			if r.MinLen == r.MaxLen && (r.Density != 1 || r.MinPerFullRole != r.TheoreticalMax) {
				t.Errorf("%s at %d: full roles hold %d, theoretical %d", c.Name, quota, r.MinPerFullRole, r.TheoreticalMax)
			}
		}
	}
}

func TestChurnReusesFreedSpace(t *testing.T) {
	c := PackingCases(600)[5]
	if c.Churn == 0 {
		t.Fatalf("case %q has no churn", c.Name)
	}
	seed, err := SeedTrust(1)
	if err != nil {
		t.Fatal(err)
	}
	before, err := Pack(seed, c.Subjects, 4096)
	if err != nil {
		t.Fatal(err)
	}
	r, err := RunPacking(c, 4096)
	if err != nil {
		t.Fatal(err)
	}
	// A third replaced by as many new ones of similar length: at most one more role.
	if r.Roles > len(before.Roles)+1 {
		t.Errorf("after churn %d roles, before %d: freed space was not reused", r.Roles, len(before.Roles))
	}
}
