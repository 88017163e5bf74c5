package aws

import (
	"bytes"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"net/url"
	"slices"
	"strings"
	"testing"
)

const (
	issuerA   = "oidc.eks.us-east-1.amazonaws.com/id/ABCDEF0123456789ABCDEF0123456789"
	issuerB   = "oidc.eks.eu-west-1.amazonaws.com/id/0123456789ABCDEF0123456789ABCDEF"
	providerA = "arn:aws:iam::123456789012:oidc-provider/" + issuerA
	providerB = "arn:aws:iam::123456789012:oidc-provider/" + issuerB
)

// seedDoc is a KubeStash seed trust policy as a user writes it (indented, seed's own subject).
func seedDoc(stmts ...string) string {
	return "{\n  \"Version\": \"2012-10-17\",\n  \"Statement\": [" + strings.Join(stmts, ",\n") + "]\n}"
}

func oidcStmt(provider, issuer string, subs ...string) string {
	list, _ := json.Marshal(subs)
	return `{"Effect": "Allow", "Principal": {"Federated": "` + provider + `"}, "Action": "sts:AssumeRoleWithWebIdentity",
	  "Condition": {"StringEquals": {"` + issuer + `:aud": "sts.amazonaws.com"}, "StringLike": {"` + issuer + `:sub": ` + string(list) + `}}}`
}

// iamEncode mimics IAM's RFC 3986 encoding of policy documents in responses.
func iamEncode(doc string) string { return strings.ReplaceAll(url.QueryEscape(doc), "+", "%20") }

func mustParse(t *testing.T, doc string) TrustPolicy {
	t.Helper()
	p, err := ParseTrustPolicy(doc)
	if err != nil {
		t.Fatalf("ParseTrustPolicy: %v\n%s", err, doc)
	}
	return p
}

func mustJSON(t *testing.T, p TrustPolicy) string {
	t.Helper()
	js, err := p.JSON()
	if err != nil {
		t.Fatal(err)
	}
	return js
}

