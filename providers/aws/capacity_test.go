package aws

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
)

// subjectOfLen returns distinct valid subjects of exactly n characters.
func subjectOfLen(n, i int) string {
	prefix := "system:serviceaccount:demo:"
	id := fmt.Sprintf("-%d", i)
	return prefix + strings.Repeat("s", n-len(prefix)-len(id)) + id
}

// fill adds subjects of length n to a fresh derived role until one does not fit.
func fill(t *testing.T, seed TrustPolicy, n, quota int) (TrustPolicy, int) {
	t.Helper()
	p, err := DeriveTrustPolicy(seed, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; ; i++ {
		next, size, ok, err := Fit(p, subjectOfLen(n, i), quota)
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			if size <= quota {
				t.Fatalf("Fit refused a document of %d <= %d characters", size, quota)
			}
			return p, i
		}
		p = next
	}
}

func TestCapacityMatchesTheory(t *testing.T) {
	op := "system:serviceaccount:kubestash:kubestash-operator"
	seeds := map[string]string{
		"one statement":              seedDoc(oidcStmt(providerA, issuerA, op)),
		"one statement, URL-encoded": iamEncode(seedDoc(oidcStmt(providerA, issuerA, op))),
		"two clusters":               seedDoc(oidcStmt(providerA, issuerA, op), oidcStmt(providerB, issuerB, op)),
		"two clusters and a deny":    seedDoc(oidcStmt(providerA, issuerA, op), oidcStmt(providerB, issuerB, op), `{"Effect":"Deny","Principal":{"Federated":"`+providerA+`"},"Action":"sts:AssumeRoleWithWebIdentity","Condition":{"StringLike":{"`+issuerA+`:sub":"system:serviceaccount:kube-system:*"}}}`),
		"extra allow (not copied)":   seedDoc(oidcStmt(providerA, issuerA, op), `{"Effect":"Allow","Principal":{"Service":"ec2.amazonaws.com"},"Action":"sts:AssumeRole"}`),
	}
	for name, doc := range seeds {
		seed := mustParse(t, doc)
		for _, quota := range []int{2048, 4096, 8192} {
			for _, n := range []int{40, 55, 70, 85, 100} {
				t.Run(fmt.Sprintf("%s/quota=%d/len=%d", name, quota, n), func(t *testing.T) {
					p, got := fill(t, seed, n, quota)
					size, _ := p.Size()
					if size > quota {
						t.Fatalf("filled role is %d characters, quota %d", size, quota)
					}
					var names []string
					for i := range got + 10 {
						names = append(names, subjectOfLen(n, i))
					}
					theory, err := TheoreticalMax(seed, names, quota)
					if err != nil {
						t.Fatal(err)
					}
					if got != theory {
						t.Fatalf("measured %d subjects per role, theory %d", got, theory)
					}
					// Nothing was left on the table: the slack is smaller than one more entry.
					if slack, entry := quota-size, p.OIDCStatements()*(n+3); slack >= entry {
						t.Errorf("slack %d >= cost of one more subject %d", slack, entry)
					}
				})
			}
		}
	}
}

// kubeStashNames are ServiceAccount names as KubeStash creates them: one per backup session
// (Unix timestamp), one per retention run, and a few restores.
func kubeStashNames(n int) []string {
	var out []string
	ts := 1778072138
	for i := 0; len(out) < n; i++ {
		switch i % 10 {
		case 9:
			out = append(out, fmt.Sprintf("system:serviceaccount:demo:retention-policy-sample-backup-daemon-demo-session-%d", ts+i*3600+264))
		case 7:
			out = append(out, fmt.Sprintf("system:serviceaccount:demo:app-restore-restore-%d", i))
		default:
			out = append(out, fmt.Sprintf("system:serviceaccount:demo:sample-backup-daemon-demo-session-%d", ts+i*3600))
		}
	}
	return out
}

