package aws

import (
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"
)

// The arithmetic size of WithSubject and WithoutSubjects is the rendered size, and JSON from the
// template is the rendered document, for any subject
// (quotes, backslashes, control characters, invalid UTF-8, U+2028) and any number of OIDC
// statements, across the empty-list placeholder and back.
func TestSizeArithmeticMatchesRender(t *testing.T) {
	oneStmt := mustParse(t, `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Federated":"arn:aws:iam::123456789012:oidc-provider/oidc.example/id/A"},"Action":"sts:AssumeRoleWithWebIdentity","Condition":{"StringEquals":{"oidc.example/id/A:aud":"sts.amazonaws.com","oidc.example/id/A:sub":"system:serviceaccount:a:b"}}}]}`)
	twoStmts := mustParse(t, `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Federated":"arn:aws:iam::123456789012:oidc-provider/oidc.example/id/A"},"Action":"sts:AssumeRoleWithWebIdentity","Condition":{"StringEquals":{"oidc.example/id/A:sub":["system:serviceaccount:a:b"]}}},{"Effect":"Allow","Principal":{"Federated":"arn:aws:iam::123456789012:oidc-provider/oidc.other/id/B"},"Action":"sts:AssumeRoleWithWebIdentity","Condition":{"StringLike":{"oidc.other/id/B:sub":"system:serviceaccount:*"}}},{"Effect":"Deny","Principal":"*","Action":"*"}]}`)
	odd := []string{`a"b`, `a\b`, "tab\there", "nl\n", "bell\x07", "\x7f", "del\x1f", "é-ü", "bad\xffutf8", "ls\u2028ps\u2029", "<html>&", "\u00a0", "emoji😀", "\b\f"}
	rng := rand.New(rand.NewPCG(1, 2))
	derived, err := DeriveTrustPolicy(twoStmts, nil)
	if err != nil {
		t.Fatal(err)
	}
	single := mustParse(t, `{"Statement":{"Effect":"Allow","Principal":{"Federated":"arn:aws:iam::123456789012:oidc-provider/oidc.example/id/A"},"Action":"sts:AssumeRoleWithWebIdentity","Condition":{"StringEquals":{"oidc.example/id/A:sub":"system:serviceaccount:a:b"}}}}`)
	for name, p := range map[string]TrustPolicy{"one": oneStmt, "two": twoStmts, "derived, empty": derived, "single statement object": single} {
		t.Run(name, func(t *testing.T) {
			cur := p
			for i := range 400 {
				var sub string
				if rng.IntN(3) == 0 {
					sub = "system:serviceaccount:ns:" + odd[rng.IntN(len(odd))] + strings.Repeat("x", rng.IntN(5))
				} else {
					sub = "system:serviceaccount:demo:session-" + strings.Repeat("y", rng.IntN(40))
				}
				if _, err := cur.Size(); err != nil { // measured, so the next step is arithmetic
					t.Fatal(err)
				}
				if rng.IntN(4) == 0 && cur.Len() > 0 {
					subs := cur.Subjects()
					drop := subs[:rng.IntN(len(subs))+1]
					if rng.IntN(2) == 0 {
						drop = append(drop, drop[0], "never-listed")
					}
					cur, _ = cur.WithoutSubjects(drop...)
				} else {
					cur, _ = cur.WithSubject(sub)
				}
				got, err := cur.Size()
				if err != nil {
					t.Fatal(err)
				}
				js, err := cur.JSON()
				if err != nil {
					t.Fatal(err)
				}
				if ref, err := cur.render(cur.Subjects()); err != nil || ref != js {
					t.Fatalf("step %d: JSON from the template differs from the rendered document (%v):\n%s\n%s", i, err, js, ref)
				}
				if want := utf8.RuneCountInString(js); got != want {
					t.Fatalf("step %d (%d subjects): arithmetic size %d, rendered %d\n%s", i, cur.Len(), got, want, js)
				}
			}
		})
	}
}

// TestIsPlainJSON checks the eight-bytes-at-a-time scan against the byte-by-byte rule: every
// byte value at every position of strings around the word size, and next to every other byte
// value (a borrow out of one lane must not hide its neighbour).
func TestIsPlainJSON(t *testing.T) {
	rule := func(s string) bool {
		for i := 0; i < len(s); i++ {
			if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' {
				return false
			}
		}
		return true
	}
	check := func(s string) {
		t.Helper()
		if got, want := isPlainJSON(s), rule(s); got != want {
			t.Fatalf("isPlainJSON(%q) = %v, want %v", s, got, want)
		}
	}
	check("")
	check("system:serviceaccount:demo:sample-backup-0001-session-1796625434")
	for _, n := range []int{1, 7, 8, 9, 16, 17, 63} {
		base := []byte(strings.Repeat("a", n))
		for pos := 0; pos < n; pos++ {
			for c := 0; c < 256; c++ {
				b := slices.Clone(base)
				b[pos] = byte(c)
				check(string(b))
				if pos+1 < n {
					for _, d := range []byte{0x00, 0x1f, 0x20, 0x21, 0x7e, 0x7f, 0x80, 0xff} {
						b[pos+1] = d
						check(string(b))
					}
				}
			}
		}
	}
}