func TestDeriveTrustPolicy(t *testing.T) {
	operator := "system:serviceaccount:kubestash:kubestash-operator"
	tests := []struct {
		name     string
		seed     string
		subjects []string
		want     string
		wantErr  error
	}{{
		name:     "one statement, seed subject dropped, aud kept, subjects sorted",
		seed:     seedDoc(oidcStmt(providerA, issuerA, operator)),
		subjects: []string{"system:serviceaccount:demo:b", "system:serviceaccount:demo:a", "system:serviceaccount:demo:b"},
		want: `{"Statement":[{"Action":"sts:AssumeRoleWithWebIdentity","Condition":{"StringEquals":{"` + issuerA + `:aud":"sts.amazonaws.com"},` +
			`"StringLike":{"` + issuerA + `:sub":["system:serviceaccount:demo:a","system:serviceaccount:demo:b"]}},"Effect":"Allow","Principal":{"Federated":"` + providerA + `"}}],"Version":"2012-10-17"}`,
	}, {
		name:     "URL-encoded seed as IAM returns it",
		seed:     iamEncode(seedDoc(oidcStmt(providerA, issuerA, operator))),
		subjects: []string{"system:serviceaccount:demo:a"},
		want: `{"Statement":[{"Action":"sts:AssumeRoleWithWebIdentity","Condition":{"StringEquals":{"` + issuerA + `:aud":"sts.amazonaws.com"},` +
			`"StringLike":{"` + issuerA + `:sub":["system:serviceaccount:demo:a"]}},"Effect":"Allow","Principal":{"Federated":"` + providerA + `"}}],"Version":"2012-10-17"}`,
	}, {
		name: "sub under StringEquals with other case, extra condition and unknown fields kept",
		seed: `{"Version":"2012-10-17","Id":"seed-trust","Statement":{"Sid":"Irsa","Effect":"Allow","Principal":{"Federated":"` + providerA + `"},"Action":["sts:AssumeRoleWithWebIdentity","sts:TagSession"],` +
			`"Condition":{"StringEquals":{"` + strings.ToUpper(issuerA[:4]) + issuerA[4:] + `:SUB":"` + operator + `","` + issuerA + `:aud":["sts.amazonaws.com"]},"ForAnyValue:StringEquals":{"` + issuerA + `:amr":"x"}},"X-Future":{"n":1.50}}}`,
		subjects: []string{"system:serviceaccount:demo:a"},
		want: `{"Id":"seed-trust","Statement":[{"Action":["sts:AssumeRoleWithWebIdentity","sts:TagSession"],"Condition":{"ForAnyValue:StringEquals":{"` + issuerA + `:amr":"x"},"StringEquals":{"` + issuerA + `:aud":["sts.amazonaws.com"]},` +
			`"StringLike":{"` + issuerA + `:sub":["system:serviceaccount:demo:a"]}},"Effect":"Allow","Principal":{"Federated":"` + providerA + `"},"Sid":"Irsa","X-Future":{"n":1.50}}],"Version":"2012-10-17"}`,
	}, {
		name: "two clusters: both statements get the list; Deny kept verbatim; other Allow dropped",
		seed: seedDoc(oidcStmt(providerA, issuerA, operator), oidcStmt(providerB, issuerB, operator),
			`{"Effect":"Deny","Principal":{"Federated":"`+providerA+`"},"Action":"sts:AssumeRoleWithWebIdentity","Condition":{"StringLike":{"`+issuerA+`:sub":"system:serviceaccount:kube-system:*"}}}`,
			`{"Effect":"Allow","Principal":{"Service":"ec2.amazonaws.com"},"Action":"sts:AssumeRole"}`),
		subjects: []string{"system:serviceaccount:demo:a"},
		want: `{"Statement":[` +
			`{"Action":"sts:AssumeRoleWithWebIdentity","Condition":{"StringEquals":{"` + issuerA + `:aud":"sts.amazonaws.com"},"StringLike":{"` + issuerA + `:sub":["system:serviceaccount:demo:a"]}},"Effect":"Allow","Principal":{"Federated":"` + providerA + `"}},` +
			`{"Action":"sts:AssumeRoleWithWebIdentity","Condition":{"StringEquals":{"` + issuerB + `:aud":"sts.amazonaws.com"},"StringLike":{"` + issuerB + `:sub":["system:serviceaccount:demo:a"]}},"Effect":"Allow","Principal":{"Federated":"` + providerB + `"}},` +
			`{"Action":"sts:AssumeRoleWithWebIdentity","Condition":{"StringLike":{"` + issuerA + `:sub":"system:serviceaccount:kube-system:*"}},"Effect":"Deny","Principal":{"Federated":"` + providerA + `"}}` +
			`],"Version":"2012-10-17"}`,
	}, {
		name:     "no subjects: unmatchable placeholder, never an open statement",
		seed:     seedDoc(oidcStmt(providerA, issuerA, operator)),
		subjects: nil,
		want: `{"Statement":[{"Action":"sts:AssumeRoleWithWebIdentity","Condition":{"StringEquals":{"` + issuerA + `:aud":"sts.amazonaws.com"},` +
			`"StringLike":{"` + issuerA + `:sub":["` + noSubject + `"]}},"Effect":"Allow","Principal":{"Federated":"` + providerA + `"}}],"Version":"2012-10-17"}`,
	}, {
		name:    "seed without OIDC statement",
		seed:    seedDoc(`{"Effect":"Allow","Principal":{"Service":"ec2.amazonaws.com"},"Action":"sts:AssumeRole"}`),
		wantErr: ErrSeedNotOIDC,
	}, {
		name:    "SAML federation is not OIDC",
		seed:    seedDoc(`{"Effect":"Allow","Principal":{"Federated":"arn:aws:iam::123456789012:saml-provider/corp"},"Action":"sts:AssumeRoleWithSAML"}`),
		wantErr: ErrSeedNotOIDC,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			seed := mustParse(t, tt.seed)
			d, err := DeriveTrustPolicy(seed, tt.subjects)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := mustJSON(t, d)
			if got != tt.want {
				t.Fatalf("derived document\n got %s\nwant %s", got, tt.want)
			}
			var compact bytes.Buffer
			if err := json.Compact(&compact, []byte(got)); err != nil || compact.String() != got {
				t.Errorf("JSON() is not compact valid JSON: %v", err)
			}
			if size, _ := d.Size(); size != len(got) {
				t.Errorf("Size() = %d, len(JSON()) = %d", size, len(got))
			}
			// Reading the derived document back yields exactly the assigned subjects, and
			// re-rendering it is a fixed point.
			back := mustParse(t, iamEncode(got))
			if want := normalizeSubjects(tt.subjects); strings.Join(back.Subjects(), ",") != strings.Join(want, ",") {
				t.Errorf("subjects read back %q, want %q", back.Subjects(), want)
			}
			if again := mustJSON(t, back); again != got {
				t.Errorf("round trip changed the document\n got %s\nwant %s", again, got)
			}
		})
	}
}