// TestKubeStashFirstFitEfficiency places many KubeStash names with Place, one at a time as
// single assignments arrive, and compares the subjects per role with the theoretical maximum.
func TestKubeStashFirstFitEfficiency(t *testing.T) {
	seed := mustParse(t, seedDoc(oidcStmt(providerA, issuerA, "system:serviceaccount:kubestash:kubestash-operator")))
	names := kubeStashNames(1000)
	for _, quota := range []int{2048, 4096, 8192} {
		var views []RoleView
		for _, s := range names {
			pl := Place(views, []string{s}, quota, DefaultRoleCreationLimit, PlaceOptions{Seed: &seed})
			if err := pl.Decisions[0].Err; err != nil {
				t.Fatal(err)
			}
			views = pl.After(views)
		}
		roles := make([]TrustPolicy, len(views))
		for i, v := range views {
			if v.Index != i {
				t.Fatalf("quota %d: role %d is missing", quota, i)
			}
			roles[i] = v.Trust
		}
		// Every role but the last is full; compare their average with the best possible for
		// these names (the shortest ones packed together).
		full := roles[:len(roles)-1]
		total := 0
		for _, p := range full {
			total += p.Len()
			if size, _ := p.Size(); size > quota {
				t.Fatalf("quota %d: a role is %d characters", quota, size)
			}
		}
		theory, err := TheoreticalMax(seed, names, quota)
		if err != nil {
			t.Fatal(err)
		}
		// The theory for the typical name (the mix is 80% session names) is the fair yardstick.
		typical := typicalMax(t, seed, names[0], quota)
		// Bin-packing bound: no packing can use fewer roles than the entries' total cost divided
		// by the room one role has for entries.
		one, _ := DeriveTrustPolicy(seed, names[:1])
		size1, _ := one.Size()
		room := quota - (size1 - (len(names[0]) + 2)) + 1 // +1: the first entry has no comma
		cost := 0
		for _, s := range names {
			cost += len(s) + 3
		}
		minRoles := (cost + room - 1) / room
		// (Fractional: it ignores that entries do not split, so it is informative only.)
		t.Logf("quota %d: %d roles used, fractional bin-packing lower bound %d", quota, len(roles), minRoles)
		// First-fit invariant: no subject sits in a higher role while a lower one has room for it.
		for i, p := range roles {
			size, _ := p.Size()
			for _, q := range roles[i+1:] {
				for _, s := range q.Subjects() {
					if size+len(s)+3 <= quota {
						t.Fatalf("quota %d: role %d has %d free characters but %s went to a later role", quota, i, quota-size, s)
					}
				}
			}
		}
		avg := float64(total) / float64(len(full))
		t.Logf("quota %d: %d subjects in %d roles, %.2f per full role; theoretical max %d (shortest names), %d (session names); achieved %.1f%%",
			quota, len(names), len(roles), avg, theory, typical, 100*avg/float64(typical))
		if avg < 0.99*float64(typical) {
			t.Errorf("quota %d: %.2f subjects per role is below 99%% of %d", quota, avg, typical)
		}
	}
}

func typicalMax(t *testing.T, seed TrustPolicy, name string, quota int) int {
	t.Helper()
	var same []string
	for i := range 400 {
		same = append(same, name[:len(name)-4]+fmt.Sprintf("%04d", i))
	}
	n, err := TheoreticalMax(seed, same, quota)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestFirstFitReusesFreedSpace(t *testing.T) {
	seed := mustParse(t, seedDoc(oidcStmt(providerA, issuerA, "system:serviceaccount:kubestash:op")))
	const quota = 2048
	full0, n0 := fill(t, seed, 70, quota)
	full1, _ := fill(t, seed, 70, quota)
	roles := []RoleView{{Index: 0, Trust: full0}, {Index: 1, Trust: full1}}
	newcomer := "system:serviceaccount:demo:newcomer-of-a-similar-length-0000000000000000000"
	place := func() Placement {
		return Place(roles, []string{newcomer}, quota, DefaultRoleCreationLimit, PlaceOptions{Seed: &seed})
	}
	if d := place().Decisions[0]; !d.Creates {
		t.Fatalf("full roles took a subject at %d", d.Index)
	}
	// Free one entry in the second role: the next subject goes there, not to a new role.
	roles[1].Trust, _ = roles[1].Trust.WithoutSubjects(subjectOfLen(70, 3))
	if d := place().Decisions[0]; d.Creates || d.Index != 1 {
		t.Fatalf("freed space in role 1 not reused: got %+v", d)
	}
	// Free space in both: the lowest index wins.
	roles[0].Trust, _ = roles[0].Trust.WithoutSubjects(subjectOfLen(70, n0-1))
	pl := place()
	if d := pl.Decisions[0]; d.Creates || d.Index != 0 || len(pl.Writes) != 1 || !pl.Writes[0].Trust.Has(newcomer) {
		t.Fatalf("lowest index not preferred: got %+v", d)
	}
}

func TestWriteRolesTable(t *testing.T) {
	var buf bytes.Buffer
	WriteRolesTable(&buf, []RoleInfo{
		{Index: 0, ARN: "arn:aws:iam::123456789012:role/seed-0", Subjects: make([]string, 21), Chars: 2040, Quota: 2048, Fill: 2040.0 / 2048, Owned: true},
		{Index: 1, ARN: "arn:aws:iam::123456789012:role/seed-1", Subjects: make([]string, 3), Chars: 512, Quota: 2048, Fill: 0.25},
	})
	want := "INDEX  ROLE                                   SUBJECTS  CHARS  QUOTA  FILL   OWNED\n" +
		"0      arn:aws:iam::123456789012:role/seed-0  21        2040   2048   99.6%  yes\n" +
		"1      arn:aws:iam::123456789012:role/seed-1  3         512    2048   25.0%  NO (seed tag missing)\n"
	if buf.String() != want {
		t.Fatalf("table:\n%s\nwant:\n%s", buf.String(), want)
	}
}
