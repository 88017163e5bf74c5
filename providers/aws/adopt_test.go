package aws

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"go.klusters.dev/credential-webhook/annotations"
)

func TestPlanAdoption(t *testing.T) {
	seedARN, _ := ParseRoleARN("arn:aws:iam::123456789012:role/kubestash/seed")
	roleARN, _ := ParseRoleARN("arn:aws:iam::123456789012:role/kubestash/seed-0")
	const (
		boundary = "arn:aws:iam::123456789012:policy/boundary"
		managedA = "arn:aws:iam::123456789012:policy/a"
		managedB = "arn:aws:iam::123456789012:policy/b"
		docS3    = `{"Statement":[{"Action":"s3:*","Effect":"Allow","Resource":"*"}],"Version":"2012-10-17"}`
		docKMS   = `{"Statement":[{"Action":"kms:*","Effect":"Allow","Resource":"*"}],"Version":"2012-10-17"}`
		operator = "system:serviceaccount:kubestash:kubestash-operator"
		sub1     = "system:serviceaccount:demo:pg-backup-1772006820"
		sub2     = "system:serviceaccount:demo:mongo-backup-177300719"
		awsStmt  = `{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::210987654321:root"},"Action":"sts:AssumeRole"}`
		denyStmt = `{"Effect":"Deny","Principal":{"Federated":"` + providerA + `"},"Action":"sts:AssumeRoleWithWebIdentity","Condition":{"StringLike":{"` + issuerA + `:sub":"system:serviceaccount:kube-system:*"}}}`
	)
	// stmt is an OIDC statement with the subjects under op (and the audience under StringEquals).
	stmt := func(provider, issuer, op string, subs ...string) string {
		list, _ := json.Marshal(append([]string{}, subs...))
		cond := `"StringEquals": {"` + issuer + `:aud": "sts.amazonaws.com"}, "` + op + `": {"` + issuer + `:sub": ` + string(list) + `}`
		if op == "StringEquals" {
			cond = `"StringEquals": {"` + issuer + `:aud": "sts.amazonaws.com", "` + issuer + `:sub": ` + string(list) + `}`
		}
		return `{"Effect": "Allow", "Principal": {"Federated": "` + provider + `"}, "Action": "sts:AssumeRoleWithWebIdentity", "Condition": {` + cond + `}}`
	}
	seed := func() *roleSpec {
		return &roleSpec{
			arn: seedARN, description: "backups", maxSession: 7200, boundary: boundary,
			trust:    mustParse(t, seedDoc(oidcStmt(providerA, issuerA, operator))),
			tags:     map[string]string{"team": "storage", "aws:cloudformation:stack-name": "x"},
			attached: []string{managedA},
			inline:   map[string]string{"s3": docS3},
		}
	}
	// clone is what the upstream manager made: the seed's permissions and statements, its own
	// subjects, no tags.
	clone := func(doc string) *roleSpec {
		return &roleSpec{
			arn: roleARN, description: "backups", maxSession: 7200, boundary: boundary,
			trust:    mustParse(t, doc),
			tags:     map[string]string{},
			attached: []string{managedA},
			inline:   map[string]string{"s3": docS3},
		}
	}
	faithfulDoc := seedDoc(oidcStmt(providerA, issuerA, sub1, sub2))
	wantTags := map[string]string{"team": "storage", annotations.SeedTag: seedARN.String()}
	tests := []struct {
		name        string
		seed        func(*roleSpec)
		doc         string // the role's trust policy; default faithfulDoc
		target      func(*roleSpec)
		setBoundary bool
		ours        bool
		reasons     []string // substrings, one per expected reason, in order; none: faithful
		notes       []string // substrings of the notes, in order
		writes      []write  // checked for faithful roles; nil: just the tags
	}{
		{name: "faithful clone, as upstream made it"},
		{name: "faithful, subjects in another order and IAM's URL encoding", doc: iamEncode(seedDoc(oidcStmt(providerA, issuerA, sub2, sub1)))},
		{name: "faithful, subjects under StringEquals (no wildcard in a subject, so the same trust)", doc: seedDoc(stmt(providerA, issuerA, "StringEquals", sub1))},
		{name: "faithful, no subject left", doc: seedDoc(stmt(providerA, issuerA, "StringLike"))},
		{
			name: "faithful, description and tag values differ: notes only, tags become the seed's",
			target: func(r *roleSpec) {
				r.description = "made by hand"
				r.tags = map[string]string{"team": "other", "aws:cloudformation:stack-name": "y"}
			},
			notes: []string{"description differs", "tag team=other becomes the seed's storage"},
		},
		{
			name:    "a tag the seed does not have is refused: principal tags can grant access",
			target:  func(r *roleSpec) { r.tags = map[string]string{"cost-centre": "42"} },
			reasons: []string{"tag cost-centre is not the seed's"},
		},
		{
			name:   "already ours",
			target: func(r *roleSpec) { r.tags[annotations.SeedTag] = seedARN.String() },
			ours:   true,
		},
		{
			name:    "tagged for another seed",
			target:  func(r *roleSpec) { r.tags[annotations.SeedTag] = "arn:aws:iam::123456789012:role/kubestash/other" },
			reasons: []string{"a derived role of another seed"},
		},
		{
			name:    "an extra managed policy",
			target:  func(r *roleSpec) { r.attached = []string{managedA, managedB} },
			reasons: []string{"managed policy " + managedB + " is attached; the seed has no such policy"},
		},
		{
			name:    "the seed's managed policy missing",
			target:  func(r *roleSpec) { r.attached = nil },
			reasons: []string{"the seed's managed policy " + managedA + " is not attached"},
		},
		{
			name:    "inline document differs",
			target:  func(r *roleSpec) { r.inline["s3"] = docKMS },
			reasons: []string{"inline policy s3 differs from the seed's"},
		},
		{
			name:    "an extra inline policy",
			target:  func(r *roleSpec) { r.inline["kms"] = docKMS },
			reasons: []string{"inline policy kms is not the seed's"},
		},
		{
			name:    "the seed's inline policy missing",
			target:  func(r *roleSpec) { delete(r.inline, "s3") },
			reasons: []string{"the seed's inline policy s3 is missing"},
		},
		{
			name:        "another boundary: refused, even with --put-boundary",
			target:      func(r *roleSpec) { r.boundary = "arn:aws:iam::123456789012:policy/wider" },
			setBoundary: true,
			reasons:     []string{"its permissions boundary is arn:aws:iam::123456789012:policy/wider; derived roles of this seed carry " + boundary},
		},
		{
			name:    "no boundary: refused without --put-boundary",
			target:  func(r *roleSpec) { r.boundary = "" },
			reasons: []string{"it has no permissions boundary"},
		},
		{
			name:        "no boundary, --put-boundary: the boundary first, then the tags",
			target:      func(r *roleSpec) { r.boundary = "" },
			setBoundary: true,
			notes:       []string{"permissions boundary " + boundary + " is set before tagging"},
			writes:      []write{putBoundary{role: "seed-0", boundary: boundary}, tagRole{role: "seed-0", tags: wantTags}},
		},
		{
			name:    "configured boundary: derived roles carry it, the seed's own does not count",
			seed:    func(s *roleSpec) { s.boundary = "arn:aws:iam::123456789012:policy/configured" },
			reasons: []string{"derived roles of this seed carry arn:aws:iam::123456789012:policy/configured"},
		},
		{
			name:    "max session duration differs",
			target:  func(r *roleSpec) { r.maxSession = 43200 },
			reasons: []string{"its max session duration is 43200 s; the seed's is 7200 s"},
		},
		{
			name:    "a statement for a non-ServiceAccount principal",
			doc:     seedDoc(oidcStmt(providerA, issuerA, sub1), awsStmt),
			reasons: []string{"a trust statement derived roles of this seed do not have: " + `{"Action":"sts:AssumeRole","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::210987654321:root"}}`},
		},
		{
			name:    "a wildcard subject",
			doc:     seedDoc(oidcStmt(providerA, issuerA, sub1, "system:serviceaccount:demo:*")),
			reasons: []string{`it trusts "system:serviceaccount:demo:*", which is not a ServiceAccount subject`},
		},
		{
			name:    "a subject that is no ServiceAccount",
			doc:     seedDoc(oidcStmt(providerA, issuerA, "repo:klusters/credential-webhook:ref:refs/heads/main")),
			reasons: []string{`it trusts "repo:klusters/credential-webhook:ref:refs/heads/main", which is not`},
		},
		{
			name:    "StringNotLike: everyone but these",
			doc:     seedDoc(stmt(providerA, issuerA, "StringNotLike", sub1)),
			reasons: []string{"trust statement 0 tests " + issuerA + ":sub with StringNotLike; only StringEquals or StringLike"},
		},
		{
			name: "no sub condition: every ServiceAccount of the cluster",
			doc: seedDoc(`{"Effect":"Allow","Principal":{"Federated":"` + providerA + `"},"Action":"sts:AssumeRoleWithWebIdentity",
			  "Condition":{"StringEquals":{"` + issuerA + `:aud":"sts.amazonaws.com"}}}`),
			reasons: []string{"trust statement 0 has no " + issuerA + ":sub condition: it trusts every ServiceAccount of the cluster"},
		},
		{
			name: "sub under two operators",
			doc: seedDoc(`{"Effect":"Allow","Principal":{"Federated":"` + providerA + `"},"Action":"sts:AssumeRoleWithWebIdentity",
			  "Condition":{"StringEquals":{"` + issuerA + `:aud":"sts.amazonaws.com","` + issuerA + `:sub":"` + sub1 + `"},"StringLike":{"` + issuerA + `:sub":"` + sub2 + `"}}}`),
			reasons: []string{"tests " + issuerA + ":sub under several operators (StringEquals, StringLike)"},
		},
		{
			name:    "another audience",
			doc:     strings.Replace(faithfulDoc, "sts.amazonaws.com", "api", 1),
			reasons: []string{"a trust statement derived roles of this seed do not have", "the seed's trust statement is missing or differs"},
		},
		{
			name:    "another cluster's provider",
			doc:     seedDoc(oidcStmt(providerB, issuerB, sub1)),
			reasons: []string{"a trust statement derived roles of this seed do not have", "the seed's trust statement is missing or differs"},
		},
		{
			name:    "the seed's Deny dropped",
			seed:    func(s *roleSpec) { s.trust = mustParse(t, seedDoc(oidcStmt(providerA, issuerA, operator), denyStmt)) },
			reasons: []string{"the seed's trust statement is missing or differs: " + `{"Action":"sts:AssumeRoleWithWebIdentity","Condition"`},
		},
		{
			name: "two clusters, both statements list the same subjects",
			seed: func(s *roleSpec) {
				s.trust = mustParse(t, seedDoc(oidcStmt(providerA, issuerA, operator), oidcStmt(providerB, issuerB, operator)))
			},
			doc: seedDoc(oidcStmt(providerA, issuerA, sub1, sub2), oidcStmt(providerB, issuerB, sub2, sub1)),
		},
		{
			name: "two clusters, the statements list different subjects",
			seed: func(s *roleSpec) {
				s.trust = mustParse(t, seedDoc(oidcStmt(providerA, issuerA, operator), oidcStmt(providerB, issuerB, operator)))
			},
			doc:     seedDoc(oidcStmt(providerA, issuerA, sub1), oidcStmt(providerB, issuerB, sub2)),
			reasons: []string{"its OIDC statements list different ServiceAccounts"},
		},
		{
			name:    "no Version",
			doc:     `{"Statement":[` + oidcStmt(providerA, issuerA, sub1) + `]}`,
			reasons: []string{"the trust policy's top-level fields (Version, Id) differ from the seed's"},
		},
		{
			name:    "every difference at once is listed",
			doc:     seedDoc(oidcStmt(providerA, issuerA, sub1), awsStmt),
			target:  func(r *roleSpec) { r.attached = []string{managedA, managedB}; r.boundary = "" },
			reasons: []string{"it has no permissions boundary", "managed policy " + managedB + " is attached", "a trust statement derived roles of this seed do not have"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := seed()
			if tc.seed != nil {
				tc.seed(s)
			}
			doc := tc.doc
			if doc == "" {
				doc = faithfulDoc
			}
			r := clone(doc)
			if tc.target != nil {
				tc.target(r)
			}
			p := planAdoption(s, r, doc, tc.setBoundary)
			if p.ours != tc.ours {
				t.Fatalf("ours = %v, want %v (%+v)", p.ours, tc.ours, p)
			}
			if len(p.reasons) != len(tc.reasons) {
				t.Fatalf("reasons:\n  %s\nwant %d matching %q", strings.Join(p.reasons, "\n  "), len(tc.reasons), tc.reasons)
			}
			for i, want := range tc.reasons {
				if !strings.Contains(p.reasons[i], want) {
					t.Errorf("reason %d = %q, want it to contain %q", i, p.reasons[i], want)
				}
			}
			if len(p.notes) != len(tc.notes) {
				t.Fatalf("notes:\n  %s\nwant %d matching %q", strings.Join(p.notes, "\n  "), len(tc.notes), tc.notes)
			}
			for i, want := range tc.notes {
				if !strings.Contains(p.notes[i], want) {
					t.Errorf("note %d = %q, want it to contain %q", i, p.notes[i], want)
				}
			}
			if tc.ours || len(tc.reasons) > 0 {
				return
			}
			want := tc.writes
			if want == nil {
				want = []write{tagRole{role: "seed-0", tags: wantTags}}
			}
			if !reflect.DeepEqual(p.writes, want) {
				t.Errorf("writes = %#v, want %#v", p.writes, want)
			}
		})
	}
}