func TestParseTrustPolicyErrors(t *testing.T) {
	tests := []struct{ name, doc, want string }{
		{"not JSON", "hello", "neither JSON"},
		{"bad percent encoding", "%7B%ZZ", "neither JSON"},
		{"URL-encoded non-JSON", "abc%20def", "neither JSON"},
		{"no Statement", `{"Version":"2012-10-17"}`, "no Statement"},
		{"Statement is a string", `{"Statement":"x"}`, "neither an object nor an array"},
		{"two providers in one statement", seedDoc(`{"Effect":"Allow","Principal":{"Federated":["` + providerA + `","` + providerB + `"]},"Action":"sts:AssumeRoleWithWebIdentity"}`), "split it"},
		{"sub is a number", seedDoc(`{"Effect":"Allow","Principal":{"Federated":"` + providerA + `"},"Action":"sts:AssumeRoleWithWebIdentity","Condition":{"StringLike":{"` + issuerA + `:sub":5}}}`), "string or a list"},
		{"huge", `{"Statement":[` + strings.Repeat(" ", maxPolicyDocLen) + `]}`, "more than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := ParseTrustPolicy(tt.doc); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tt.want)
			}
		})
	}
}

func TestTrustPolicyRoundTripKeepsUnknownFields(t *testing.T) {
	// A statement we do not understand and a single-object Statement survive a round trip.
	docs := []string{
		`{"Statement":{"Action":"sts:AssumeRole","Effect":"Allow","NotPrincipal":{"AWS":"arn:aws:iam::123456789012:root"},"Sid":"s"},"Version":"2012-10-17"}`,
		`{"Id":"x","Statement":[{"Action":"sts:AssumeRole","Condition":{"Bool":{"aws:MultiFactorAuthPresent":true}},"Effect":"Allow","Principal":{"AWS":["arn:aws:iam::1:root"]}}],"Version":"2012-10-17","X":[1,{"y":null}]}`,
	}
	for _, doc := range docs {
		if got := mustJSON(t, mustParse(t, iamEncode(doc))); got != doc {
			t.Errorf("round trip\n got %s\nwant %s", got, doc)
		}
	}
}

