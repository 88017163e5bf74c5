package aws

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"regexp"
	"runtime/metrics"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	admissionv1 "k8s.io/api/admission/v1"

	"go.klusters.dev/credential-webhook/access"
	"go.klusters.dev/credential-webhook/admission"
	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/markers"
	"go.klusters.dev/credential-webhook/patches"
)

// Fuzz targets for everything in this package that reads user or cloud input: role ARNs and
// allowlists (annotations and flags), trust policies (IAM responses) and the plugin's decision
// to call IAM at all. Seeds are inline below plus testdata/fuzz/<FuzzName>/, run by plain
// `go test`; run longer with scripts/fuzz.sh (make fuzz).

// heapAllocs is the total of bytes ever allocated on the heap, read without stopping the world;
// small allocations are counted per cached span, hence allocSlack.
func heapAllocs() uint64 {
	s := []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

const allocSlack = 4 << 20

// checkAllocs fails when f allocated more than perByte bytes per input byte plus allocSlack.
func checkAllocs(t *testing.T, n int, perByte uint64, what string, f func()) {
	t.Helper()
	before := heapAllocs()
	f()
	if got, limit := heapAllocs()-before, perByte*uint64(n)+allocSlack; got > limit {
		t.Fatalf("%s allocated %d bytes for a %d-byte input (limit %d)", what, got, n, limit)
	}
}

// maxErrorLen bounds any error message about a hostile value: quoteShort cuts values at 120
// characters, so a megabyte annotation never floods a log line or an admission warning.
const maxErrorLen = 1024

// FuzzParseRoleARN: ParseRoleARN never panics; what it accepts is printable ASCII, prints back
// to exactly the input, and yields derived role names IAM accepts (at most 64 characters) that
// are recognised as derived and never confused with the seed itself.
func FuzzParseRoleARN(f *testing.F) {
	// IAM's documented patterns, as oracles for the byte loops that parse.
	roleNameOracle := regexp.MustCompile(`^[A-Za-z0-9_+=,.@-]{1,64}$`)
	accountOracle := regexp.MustCompile(`^[0-9]{12}$`)
	for _, s := range []string{
		"arn:aws:iam::748392615204:role/kubestash-selfhost",
		"arn:aws-cn:iam::123456789012:role/a/b/c/name",
		"arn:aws-us-gov:iam::123456789012:role/" + strings.Repeat("n", 64),
		"arn:аws:iam::123456789012:role/kubestash-selfhost", // Cyrillic а
		"arn:aws:iam::123456789012:role/kubestash-selfhost\n",
		"arn:aws:iam::123456789012:role//x",
		"arn:aws:iam::123456789012:role/aws-service-role/x",
		"arn:aws:iam::123456789012:user/x",
		"arn:aws:iam:us-east-1:123456789012:role/x",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if len(s) > 4096 {
			return
		}
		var a RoleARN
		var err error
		checkAllocs(t, len(s), 16, "ParseRoleARN", func() { a, err = ParseRoleARN(s) })
		if err != nil {
			if !errors.Is(err, ErrInvalidARN) || len(err.Error()) > maxErrorLen {
				t.Fatalf("error does not wrap ErrInvalidARN or is %d bytes: %.200v", len(err.Error()), err)
			}
			return
		}
		if a.String() != s {
			t.Fatalf("ParseRoleARN(%q).String() = %q", s, a.String())
		}
		if !roleNameOracle.MatchString(a.Name) || !accountOracle.MatchString(a.Account) {
			t.Fatalf("ParseRoleARN(%q) accepted name %q, account %q", s, a.Name, a.Account)
		}
		for i := 0; i < len(s); i++ {
			if s[i] <= ' ' || s[i] >= 0x7f {
				t.Fatalf("accepted byte %#x in %q", s[i], s)
			}
		}
		if b, err := ParseRoleARN(a.String()); err != nil || b != a {
			t.Fatalf("re-parse: %+v, %v", b, err)
		}
		if _, ok := derivedIndex(a, a.Name); ok {
			t.Fatalf("seed %s taken for its own derived role", a)
		}
		for _, i := range []int{0, 7, 99, 100, 9999, 999999} {
			d, err := Derived(a, i)
			if err != nil {
				if len(a.Name)+1+len(fmt.Sprint(i)) <= maxRoleNameLen {
					t.Fatalf("Derived(%s, %d) refused a name that fits: %v", a, i, err)
				}
				continue
			}
			if !roleNameOracle.MatchString(d.Name) {
				t.Fatalf("derived name %q is not a valid IAM role name", d.Name)
			}
			if d.Partition != a.Partition || d.Account != a.Account || d.Path != a.Path {
				t.Fatalf("derived %s left the seed's partition, account or path %s", d, a)
			}
			if got, ok := derivedIndex(a, d.Name); !ok || got != i {
				t.Fatalf("derivedIndex(%s, %q) = %d, %v; want %d", a, d.Name, got, ok, i)
			}
			if back, err := ParseRoleARN(d.String()); err != nil || back != d {
				t.Fatalf("derived ARN %s does not parse back: %v", d, err)
			}
			if i <= 9999 && !IsDerivedFrom(d.String(), a.String()) {
				t.Fatalf("IsDerivedFrom(%s, %s) = false", d, a)
			}
		}
		// A leading zero or sign is never an index of ours (another tool's role, say).
		for _, suffix := range []string{"-01", "-+1", "--1", "-1a", "-"} {
			if _, ok := derivedIndex(a, a.Name+suffix); ok {
				t.Fatalf("derivedIndex accepted %q", a.Name+suffix)
			}
		}
	})
}

