package aws

import (
	"net/url"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"
)

// TestWithoutSubjectsScanAndSet: WithoutSubjects removes the same subjects and measures the same
// size whether it scans the few it is given (up to dropScanMax) or puts them in a set, with
// subjects given twice and subjects the policy does not hold.
func TestWithoutSubjectsScanAndSet(t *testing.T) {
	seed := mustParse(t, seedDoc(oidcStmt(providerA, issuerA, "system:serviceaccount:kubestash:op")))
	var all []string
	for i := range 30 {
		all = append(all, subjectOfLen(50+i%7, i))
	}
	p, err := DeriveTrustPolicy(seed, all)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Size(); err != nil { // measured: WithoutSubjects computes the new size
		t.Fatal(err)
	}
	for n := 0; n <= 2*dropScanMax+2; n++ {
		var drop []string
		for i := range n {
			switch i % 3 {
			case 0:
				drop = append(drop, all[(i*7)%len(all)])
			case 1:
				drop = append(drop, subjectOfLen(60, 1000+i)) // not held
			default:
				drop = append(drop, drop[0]) // given twice
			}
		}
		q, removed := p.WithoutSubjects(drop...)
		want := slices.DeleteFunc(slices.Clone(all), func(s string) bool { return slices.Contains(drop, s) })
		slices.Sort(want)
		if !slices.Equal(q.Subjects(), want) || removed != len(all)-len(want) {
			t.Errorf("%d given: %d removed, left %v; want %d removed, left %v", n, removed, q.Subjects(), len(all)-len(want), want)
		}
		js, err := q.JSON()
		if err != nil {
			t.Fatal(err)
		}
		if size, err := q.Size(); err != nil || size != utf8.RuneCountInString(js) {
			t.Errorf("%d given: size %d (%v), the document has %d", n, size, err, utf8.RuneCountInString(js))
		}
	}
}

// jsonListItemLen is what a subject adds to a non-empty list as encoding/json writes it, for
// plain subjects (its fast path) and for escapes, control characters, DEL, UTF-8, invalid UTF-8
// and U+2028 anywhere in them.
func TestJSONListItemLen(t *testing.T) {
	pieces := []string{"system:serviceaccount:demo:sa", `"`, `\`, "\b", "\f", "\n", "\r", "\t", "\x01", "\x1f", "\x7f", "é", "😀", "\xff", "\u2028", "\u2029", "<&>", " ", ""}
	for _, a := range pieces {
		for _, b := range pieces {
			for _, sub := range []string{a + b, "x" + a + "y" + b + "z"} {
				one, err1 := marshalCompact([]string{"first"})
				two, err2 := marshalCompact([]string{"first", sub})
				if err1 != nil || err2 != nil {
					t.Fatal(err1, err2)
				}
				if got, want := jsonListItemLen(sub), utf8.RuneCount(two)-utf8.RuneCount(one); got != want {
					t.Errorf("jsonListItemLen(%q) = %d, encoding/json adds %d", sub, got, want)
				}
			}
		}
	}
}

// decodesTo agrees with DecodePolicyDocument: true exactly when the document decodes, without an
// error, to the JSON given, for plain and URL-encoded documents (either hex case), with '+',
// malformed or truncated escapes, whitespace around them (encoded or not), one byte more or
// less, or over the size limit. Where DecodePolicyDocument trims Unicode whitespace, false is
// allowed: the caller parses then.
func TestDecodesToAgreesWithDecodePolicyDocument(t *testing.T) {
	js := `{"Statement":[{"Effect":"Allow","Condition":{"StringLike":{"x:sub":["a+b c%d"]}}}],"Version":"2012-10-17"}`
	upper := iamEncode(js)
	lower := strings.NewReplacer("%7B", "%7b", "%7D", "%7d", "%2B", "%2b", "%3A", "%3a", "%2C", "%2c", "%5B", "%5b", "%5D", "%5d").Replace(upper)
	docs := []string{js, " " + js + "\n", url.PathEscape(js), upper, lower, "  " + upper + "\t", "%20" + upper + "%0A%0d",
		upper[:len(upper)-1], upper[:len(upper)-2], upper + "%", upper + "%2", upper + "%zz", "%zz" + upper, upper + "x", "x" + upper,
		strings.Replace(upper, "%20", "+", 1), strings.Replace(upper, "%2B", "+", 1),
		js[:len(js)-1], js + "}", "", "%7B%7D", strings.Repeat(" ", maxPolicyDocLen) + js}
	unicodeSpace := []string{"%C2%A0" + upper, upper + "%C2%85"}
	same := 0
	for _, doc := range append(docs, unicodeSpace...) {
		dec, err := DecodePolicyDocument(doc)
		want := err == nil && dec == js
		got := decodesTo(doc, js)
		if got && !want || !got && want && !slices.Contains(unicodeSpace, doc) {
			t.Errorf("decodesTo(%.60q…) = %v; DecodePolicyDocument gives %.60q, %v", doc, got, dec, err)
		}
		if got {
			same++
		}
	}
	if same < 6 {
		t.Errorf("only %d documents decode to the JSON: the cases that should are missing", same)
	}
}

// WithSubject inserts in order at the start, middle and end, leaves the policy it was called on
// as it was, and shares no list with it.
func TestWithSubjectInsertsInACopy(t *testing.T) {
	seed := mustParse(t, seedDoc(oidcStmt(providerA, issuerA, "system:serviceaccount:kubestash:op")))
	p, err := DeriveTrustPolicy(seed, []string{"system:serviceaccount:demo:b", "system:serviceaccount:demo:d"})
	if err != nil {
		t.Fatal(err)
	}
	for _, sub := range []string{"system:serviceaccount:demo:a", "system:serviceaccount:demo:c", "system:serviceaccount:demo:e"} {
		q, added := p.WithSubject(sub)
		want := slices.Sorted(slices.Values(append(p.Subjects(), sub)))
		if !added || !slices.Equal(q.Subjects(), want) {
			t.Errorf("WithSubject(%s) = %v, %v; want %v", sub, q.Subjects(), added, want)
		}
		if !slices.Equal(p.Subjects(), []string{"system:serviceaccount:demo:b", "system:serviceaccount:demo:d"}) {
			t.Fatalf("WithSubject(%s) changed the original: %v", sub, p.Subjects())
		}
		q.subjects[0] = "changed"
		if p.subjects[0] == "changed" {
			t.Fatalf("WithSubject(%s) shares its list with the original", sub)
		}
	}
}
