package iammodel

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"
)

// oracleSize is what measure computed before compactSize: json.Compact, then its characters.
func oracleSize(doc string) (int, bool) {
	var b bytes.Buffer
	if err := json.Compact(&b, []byte(doc)); err != nil {
		return 0, false
	}
	return utf8.RuneCount(b.Bytes()), true
}

var compactCases = []string{
	``, ` `, `{}`, ` { } `, `[]`, `[ ]`, `"x"`, `"`, `"\"`, `"\u00e9"`, `"\u00g9"`, `"\x"`, `"a` + "\x01" + `"`,
	`"é ü"`, "\"\xff\xfe\"", `0`, `-0`, `01`, `-`, `1.`, `1.5`, `1e`, `1e+`, `1E-7`, `-12.5e10`, `.5`, `+1`,
	`true`, `tru`, `false`, `null`, `nul`, `nullx`, `{"a":1,}`, `[1,]`, `[1 2]`, `{"a" 1}`, `{a:1}`, `{"a":1}{}`,
	`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Federated":"arn:aws:iam::1:oidc-provider/x"},"Condition":{"StringLike":{"x:sub":["system:serviceaccount:demo:a b"]}}}]}`,
	"{\n  \"Statement\" : [ { \"Effect\" :\t\"Deny\" } ]\r\n}\n",
	strings.Repeat("[", maxJSONDepth) + strings.Repeat("]", maxJSONDepth),
	strings.Repeat("[", maxJSONDepth+1) + strings.Repeat("]", maxJSONDepth+1),
	strings.Repeat(`{"a":`, maxJSONDepth) + "1" + strings.Repeat("}", maxJSONDepth),
	strings.Repeat(`{"a":`, maxJSONDepth+1) + "1" + strings.Repeat("}", maxJSONDepth+1),
}

func TestCompactSizeAgreesWithJSONCompact(t *testing.T) {
	for _, doc := range compactCases {
		n, ok := compactSize(doc)
		wn, wok := oracleSize(doc)
		if n != wn || ok != wok {
			t.Errorf("compactSize(%.60q) = %d, %v; json.Compact: %d, %v", doc, n, ok, wn, wok)
		}
	}
}

func FuzzCompactSize(f *testing.F) {
	for _, doc := range compactCases {
		f.Add(doc)
	}
	f.Fuzz(func(t *testing.T, doc string) {
		n, ok := compactSize(doc)
		wn, wok := oracleSize(doc)
		if n != wn || ok != wok {
			t.Errorf("compactSize(%q) = %d, %v; json.Compact: %d, %v", doc, n, ok, wn, wok)
		}
	})
}

// A 23-subject trust policy as the Assigner writes it, measured the old way and the new.
func BenchmarkMeasure(b *testing.B) {
	subs := make([]string, 23)
	for i := range subs {
		subs[i] = `"system:serviceaccount:demo:sample-backup-0001-session-1764547200"`
	}
	doc := `{"Statement":[{"Action":"sts:AssumeRoleWithWebIdentity","Condition":{"StringEquals":{"oidc.eks.us-east-1.amazonaws.com/id/EXAMPLE:aud":"sts.amazonaws.com"},"StringLike":{"oidc.eks.us-east-1.amazonaws.com/id/EXAMPLE:sub":[` +
		strings.Join(subs, ",") + `]}},"Effect":"Allow","Principal":{"Federated":"arn:aws:iam::123456789012:oidc-provider/oidc.eks.us-east-1.amazonaws.com/id/EXAMPLE"}}],"Version":"2012-10-17"}`
	b.Run("json.Compact", func(b *testing.B) {
		for b.Loop() {
			oracleSize(doc)
		}
	})
	b.Run("compactSize", func(b *testing.B) {
		for b.Loop() {
			compactSize(doc)
		}
	})
}

// runeCount counts as utf8.RuneCountInString does, with non-ASCII bytes (valid or not) at every
// offset of ASCII text, and around eight-byte boundaries.
func TestRuneCount(t *testing.T) {
	for _, piece := range []string{"", "a", "é", "😀", "\xff", "\xe2\x82", "\u2028"} {
		for n := range 20 {
			for at := 0; at <= n; at++ {
				s := strings.Repeat("x", at) + piece + strings.Repeat("y", n-at)
				if got, want := runeCount(s), utf8.RuneCountInString(s); got != want {
					t.Errorf("runeCount(%q) = %d, want %d", s, got, want)
				}
			}
		}
	}
}

// TestStringsAgreeWithJSONCompact: a string holding every byte value at every offset around the
// eight-byte words stringBody reads, and next to bytes that borrow, validated and measured as
// encoding/json does.
func TestStringsAgreeWithJSONCompact(t *testing.T) {
	for n := 1; n <= 17; n++ {
		for at := 0; at < n; at++ {
			for c := 0; c < 256; c++ {
				for _, next := range []byte{'x', 0x00, 0x1f, '"', '\\', 0x80} {
					b := []byte(`"` + strings.Repeat("x", n) + `"`)
					b[1+at] = byte(c)
					if at+1 < n {
						b[2+at] = next
					}
					doc := string(b)
					n1, ok1 := compactSize(doc)
					n2, ok2 := oracleSize(doc)
					if n1 != n2 || ok1 != ok2 {
						t.Fatalf("compactSize(%q) = %d, %v; json.Compact: %d, %v", doc, n1, ok1, n2, ok2)
					}
				}
			}
		}
	}
}