// globRE is an independent oracle for glob.Match: '*' is any run, everything else literal.
func globRE(glob string) *regexp.Regexp {
	parts := strings.Split(glob, "*")
	for i, p := range parts {
		parts[i] = regexp.QuoteMeta(p)
	}
	return regexp.MustCompile(`(?s)^` + strings.Join(parts, ".*") + `$`)
}

// FuzzAllowlist: ParseAllowlist never panics; Allows accepts only valid role ARNs, exactly
// those a glob matches (checked against a regular expression built independently), so
// "arn:aws:iam::123456789012:role/kubestash-*" can never let another account, partition or
// look-alike through.
func FuzzAllowlist(f *testing.F) {
	for _, c := range [][2]string{
		{"arn:aws:iam::123456789012:role/kubestash-*", "arn:aws:iam::123456789012:role/kubestash-selfhost"},
		{"arn:aws:iam::123456789012:role/kubestash-*", "arn:aws-cn:iam::123456789012:role/kubestash-selfhost"},
		{"arn:aws:iam::123456789012:role/kubestash-*", "arn:aws:iam::999999999999:role/kubestash-selfhost"},
		{"arn:aws:iam::123456789012:role/kubestash-*", "arn:aws:iam::123456789012:role/kubestash-x/../admin"},
		{"arn:aws:iam::*:role/*", "arn:aws:iam::123456789012:role/a/b"},
		{"*", "arn:aws:iam::123456789012:role/admin"},
		{" arn:aws:iam::1:role/a , ,arn:*", "arn:aws:iam::123456789012:role/a"},
		{"arn:aws:iam::123456789012:role/kubestash-selfhost", "arn:aws:iam::123456789012:role/kubestash-selfhost "},
		{"arn:a**b*", "arn:aws:iam::123456789012:role/ab"},
	} {
		f.Add(c[0], c[1])
	}
	f.Fuzz(func(t *testing.T, list, arn string) {
		if len(list) > 4096 || len(arn) > 4096 {
			return
		}
		var l Allowlist
		var err error
		checkAllocs(t, len(list), 16, "ParseAllowlist", func() { l, err = ParseAllowlist(list) })
		if err != nil {
			if len(err.Error()) > maxErrorLen {
				t.Fatalf("error is %d bytes", len(err.Error()))
			}
			return
		}
		var allows bool
		checkAllocs(t, len(arn), 16, "Allows", func() { allows = l.Allows(arn) })
		parsed, perr := ParseRoleARN(arn)
		want := false
		for _, g := range l.globs {
			if g != strings.TrimSpace(g) || g == "" || strings.ContainsAny(g, ", \t\n") {
				t.Fatalf("glob %q kept blanks or separators", g)
			}
			if perr == nil && globRE(g).MatchString(parsed.String()) {
				want = true
			}
		}
		if allows != want {
			t.Fatalf("Allowlist(%q).Allows(%q) = %v, oracle says %v", list, arn, allows, want)
		}
		if allows && perr != nil {
			t.Fatalf("allowed an invalid ARN %q", arn)
		}
	})
}

