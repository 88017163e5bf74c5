package aws

import (
	"reflect"
	"slices"
	"testing"

	"go.klusters.dev/credential-webhook/annotations"
)

func TestPolicyDiff(t *testing.T) {
	seedARN, _ := ParseRoleARN("arn:aws:iam::123456789012:role/kubestash/seed")
	roleARN, _ := ParseRoleARN("arn:aws:iam::123456789012:role/kubestash/seed-0")
	const (
		boundary = "arn:aws:iam::123456789012:policy/boundary"
		managedA = "arn:aws:iam::123456789012:policy/a"
		managedB = "arn:aws:iam::123456789012:policy/b"
		docS3    = `{"Statement":[{"Action":"s3:*","Effect":"Allow","Resource":"*"}],"Version":"2012-10-17"}`
		docKMS   = `{"Statement":[{"Action":"kms:*","Effect":"Allow","Resource":"*"}],"Version":"2012-10-17"}`
		name     = "seed-0"
	)
	seed := func() *roleSpec {
		return &roleSpec{
			arn: seedARN, description: "backups", maxSession: 7200, boundary: boundary,
			tags:     map[string]string{"team": "storage", "aws:cloudformation:stack-name": "x"},
			attached: []string{managedA},
			inline:   map[string]string{"s3": docS3},
		}
	}
	// inSync is a derived role that matches seed().
	inSync := func() *roleSpec {
		return &roleSpec{
			arn: roleARN, description: "backups", maxSession: 7200, boundary: boundary,
			tags:     map[string]string{"team": "storage", annotations.SeedTag: seedARN.String()},
			attached: []string{managedA},
			inline:   map[string]string{"s3": docS3},
		}
	}
	seedTag := annotations.SeedTag
	tests := []struct {
		name   string
		seed   func(*roleSpec)
		target func(*roleSpec)
		full   bool
		want   []write
	}{
		{name: "no drift, completing", want: nil},
		{name: "no drift, full sync", full: true, want: nil},
		{
			name:   "boundary differs",
			target: func(r *roleSpec) { r.boundary = "arn:aws:iam::123456789012:policy/other" },
			want:   []write{putBoundary{role: name, boundary: boundary}},
		},
		{
			name:   "no boundary yet (a role created without one is impossible, but a completion still sets it)",
			target: func(r *roleSpec) { r.boundary = "" },
			want:   []write{putBoundary{role: name, boundary: boundary}},
		},
		{
			name:   "managed policy missing",
			target: func(r *roleSpec) { r.attached = nil },
			want:   []write{attachPolicy{role: name, policy: managedA}},
		},
		{
			name:   "inline policy missing",
			target: func(r *roleSpec) { r.inline = map[string]string{} },
			want:   []write{putInline{role: name, policy: "s3", document: docS3}},
		},
		{
			name:   "inline document changed: completing leaves it",
			target: func(r *roleSpec) { r.inline["s3"] = docKMS },
			want:   nil,
		},
		{
			name:   "inline document changed: full sync rewrites it",
			target: func(r *roleSpec) { r.inline["s3"] = docKMS },
			full:   true,
			want:   []write{putInline{role: name, policy: "s3", document: docS3}},
		},
		{
			name:   "extras: completing never removes",
			target: func(r *roleSpec) { r.attached = []string{managedA, managedB}; r.inline["kms"] = docKMS },
			want:   nil,
		},
		{
			name:   "extras: full sync removes them",
			target: func(r *roleSpec) { r.attached = []string{managedA, managedB}; r.inline["kms"] = docKMS },
			full:   true,
			want:   []write{detachPolicy{role: name, policy: managedB}, deleteInline{role: name, policy: "kms"}},
		},
		{
			name:   "description differs",
			target: func(r *roleSpec) { r.description = "old" },
			full:   true,
			want:   []write{updateRole{role: name, description: "backups", maxSession: 7200}},
		},
		{
			name:   "max session differs",
			target: func(r *roleSpec) { r.maxSession = 3600 },
			full:   true,
			want:   []write{updateRole{role: name, description: "backups", maxSession: 7200}},
		},
		{
			name:   "seed without a max session leaves the role's alone",
			seed:   func(s *roleSpec) { s.maxSession = 0 },
			target: func(r *roleSpec) { r.maxSession = 3600 },
			full:   true,
			want:   nil,
		},
		{
			name:   "tag value differs: restated with the seed tag",
			target: func(r *roleSpec) { r.tags["team"] = "old" },
			full:   true,
			want:   []write{tagRole{role: name, tags: map[string]string{"team": "storage", seedTag: seedARN.String()}}},
		},
		{
			name: "tag missing",
			seed: func(s *roleSpec) { s.tags["cost-center"] = "42" },
			full: true,
			want: []write{tagRole{role: name, tags: map[string]string{"cost-center": "42", seedTag: seedARN.String()}}},
		},
		{
			name:   "extra tag removed, aws: tags never",
			target: func(r *roleSpec) { r.tags["stale"] = "1"; r.tags["aws:foo"] = "2" },
			full:   true,
			want:   []write{untagRole{role: name, keys: []string{"stale"}}},
		},
		{
			name: "every kind at once, in the order IAM's policy needs (boundary first)",
			target: func(r *roleSpec) {
				r.boundary, r.attached, r.inline = "", []string{managedB}, map[string]string{"kms": docKMS}
				r.description, r.tags = "old", map[string]string{seedTag: seedARN.String(), "stale": "1"}
			},
			full: true,
			want: []write{
				putBoundary{role: name, boundary: boundary},
				attachPolicy{role: name, policy: managedA},
				putInline{role: name, policy: "s3", document: docS3},
				detachPolicy{role: name, policy: managedB},
				deleteInline{role: name, policy: "kms"},
				updateRole{role: name, description: "backups", maxSession: 7200},
				tagRole{role: name, tags: map[string]string{"team": "storage", seedTag: seedARN.String()}},
				untagRole{role: name, keys: []string{"stale"}},
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, r := seed(), inSync()
			if tc.seed != nil {
				tc.seed(s)
			}
			if tc.target != nil {
				tc.target(r)
			}
			if need := inlineDocsNeeded(s, r, tc.full); len(need) != 0 {
				t.Fatalf("documents %v needed although the seed's are read", need)
			}
			got, err := policyDiff(s, r, tc.full)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("writes:\n%#v\nwant\n%#v", got, tc.want)
			}
		})
	}
}