func TestSubjectEditing(t *testing.T) {
	seed := mustParse(t, seedDoc(oidcStmt(providerA, issuerA, "system:serviceaccount:kubestash:op")))
	a, b, c := "system:serviceaccount:demo:a", "system:serviceaccount:demo:b", "system:serviceaccount:demo:c"
	p1, _ := DeriveTrustPolicy(seed, nil)
	p1, _ = p1.WithSubject(c)
	p1, _ = p1.WithSubject(a)
	p1, _ = p1.WithSubject(b)
	p2, _ := DeriveTrustPolicy(seed, []string{b, c, a})
	if mustJSON(t, p1) != mustJSON(t, p2) {
		t.Fatalf("insertion order changed the document:\n%s\n%s", mustJSON(t, p1), mustJSON(t, p2))
	}
	if _, added := p1.WithSubject(a); added {
		t.Error("adding a listed subject reported added")
	}
	if _, added := p1.WithSubject(noSubject); added {
		t.Error("the placeholder can be added as a subject")
	}
	p3, n := p1.WithoutSubjects(a, "system:serviceaccount:demo:zz", c)
	if n != 2 || strings.Join(p3.Subjects(), ",") != b {
		t.Errorf("WithoutSubjects = %q, %d", p3.Subjects(), n)
	}
	if p1.Len() != 3 || !p1.Has(a) {
		t.Error("WithoutSubjects modified the original policy")
	}
	if _, n := p3.WithoutSubjects(a); n != 0 {
		t.Errorf("removing an absent subject removed %d", n)
	}
	empty, _ := p3.WithoutSubjects(b)
	if !strings.Contains(mustJSON(t, empty), noSubject) || mustParse(t, mustJSON(t, empty)).Len() != 0 {
		t.Errorf("emptied policy: %s", mustJSON(t, empty))
	}
	s1, _ := p3.Size()
	s2, _ := p1.Size()
	if s2-s1 != 2*(len(a)+3) {
		t.Errorf("two subjects of %d chars cost %d characters, want %d", len(a), s2-s1, 2*(len(a)+3))
	}
}

func TestCanonicalJSON(t *testing.T) {
	a, err1 := CanonicalJSON(iamEncode("{\n \"Version\": \"2012-10-17\", \"Statement\": [{\"Effect\":\"Allow\",\"Action\":\"s3:*\",\"Resource\":\"*\"}]}"))
	b, err2 := CanonicalJSON(`{"Statement":[{"Resource":"*","Action":"s3:*","Effect":"Allow"}],"Version":"2012-10-17"}`)
	if err1 != nil || err2 != nil || a != b {
		t.Fatalf("CanonicalJSON differs: %q %v / %q %v", a, err1, b, err2)
	}
}