// FuzzSubject: a subject built from any namespace and name is either refused or a plain
// system:serviceaccount:<ns>:<name> with no StringLike wildcard, that parses back.
func FuzzSubject(f *testing.F) {
	f.Add("demo", "sample-backup-daemon-demo-session-1778072138")
	f.Add("demo", "*")
	f.Add("de?mo", "x")
	f.Add("demo", "a:b")
	f.Add("demo", "a.b.c")
	f.Fuzz(func(t *testing.T, ns, name string) {
		if len(ns)+len(name) > 4096 {
			return
		}
		s, err := Subject(ns, name)
		if err != nil {
			if !errors.Is(err, ErrInvalidSubject) || len(err.Error()) > maxErrorLen {
				t.Fatalf("error %.200v", err)
			}
			return
		}
		if strings.ContainsAny(s[len(SubjectPrefix):], "*?$[]{}") || strings.Count(s, ":") != 3 {
			t.Fatalf("subject %q could match other ServiceAccounts under StringLike", s)
		}
		gotNS, gotName, err := ParseSubject(s)
		if err != nil || gotNS != ns || gotName != name {
			t.Fatalf("ParseSubject(%q) = %q, %q, %v", s, gotNS, gotName, err)
		}
	})
}

const fuzzIssuer = "oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLED539D4633E53DE1B71EXAMPLE"