// A trust policy whose Statement is one object, not an array, is read statement by statement
// too.
func TestSubjectConditionProblemsSingleStatement(t *testing.T) {
	for _, tc := range []struct {
		doc  string
		want int
	}{
		{`{"Version":"2012-10-17","Statement":` + oidcStmt(providerA, issuerA, "system:serviceaccount:demo:a") + `}`, 0},
		{`{"Version":"2012-10-17","Statement":` + strings.Replace(oidcStmt(providerA, issuerA, "system:serviceaccount:demo:a"), `"StringLike"`, `"ForAnyValue:StringLike"`, 1) + `}`, 1},
	} {
		p := mustParse(t, tc.doc)
		if got := subjectConditionProblems(p, iamEncode(tc.doc)); len(got) != tc.want {
			t.Errorf("%s: problems %q, want %d", tc.doc, got, tc.want)
		}
	}
}

func TestExpireForeign(t *testing.T) {
	now := time.Date(2026, 5, 6, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name      string
		owner     ownership
		foreignAt time.Time
		recheck   time.Duration
		forgotten bool
	}{
		{"found foreign just now", ownerOther, now, ForeignRecheck, false},
		{"found foreign a minute short of the recheck", ownerOther, now.Add(-ForeignRecheck + time.Minute), ForeignRecheck, false},
		{"found foreign a recheck ago", ownerOther, now.Add(-ForeignRecheck), ForeignRecheck, true},
		{"recheck 0: every session reads it again", ownerOther, now, 0, true},
		{"a name taken under another path stays foreign", ownerOther, time.Time{}, 0, false},
		{"ours stays ours", ownerUs, now.Add(-time.Hour), 0, false},
		{"unknown stays unknown", ownerUnknown, time.Time{}, 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := &roleState{index: 3, owner: tc.owner, foreignAt: tc.foreignAt}
			st := &seedState{roles: []*roleState{r}}
			got := st.expireForeign(now, tc.recheck)
			if got != tc.forgotten {
				t.Fatalf("expireForeign = %v, want %v", got, tc.forgotten)
			}
			wantOwner := tc.owner
			if tc.forgotten {
				wantOwner = ownerUnknown
			}
			if r.owner != wantOwner {
				t.Errorf("owner = %v, want %v", r.owner, wantOwner)
			}
			if v := st.views()[0]; v.Foreign != (wantOwner == ownerOther) {
				t.Errorf("placement sees Foreign=%v", v.Foreign)
			}
		})
	}
}