func TestNormalizeIssuer(t *testing.T) {
	for in, want := range map[string]string{
		"https://oidc.eks.eu-west-1.amazonaws.com/id/ABC":  "oidc.eks.eu-west-1.amazonaws.com/id/ABC",
		"https://oidc.eks.eu-west-1.amazonaws.com/id/ABC/": "oidc.eks.eu-west-1.amazonaws.com/id/ABC",
		"oidc.example/id/X":      "oidc.example/id/X",
		"":                       "",
		"http://oidc.example":    "error",
		"https://":               "error",
		"https://oidc.example/*": "error",
	} {
		got, err := NormalizeIssuer(in)
		if (err != nil) != (want == "error") || (err == nil && got != want) {
			t.Errorf("NormalizeIssuer(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}

// Pinned to one provider, only its statements carry subjects; the others are kept verbatim,
// with their own subjects, and never receive ours.
func TestTrustPolicyPinnedToOneProvider(t *testing.T) {
	const (
		here  = "arn:aws:iam::123456789012:oidc-provider/oidc.here/id/A"
		there = "arn:aws:iam::123456789012:oidc-provider/oidc.there/id/B"
	)
	stmt := func(provider, host, sub string) string {
		return `{"Effect":"Allow","Principal":{"Federated":"` + provider + `"},"Action":"sts:AssumeRoleWithWebIdentity","Condition":{"StringEquals":{"` + host + `:aud":"sts.amazonaws.com"},"StringLike":{"` + host + `:sub":"` + sub + `"}}}`
	}
	seedDoc := `{"Version":"2012-10-17","Statement":[` + stmt(here, "oidc.here/id/A", "system:serviceaccount:kubestash:op") + `,` + stmt(there, "oidc.there/id/B", "system:serviceaccount:kubestash:op") + `]}`

	seed, err := ParseTrustPolicyFor(seedDoc, here)
	if err != nil {
		t.Fatal(err)
	}
	if seed.OIDCStatements() != 1 || !slices.Equal(seed.Subjects(), []string{"system:serviceaccount:kubestash:op"}) {
		t.Fatalf("pinned seed: %d subject statements, subjects %v", seed.OIDCStatements(), seed.Subjects())
	}
	d, err := DeriveTrustPolicy(seed, []string{"system:serviceaccount:demo:a"})
	if err != nil {
		t.Fatal(err)
	}
	js, _ := d.JSON()
	if !strings.Contains(js, `"oidc.here/id/A:sub":["system:serviceaccount:demo:a"]`) || !strings.Contains(js, `"oidc.there/id/B:sub":"system:serviceaccount:kubestash:op"`) ||
		strings.Count(js, "system:serviceaccount:demo:a") != 1 {
		t.Errorf("derived document: %s", js)
	}
	// Read back pinned, the derived role lists only its own subjects.
	back, err := ParseTrustPolicyFor(js, here)
	if err != nil || !slices.Equal(back.Subjects(), []string{"system:serviceaccount:demo:a"}) {
		t.Errorf("read back: %v, %v", back.Subjects(), err)
	}
	again, _ := back.JSON()
	if again != js {
		t.Errorf("round trip changed the document:\n%s\n%s", js, again)
	}

	// Unpinned, both statements get the subjects (today's behaviour).
	loose, _ := ParseTrustPolicy(seedDoc)
	if loose.OIDCStatements() != 2 {
		t.Errorf("unpinned: %d subject statements", loose.OIDCStatements())
	}

	// No statement for the pinned provider: nothing a derived role could carry.
	other, err := ParseTrustPolicyFor(seedDoc, "arn:aws:iam::123456789012:oidc-provider/oidc.elsewhere/id/C")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := DeriveTrustPolicy(other, nil); !errors.Is(err, ErrSeedNotOIDC) {
		t.Errorf("seed with no statement for the pinned provider: %v", err)
	}
}

// marshalSubjects writes what encoding/json writes (without HTML escaping) for any list.
func TestMarshalSubjectsMatchesEncodingJSON(t *testing.T) {
	cases := [][]string{nil, {}, {""}, {"system:serviceaccount:demo:a"}, {"a", "b<>&", "c'd"}, {`q"`}, {`b\s`}, {"t\tab"}, {"\x7f"}, {"é"}, {"\u2028"}, {"\xff"}, {"~", " ", "!"}}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 5000 {
		var list []string
		for range rng.IntN(4) {
			b := make([]byte, rng.IntN(6))
			for i := range b {
				b[i] = byte(rng.IntN(256))
				if rng.IntN(3) > 0 {
					b[i] = byte(0x20 + rng.IntN(0x5f))
				}
			}
			list = append(list, string(b))
		}
		cases = append(cases, list)
	}
	for _, list := range cases {
		got, err1 := marshalSubjects(list)
		want, err2 := marshalCompact(list)
		if string(got) != string(want) || (err1 == nil) != (err2 == nil) {
			t.Fatalf("marshalSubjects(%q) = %s, %v; encoding/json: %s, %v", list, got, err1, want, err2)
		}
	}
}

// stringOrList reads a list by its first byte; anything else reads as before.
func TestStringOrList(t *testing.T) {
	for raw, want := range map[string][]string{`"a"`: {"a"}, ` ["a","b"]`: {"a", "b"}, `[]`: {}, `null`: {""}, `["a",null]`: {"a", ""}} {
		got, err := stringOrList(json.RawMessage(raw))
		if err != nil || !slices.Equal(got, want) {
			t.Errorf("stringOrList(%s) = %q, %v; want %q", raw, got, err, want)
		}
	}
	for _, raw := range []string{`[1]`, `["a"`, `1`, `{}`, `[`, ``} {
		if got, err := stringOrList(json.RawMessage(raw)); err == nil {
			t.Errorf("stringOrList(%s) = %q, want an error", raw, got)
		}
	}
}

// Parsing the rendering of a policy gives the policy back, for the provider it was parsed or
// derived for: what lets parseTrustKnown skip the parse.
func TestParseOfRenderingIsThePolicy(t *testing.T) {
	operator := "system:serviceaccount:kubestash:kubestash-operator"
	deny := `{"Effect": "Deny", "Principal": {"Federated": "` + providerA + `"}, "Action": "sts:AssumeRoleWithWebIdentity", "Condition": {"StringLike": {"` + issuerA + `:sub": "system:serviceaccount:kube-system:*"}}}`
	other := `{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}`
	docs := []string{
		seedDoc(oidcStmt(providerA, issuerA, operator)),
		seedDoc(oidcStmt(providerA, issuerA, operator), deny, other),
		seedDoc(oidcStmt(providerA, issuerA, operator), oidcStmt(providerB, issuerB, operator)),
		`{"Statement": ` + oidcStmt(providerA, issuerA, operator) + `}`, // a single statement object
	}
	for _, provider := range []string{"", providerA, providerB} {
		for _, doc := range docs {
			seed, err := ParseTrustPolicyFor(doc, provider)
			if err != nil {
				continue // no statement for this provider
			}
			two, _ := seed.WithSubject("system:serviceaccount:demo:b")
			none, _ := two.WithoutSubjects(two.Subjects()...)
			policies := []TrustPolicy{seed, two, none}
			if d, err := DeriveTrustPolicy(seed, []string{"system:serviceaccount:demo:a", "system:serviceaccount:demo:c"}); err == nil {
				empty, _ := d.WithoutSubjects(d.Subjects()...)
				policies = append(policies, d, empty)
			}
			for _, p := range policies {
				js := mustJSON(t, p)
				if p.OIDCStatements() == 0 {
					// Its subjects are in no statement, so not in its rendering: never taken as known.
					if got, err := parseTrustKnown(js, provider, p); err != nil || got.tmpl == p.tmpl {
						t.Errorf("provider %q: a policy without OIDC statement was taken as known (%v)", provider, err)
					}
					continue
				}
				back, err := ParseTrustPolicyFor(js, provider)
				if err != nil {
					t.Fatalf("provider %q: parsing the rendering %s: %v", provider, js, err)
				}
				backJS := mustJSON(t, back)
				ps, _ := p.Size()
				bs, _ := back.Size()
				if backJS != js || !slices.Equal(back.Subjects(), p.Subjects()) || !slices.Equal(back.Issuers(), p.Issuers()) || ps != bs {
					t.Errorf("provider %q: %s\nparsed back renders %s, subjects %q (want %q), size %d (want %d)", provider, js, backJS, back.Subjects(), p.Subjects(), bs, ps)
				}
				// Edits of either give the same documents too.
				pa, _ := p.WithSubject("system:serviceaccount:demo:z")
				ba, _ := back.WithSubject("system:serviceaccount:demo:z")
				if mustJSON(t, pa) != mustJSON(t, ba) {
					t.Errorf("provider %q: adding a subject to %s differs after parsing it back", provider, js)
				}
			}
		}
	}
}

// parseTrustKnown returns the known policy only for its own document, URL-encoded or not.
func TestParseTrustKnown(t *testing.T) {
	seed := mustParse(t, seedDoc(oidcStmt(providerA, issuerA, "system:serviceaccount:kubestash:op")))
	known, err := DeriveTrustPolicy(seed, []string{"system:serviceaccount:demo:a"})
	if err != nil {
		t.Fatal(err)
	}
	js := mustJSON(t, known)
	for _, doc := range []string{js, iamEncode(js)} {
		got, err := parseTrustKnown(doc, "", known)
		if err != nil || got.tmpl != known.tmpl {
			t.Errorf("its own document (%.30s…): %v, known returned: %v", doc, err, got.tmpl == known.tmpl)
		}
	}
	more, _ := known.WithSubject("system:serviceaccount:demo:b")
	got, err := parseTrustKnown(mustJSON(t, more), "", known)
	if err != nil || got.tmpl == known.tmpl || !slices.Equal(got.Subjects(), more.Subjects()) {
		t.Errorf("another document: %v, subjects %q, known returned: %v", err, got.Subjects(), got.tmpl == known.tmpl)
	}
	if got, err := parseTrustKnown(js, "", TrustPolicy{}); err != nil || !slices.Equal(got.Subjects(), known.Subjects()) {
		t.Errorf("no known policy: %v, subjects %q", err, got.Subjects())
	}
	if _, err := parseTrustKnown(`{"Statement": 1`, "", known); err == nil {
		t.Error("a broken document parsed")
	}
}