// FuzzTrustPolicy: parse → JSON → parse round-trips (same subjects, same document); adding and
// removing a subject does what it says without touching the original value; a derived policy
// keeps only OIDC and Deny statements; and Fit never says yes over the quota, nor no when the
// subject would in fact fit (its cheap lower bound must be sound).
func FuzzTrustPolicy(f *testing.F) {
	seed := fmt.Sprintf(`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Federated":"arn:aws:iam::123456789012:oidc-provider/%[1]s"},"Action":"sts:AssumeRoleWithWebIdentity","Condition":{"StringEquals":{"%[1]s:aud":"sts.amazonaws.com"},"StringLike":{"%[1]s:sub":["system:serviceaccount:kubestash:kubestash-operator"]}}}]}`, fuzzIssuer)
	two := strings.Replace(seed, `]}`, `,{"Effect":"Deny","Principal":"*","Action":"*"},{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::123456789012:root"},"Action":"sts:AssumeRole"}]}`, 1)
	for _, c := range []struct {
		doc   string
		quota int
	}{
		{seed, 2048},
		{url.PathEscape(seed), 2048},
		{two, 700},
		{`{"Statement":{"Effect":"Allow","Principal":{"Federated":["arn:aws:iam::1:oidc-provider/a","arn:aws:iam::1:oidc-provider/b"]}}}`, 2048},
		{`{"Statement":[{"Effect":"Allow","Principal":{"Federated":"arn:aws:iam::1:oidc-provider/x"},"Condition":{"StringEquals":{"X:SUB":"system:serviceaccount:a:b","x:aud":"y"}}}]}`, 300},
		{`{"Statement":null}`, 10},
		{`%7B%22Statement%22%3A%5B%5D%7D`, 10},
		{`{"Statement":[{"Effect":"Allow","Principal":{"Federated":"arn:aws:iam::1:oidc-provider/x"},"Condition":{"StringLike":{"x:sub":"credential-webhook:no-subject"}}}]}`, 200},
	} {
		f.Add(c.doc, "demo", "sample-backup-daemon-demo-session-1778072138", c.quota)
	}
	f.Fuzz(func(t *testing.T, doc, ns, name string, quota int) {
		if len(doc) > 16<<10 || len(ns)+len(name) > 512 {
			return
		}
		var p TrustPolicy
		var err error
		checkAllocs(t, len(doc), 128, "ParseTrustPolicy", func() { p, err = ParseTrustPolicy(doc) })
		if c, cerr := CanonicalJSON(doc); cerr == nil {
			if again, err := CanonicalJSON(c); err != nil || again != c {
				t.Fatalf("CanonicalJSON is not idempotent: %v", err)
			}
		}
		if err != nil {
			return
		}
		js := roundTrip(t, p)

		subject, err := Subject(ns, name)
		if err != nil {
			return
		}
		had, before := p.Has(subject), p.Subjects()
		q, added := p.WithSubject(subject)
		if added == had || !q.Has(subject) || q.Len() != len(before)+b2i(added) {
			t.Fatalf("WithSubject(%q): added=%v had=%v len %d→%d", subject, added, had, len(before), q.Len())
		}
		if !slices.Equal(p.Subjects(), before) {
			t.Fatal("WithSubject changed the original policy")
		}
		if pj, _ := p.JSON(); pj != js {
			t.Fatal("WithSubject changed the original policy's document")
		}
		qr := roundTrip(t, q)
		if q.OIDCStatements() > 0 && !strings.Contains(qr, `"`+subject+`"`) {
			t.Fatalf("subject %q missing from the document %s", subject, qr)
		}
		const other = "system:serviceaccount:not:listed"
		r, removed := q.WithoutSubjects(subject, other)
		if removed != 1+b2i(q.Has(other)) || r.Has(subject) || !q.Has(subject) {
			t.Fatalf("WithoutSubjects: removed %d, still has %v, original lost it %v", removed, r.Has(subject), !q.Has(subject))
		}

		quota = fuzzQuota(quota)
		checkFit(t, p, subject, quota)
		checkFit(t, q, subject, quota)

		d, err := DeriveTrustPolicy(p, []string{subject})
		if err != nil {
			if !errors.Is(err, ErrSeedNotOIDC) || p.OIDCStatements() != 0 {
				t.Fatalf("DeriveTrustPolicy: %v (seed has %d OIDC statements)", err, p.OIDCStatements())
			}
			return
		}
		if got := d.Subjects(); len(got) != 1 || got[0] != subject {
			t.Fatalf("derived subjects %q, want only %q (the seed's own are never copied)", got, subject)
		}
		for _, st := range d.statements {
			if st.kind == kindOther {
				t.Fatal("a derived policy kept a statement for another principal")
			}
		}
		roundTrip(t, d)
		checkFit(t, d, "system:serviceaccount:demo:another-"+name, quota)
	})
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// fuzzQuota maps any int onto 0..16383, around IAM's real quotas (2,048 to 8,192).
func fuzzQuota(q int) int {
	q %= 16384
	if q < 0 {
		q = -q
	}
	return q
}

// roundTrip checks that p's document parses back to the same subjects and renders identically,
// URL-encoded (as IAM returns it) or not, and that Size counts its characters.
func roundTrip(t *testing.T, p TrustPolicy) string {
	t.Helper()
	js, err := p.JSON()
	if err != nil {
		t.Fatalf("JSON of a parsed policy: %v", err)
	}
	if n, err := p.Size(); err != nil || n != utf8.RuneCountInString(js) {
		t.Fatalf("Size = %d, %v; the document has %d characters", n, err, utf8.RuneCountInString(js))
	}
	if len(js)*3 > maxPolicyDocLen {
		return js // too large to come back from IAM, URL-encoded
	}
	// Subjects live in OIDC statements only: a policy without one renders none.
	want := p.Subjects()
	if p.OIDCStatements() == 0 {
		want = nil
	}
	for _, doc := range []string{js, url.PathEscape(js)} {
		q, err := ParseTrustPolicy(doc)
		if err != nil {
			t.Fatalf("our own document does not parse back: %v\n%s", err, doc)
		}
		if !slices.Equal(q.Subjects(), want) || q.OIDCStatements() != p.OIDCStatements() || !slices.Equal(q.Issuers(), p.Issuers()) {
			t.Fatalf("round trip changed the policy:\nsubjects %q → %q\n%s", want, q.Subjects(), js)
		}
		if again, err := q.JSON(); err != nil || again != js {
			t.Fatalf("rendering is not stable:\n%s\n%s", js, again)
		}
	}
	if !json.Valid([]byte(js)) {
		t.Fatalf("invalid JSON: %s", js)
	}
	return js
}

// checkFit: a yes is within quota and measured on the document that will be sent; a no is
// right (the policy with the subject really is over quota).
func checkFit(t *testing.T, p TrustPolicy, subject string, quota int) {
	t.Helper()
	next, size, ok, err := Fit(p, subject, quota)
	if err != nil {
		t.Fatalf("Fit: %v", err)
	}
	full, _ := p.WithSubject(subject)
	actual, err := full.Size()
	if err != nil {
		t.Fatal(err)
	}
	if ok {
		js, _ := next.JSON()
		if size > quota || !next.Has(subject) || utf8.RuneCountInString(js) != size {
			t.Fatalf("Fit said yes: size %d (document %d characters), quota %d, has subject %v", size, utf8.RuneCountInString(js), quota, next.Has(subject))
		}
		return
	}
	if actual <= quota {
		t.Fatalf("Fit said no for %q under quota %d, but the policy with it is only %d characters (Fit's estimate %d)", subject, quota, actual, size)
	}
	if pl := Place([]RoleView{{Index: 0, Trust: p}}, []string{subject}, quota, 1, PlaceOptions{}); len(pl.Writes) != 0 {
		t.Fatalf("Place disagrees with Fit: it writes %+v", pl.Writes)
	}
}

// spyAssigner records what the plugin asked for. It stands in for the Assigner only to check a
// pure property (which inputs may reach IAM at all, and which may write to it); the IAM
// behaviour itself is tested against moto (integration_test.go, hostile_test.go at the root).
// Assign is the only method that writes to IAM; Plan and Reserve only read.
type spyAssigner struct {
	assigns, plans, reserves int
	seed                     RoleARN
	err                      error
}

func (s *spyAssigner) Assign(_ context.Context, seed RoleARN, ns, name string) (Assignment, error) {
	s.assigns++
	s.seed = seed
	if s.err != nil {
		return Assignment{}, s.err
	}
	d, _ := Derived(seed, 0)
	return Assignment{RoleARN: d.String()}, nil
}

func (s *spyAssigner) Plan(_ context.Context, seed RoleARN, ns, name string) (string, bool, error) {
	s.plans++
	s.seed = seed
	d, _ := Derived(seed, 0)
	return d.String(), false, s.err
}

func (s *spyAssigner) Reserve(_ context.Context, seed RoleARN, ns, name string) (string, bool, error) {
	s.reserves++
	s.seed = seed
	d, _ := Derived(seed, 0)
	return d.String(), false, s.err
}

const (
	fuzzOperator = "system:serviceaccount:kubestash:kubestash-kubestash-operator"
	fuzzSeedGlob = "arn:aws:iam::123456789012:role/kubestash-*"
)

// FuzzPluginReachesIAM drives the ServiceAccount plugin with arbitrary annotations, requesters,
// namespaces, operations and transports. Whatever the input, the plugin never fails the review
// (it warns), and it asks the Assigner for anything only when all of these hold, each checked by
// an oracle independent of the code under test: the annotation is exactly a canonical role ARN in
// account 123456789012 starting "role/kubestash-", the requester is the operator or in group
// backup-admins, the namespace is "demo" or "backup-*", the object has a name, and the
// operation is CREATE or UPDATE. Which method it calls depends on the review alone: a dry run
// only Plans; otherwise a review that is not Authenticated only Reserves, and only an
// Authenticated one Assigns — the key security property of planning at admission: no review
// body, however well it imitates the operator, writes to IAM unless it came over a client
// certificate. A claim is recorded (Pending) exactly for the non-dry-run reviews that reached
// the Assigner without a permanent refusal, and it is the claim on the seed the annotation names.
// Warnings stay short whatever the input.
func FuzzPluginReachesIAM(f *testing.F) {
	ok := "arn:aws:iam::123456789012:role/kubestash-selfhost"
	for _, c := range []struct {
		seed, oldSeed, roleARN, user, group, ns, name, op string
		dry, authenticated                                bool
		failure                                           uint8
	}{
		{ok, "", "", fuzzOperator, "", "demo", "sa-1", "CREATE", false, false, 0},
		{ok, "", "", fuzzOperator, "", "demo", "sa-1", "CREATE", false, true, 0},
		{ok, ok, ok + "-0", fuzzOperator, "", "demo", "sa-1", "UPDATE", false, false, 0},
		{ok, ok, ok + "-0", "mallory", "", "demo", "sa-1", "UPDATE", false, true, 0},
		{ok, "", "", "mallory", "backup-admins", "backup-x", "sa-1", "CREATE", true, false, 1},
		{ok, "", "", "mallory", "backup-admins", "backup-x", "sa-1", "CREATE", true, true, 0},
		{ok, "", "", fuzzOperator, "", "kube-system", "sa-1", "CREATE", false, true, 2},
		{ok, "", "", fuzzOperator, "", "demo", "sa-1", "CREATE", false, true, 1},
		{ok, "", "", fuzzOperator, "", "demo", "sa-1", "CREATE", false, true, 2},
		{ok, "", "", fuzzOperator, "", "demo", "sa-1", "UPDATE", false, false, 2},
		{"arn:аws:iam::123456789012:role/kubestash-selfhost", "", "", fuzzOperator, "", "demo", "sa", "CREATE", false, true, 0},
		{"arn:aws-cn:iam::123456789012:role/kubestash-selfhost", "", "", fuzzOperator, "", "demo", "sa", "CREATE", false, false, 0},
		{"arn:aws:iam::123456789012:role/kubestash-x/../admin", "", "", fuzzOperator, "", "demo", "sa", "CREATE", false, true, 3},
		{ok + strings.Repeat("x", 5000), "", "", fuzzOperator, "", "demo", "sa", "CREATE", false, false, 0},
		{ok, "", "", fuzzOperator, "", "demo", "", "CREATE", false, true, 0},
		{ok, "", "", fuzzOperator, "", "demo", "sa", "DELETE", false, true, 0},
	} {
		f.Add(c.seed, c.oldSeed, c.roleARN, c.user, c.group, c.ns, c.name, c.op, c.dry, c.authenticated, c.failure)
	}
	seeds, err := ParseAllowlist(fuzzSeedGlob)
	if err != nil {
		f.Fatal(err)
	}
	pol, err := access.Parse("demo,backup-*", fuzzOperator+",group:backup-admins")
	if err != nil {
		f.Fatal(err)
	}
	failures := []error{nil, ErrRoleLimitReached, fmt.Errorf("wrapped: %w", ErrInvalidSubject), errors.New("iam:GetRole admin: NoSuchEntity")}
	log := slog.New(slog.DiscardHandler)
	f.Fuzz(func(t *testing.T, seed, oldSeed, roleARN, user, group, ns, name, op string, dry, authenticated bool, failure uint8) {
		if len(seed)+len(oldSeed)+len(roleARN)+len(user)+len(group)+len(ns)+len(name)+len(op) > 16<<10 {
			return
		}
		failed := failures[int(failure)%len(failures)]
		spy := &spyAssigner{err: failed}
		p := &Plugin{Assigner: spy, Seeds: seeds, Access: pol}
		cur := map[string]string{annotations.SeedRole: seed}
		if roleARN != "" {
			cur[annotations.AWSRoleARN] = roleARN
		}
		obj, _ := json.Marshal(map[string]any{"metadata": map[string]any{"name": name, "namespace": ns, "annotations": cur}})
		old, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{annotations.SeedRole: oldSeed, annotations.AWSRoleARN: roleARN}}})
		req := &admission.Request{Namespace: ns, Name: name, Operation: admissionv1.Operation(op), DryRun: dry,
			Authenticated: authenticated, Object: obj, OldObject: old, Log: log}
		req.UserInfo.Username = user
		if group != "" {
			req.UserInfo.Groups = []string{group}
		}
		// What the plugin reads: JSON replaces invalid UTF-8, so compare with this, not seed.
		seen, err := admission.ObjectAnnotations(obj)
		if err != nil {
			t.Fatal(err)
		}
		resp := &admission.Response{Patch: patches.NewBuilder()}
		if err := p.Admit(context.Background(), req, resp); err != nil {
			t.Fatalf("Admit failed the review: %v", err)
		}
		size := 0
		for _, w := range resp.Warnings {
			size += len(w)
		}
		if limit := 2048 + 4*(len(ns)+len(user)); size > limit {
			t.Fatalf("warnings are %d bytes (limit %d): %.300q", size, limit, resp.Warnings)
		}
		// The key property first, before anything may return early: IAM writes need a client
		// certificate and a review that is not a dry run.
		if spy.assigns > 0 && (!authenticated || dry) {
			t.Fatalf("Assign called %d times for a review with authenticated=%v dryRun=%v", spy.assigns, authenticated, dry)
		}
		reached := spy.assigns + spy.plans + spy.reserves
		if reached == 0 {
			if len(resp.Pending) != 0 {
				t.Fatalf("claims %v recorded without asking the Assigner", resp.Pending)
			}
			return
		}
		wantClaims := !dry && !Permanent(failed)
		switch {
		case reached != 1:
			t.Fatalf("Assigner asked %d times (Assign %d, Plan %d, Reserve %d), want once", reached, spy.assigns, spy.plans, spy.reserves)
		case dry && spy.plans != 1:
			t.Fatalf("dry run but Assign %d, Reserve %d", spy.assigns, spy.reserves)
		case !dry && authenticated && spy.assigns != 1:
			t.Fatalf("authenticated review but Plan %d, Reserve %d", spy.plans, spy.reserves)
		case !dry && !authenticated && spy.reserves != 1:
			t.Fatalf("unauthenticated review but Assign %d, Plan %d", spy.assigns, spy.plans)
		case wantClaims != (len(resp.Pending) == 1):
			t.Fatalf("dryRun=%v, failure %v: claims %v", dry, failed, resp.Pending)
		case len(resp.Pending) > 1:
			t.Fatalf("claims %v, want at most the AWS one", resp.Pending)
		case wantClaims && resp.Pending[0] != markers.For(markers.AWS, seen[annotations.SeedRole]):
			t.Fatalf("claim %v is not the one on seed %q", resp.Pending[0], seen[annotations.SeedRole])
		case op != "CREATE" && op != "UPDATE":
			t.Fatalf("operation %q reached the Assigner", op)
		case spy.seed.String() != seen[annotations.SeedRole]:
			t.Fatalf("annotation %q reached the Assigner as %s", seen[annotations.SeedRole], spy.seed)
		case !strings.HasPrefix(seen[annotations.SeedRole], "arn:aws:iam::123456789012:role/kubestash-"):
			t.Fatalf("seed %q outside %s reached the Assigner", seen[annotations.SeedRole], fuzzSeedGlob)
		case user != fuzzOperator && group != "backup-admins":
			t.Fatalf("requester %q (group %q) reached the Assigner", user, group)
		case ns != "demo" && !(strings.HasPrefix(ns, "backup-") && !strings.Contains(ns, "/")):
			t.Fatalf("namespace %q reached the Assigner", ns)
		case name == "":
			t.Fatal("a ServiceAccount without a name reached the Assigner")
		}
	})
}