func TestPolicyDiffNeedsTheSeedsDocuments(t *testing.T) {
	seedARN, _ := ParseRoleARN("arn:aws:iam::123456789012:role/seed")
	roleARN, _ := ParseRoleARN("arn:aws:iam::123456789012:role/seed-0")
	seed := &roleSpec{arn: seedARN, boundary: "b", inline: map[string]string{"a": "", "b": "", "c": `{"x":1}`}}
	target := &roleSpec{arn: roleARN, boundary: "b", inline: map[string]string{"a": `{"y":1}`}}
	// Completing compares nothing that exists already: only b, missing and unread, is needed.
	if got := inlineDocsNeeded(seed, target, false); !slices.Equal(got, []string{"b"}) {
		t.Errorf("completing needs %v, want [b]", got)
	}
	if got := inlineDocsNeeded(seed, target, true); !slices.Equal(got, []string{"a", "b"}) {
		t.Errorf("full sync needs %v, want [a b]", got)
	}
	if _, err := policyDiff(seed, target, false); err == nil {
		t.Error("policyDiff ran with an unread document")
	}
}

func TestDeletionWrites(t *testing.T) {
	arn, _ := ParseRoleARN("arn:aws:iam::123456789012:role/seed-3")
	spec := &roleSpec{arn: arn, attached: []string{"p1", "p2"}, inline: map[string]string{"z": "", "a": ""}}
	want := []write{
		detachPolicy{role: "seed-3", policy: "p1"}, detachPolicy{role: "seed-3", policy: "p2"},
		deleteInline{role: "seed-3", policy: "a"}, deleteInline{role: "seed-3", policy: "z"},
		deleteRole{role: "seed-3"},
	}
	if got := deletionWrites(spec); !reflect.DeepEqual(got, want) {
		t.Errorf("writes %#v, want %#v", got, want)
	}
}