func TestWriteAdoptTable(t *testing.T) {
	var buf bytes.Buffer
	WriteAdoptTable(&buf, []AdoptResult{
		{Index: 0, ARN: "arn:aws:iam::123456789012:role/kubestash/seed-0", Subjects: 2, Verdict: AdoptAdopted, Notes: []string{"n1"}},
		{Index: 1, ARN: "arn:aws:iam::123456789012:role/kubestash/seed-1", Subjects: 1, Verdict: AdoptRefused, Reasons: []string{"r1", "r2"}},
	})
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	want := [][]string{
		{"INDEX", "ROLE", "SUBJECTS", "VERDICT", "REASONS"},
		{"0", "arn:aws:iam::123456789012:role/kubestash/seed-0", "2", "adopted", "note:", "n1"},
		{"1", "arn:aws:iam::123456789012:role/kubestash/seed-1", "1", "REFUSED", "r1"},
		{"r2"},
	}
	if len(lines) != len(want) {
		t.Fatalf("table:\n%s", buf.String())
	}
	for i, l := range lines {
		if got := strings.Fields(l); !reflect.DeepEqual(got, want[i]) {
			t.Errorf("line %d = %q, want fields %q", i, l, want[i])
		}
	}
	// Continuation lines start under the REASONS column.
	if strings.Index(lines[3], "r2") != strings.Index(lines[2], "r1") {
		t.Errorf("continuation not aligned:\n%s", buf.String())
	}
}
