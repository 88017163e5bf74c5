package aws

import (
	"context"
	"encoding/json"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iam"

	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/testenv/moto"
)

// upstreamClone creates the role "<seed>-<i>" the way KubeStash's aws-credential-manager did: the
// seed's trust statements with its own subjects, the seed's managed and inline policies,
// boundary and max session duration, and no tag of ours. change edits the CreateRole input;
// extra runs after the policies are in place.
func (e *env) upstreamClone(ctx context.Context, i int, subjects []string, change func(*iam.CreateRoleInput), extra func(name string)) string {
	e.t.Helper()
	seed, err := readRole(ctx, e.direct, e.seed.Name, true)
	if err != nil {
		e.t.Fatal(err)
	}
	name := derivedName(e.seed, i)
	in := &iam.CreateRoleInput{
		RoleName:                 aws.String(name),
		Path:                     aws.String(e.seed.Path),
		AssumeRolePolicyDocument: aws.String(moto.TrustPolicy(OIDCProviderARN(e.seed, moto.IssuerHost(testIssuer)), testIssuer, subjects...)),
		Description:              aws.String(seed.description),
		MaxSessionDuration:       aws.Int32(seed.maxSession),
		PermissionsBoundary:      aws.String(seed.boundary),
	}
	if change != nil {
		change(in)
	}
	if _, err := e.direct.CreateRole(ctx, in); err != nil {
		e.t.Fatalf("create %s: %v", name, err)
	}
	for _, p := range seed.attached {
		if _, err := e.direct.AttachRolePolicy(ctx, &iam.AttachRolePolicyInput{RoleName: aws.String(name), PolicyArn: aws.String(p)}); err != nil {
			e.t.Fatal(err)
		}
	}
	for p, doc := range seed.inline {
		if _, err := e.direct.PutRolePolicy(ctx, &iam.PutRolePolicyInput{RoleName: aws.String(name), PolicyName: aws.String(p), PolicyDocument: aws.String(doc)}); err != nil {
			e.t.Fatal(err)
		}
	}
	if extra != nil {
		extra(name)
	}
	return name
}

// Adoption against moto, end to end: roles an upstream manager left behind use up indices until
// an administrator adopts the faithful ones; the dry run writes nothing; --apply tags only the
// faithful ones, never touching a policy; a replica that had found them foreign places new
// subjects in them once it checks again; and drift repair then brings them in line.
func TestAdoptAgainstMoto(t *testing.T) {
	e := motoEnv(t, "adopt-seed", 2048)
	ctx := ctxT(t)
	createPolicy := func(name string) string {
		out, err := e.direct.CreatePolicy(ctx, &iam.CreatePolicyInput{PolicyName: aws.String(name), PolicyDocument: aws.String(moto.BoundaryDocument)})
		if err != nil {
			t.Fatal(err)
		}
		return aws.ToString(out.Policy.Arn)
	}
	extraPolicy, otherBoundary := createPolicy("adopt-extra"), createPolicy("adopt-other-boundary")

	faithful := e.upstreamClone(ctx, 0, []string{sessionSubject(100), sessionSubject(101)}, func(in *iam.CreateRoleInput) {
		in.Description = aws.String("created by aws-credential-manager")
	}, nil)
	extra := e.upstreamClone(ctx, 1, []string{sessionSubject(102)}, nil, func(name string) {
		if _, err := e.direct.AttachRolePolicy(ctx, &iam.AttachRolePolicyInput{RoleName: aws.String(name), PolicyArn: aws.String(extraPolicy)}); err != nil {
			t.Fatal(err)
		}
	})
	e.upstreamClone(ctx, 2, []string{sessionSubject(103)}, func(in *iam.CreateRoleInput) { in.PermissionsBoundary = aws.String(otherBoundary) }, nil)
	e.upstreamClone(ctx, 3, []string{sessionSubject(104)}, func(in *iam.CreateRoleInput) {
		var doc map[string]any
		if err := json.Unmarshal([]byte(aws.ToString(in.AssumeRolePolicyDocument)), &doc); err != nil {
			t.Fatal(err)
		}
		doc["Statement"] = append(doc["Statement"].([]any), map[string]any{
			"Effect": "Allow", "Principal": map[string]any{"AWS": "arn:aws:iam::" + moto.AccountID + ":root"}, "Action": "sts:AssumeRole",
		})
		js, _ := json.Marshal(doc)
		in.AssumeRolePolicyDocument = aws.String(string(js))
	}, nil)
	unbounded := e.upstreamClone(ctx, 4, []string{sessionSubject(105)}, func(in *iam.CreateRoleInput) { in.PermissionsBoundary = nil }, nil)

	// A running replica: the upstream roles are foreign, so a new subject opens index 5.
	a := e.assigner(NewLocalLocker(), Config{})
	a.foreignRecheck = 0 // the 10 minutes of ForeignRecheck, elapsed at every session
	got, err := a.Assign(ctx, e.seed, "demo", sessionSA(0))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(got.RoleARN, "/adopt-seed-5") || !got.Created {
		t.Fatalf("before adoption: %+v, want adopt-seed-5 created (0-4 are not ours)", got)
	}

	verdicts := func(rs []AdoptResult) map[string]AdoptVerdict {
		out := map[string]AdoptVerdict{}
		for _, r := range rs {
			out[r.ARN[strings.LastIndex(r.ARN, "/")+1:]] = r.Verdict
		}
		return out
	}
	reasons := func(rs []AdoptResult, i int) string {
		for _, r := range rs {
			if r.Index == i {
				return strings.Join(r.Reasons, "; ")
			}
		}
		return ""
	}
	tagOf := func(name string) string {
		out, err := e.direct.GetRole(ctx, &iam.GetRoleInput{RoleName: aws.String(name)})
		if err != nil {
			t.Fatal(err)
		}
		for _, tg := range out.Role.Tags {
			if aws.ToString(tg.Key) == annotations.SeedTag {
				return aws.ToString(tg.Value)
			}
		}
		return ""
	}
	admin := NewAssigner(NewIAMClient(moto.ConfigFor(e.proxy.URL)), NewLocalLocker(), Config{Seeds: mustAllowlist(t, e.seed.String())}, nil)

	// Dry run: verdicts, and not a single write.
	e.proxy.ResetCalls()
	dry, err := admin.Adopt(ctx, e.seed, AdoptOptions{})
	if err != nil {
		t.Fatal(err)
	}
	wantDry := map[string]AdoptVerdict{
		"adopt-seed-0": AdoptFaithful, "adopt-seed-1": AdoptRefused, "adopt-seed-2": AdoptRefused,
		"adopt-seed-3": AdoptRefused, "adopt-seed-4": AdoptRefused, "adopt-seed-5": AdoptOurs,
	}
	if v := verdicts(dry); !maps.Equal(v, wantDry) {
		t.Fatalf("dry run verdicts %v, want %v", v, wantDry)
	}
	for i, want := range map[int]string{
		1: "managed policy " + extraPolicy + " is attached; the seed has no such policy",
		2: "its permissions boundary is " + otherBoundary,
		3: `a trust statement derived roles of this seed do not have: {"Action":"sts:AssumeRole","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::` + moto.AccountID + `:root"}}`,
		4: "it has no permissions boundary",
	} {
		if r := reasons(dry, i); !strings.Contains(r, want) {
			t.Errorf("adopt-seed-%d refused for %q, want %q", i, r, want)
		}
	}
	for action := range e.calls() {
		if !strings.HasPrefix(action, "iam:Get") && !strings.HasPrefix(action, "iam:List") {
			t.Errorf("the dry run called %s", action)
		}
	}
	if tag := tagOf(faithful); tag != "" {
		t.Fatalf("the dry run tagged %s: %s", faithful, tag)
	}

	// --apply: only the faithful role is tagged, with the seed's tags too; nothing else changes.
	applied, err := admin.Adopt(ctx, e.seed, AdoptOptions{Apply: true})
	if err != nil {
		t.Fatal(err)
	}
	wantApplied := maps.Clone(wantDry)
	wantApplied["adopt-seed-0"] = AdoptAdopted
	if v := verdicts(applied); !maps.Equal(v, wantApplied) {
		t.Fatalf("--apply verdicts %v, want %v", v, wantApplied)
	}
	d, err := readRole(ctx, e.direct, faithful, true)
	if err != nil {
		t.Fatal(err)
	}
	if d.tags[annotations.SeedTag] != e.seed.String() || d.tags[moto.SeedTagKey] != moto.SeedTagValue {
		t.Errorf("adopted role's tags %v", d.tags)
	}
	if d.description != "created by aws-credential-manager" {
		t.Errorf("adoption changed the description to %q (drift repair's business)", d.description)
	}
	for i := 1; i <= 4; i++ {
		if tag := tagOf(derivedName(e.seed, i)); tag != "" {
			t.Errorf("refused role %d tagged %s", i, tag)
		}
	}
	if r, _ := readRole(ctx, e.direct, extra, false); len(r.attached) != 2 {
		t.Errorf("refused role's policies changed: %v", r.attached)
	}

	// One role, with --put-boundary: the boundary first, then the tag.
	one, err := admin.Adopt(ctx, e.seed, AdoptOptions{Role: unbounded, Apply: true, PutBoundary: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(one) != 1 || one[0].Verdict != AdoptAdopted {
		t.Fatalf("--role %s --put-boundary: %+v", unbounded, one)
	}
	if r, _ := readRole(ctx, e.direct, unbounded, false); r.boundary != moto.SeedBoundaryARN(e.seed.String()) || r.tags[annotations.SeedTag] != e.seed.String() {
		t.Errorf("%s after --put-boundary: boundary %q, tags %v", unbounded, r.boundary, r.tags)
	}
	if _, err := admin.Adopt(ctx, e.seed, AdoptOptions{Role: "adopt-seed-9"}); err == nil {
		t.Error("--role naming no derived role: no error")
	}

	// The running replica checks its foreign finding again and places the next subject in the
	// adopted role, lowest index with room, instead of opening index 6.
	got, err = a.Assign(ctx, e.seed, "demo", sessionSA(1))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(got.RoleARN, "/"+faithful) || got.Created {
		t.Fatalf("after adoption: %+v, want the adopted %s", got, faithful)
	}
	if subs := e.trustOf(faithful).Subjects(); !slices.Contains(subs, sessionSubject(1)) || !slices.Contains(subs, sessionSubject(100)) || len(subs) != 3 {
		t.Errorf("adopted role's subjects %v: the new one added, the upstream ones kept", subs)
	}
	// So does a fresh replica.
	fresh := e.assigner(NewLocalLocker(), Config{})
	if got, err := fresh.Assign(ctx, e.seed, "demo", sessionSA(2)); err != nil || !strings.HasSuffix(got.RoleARN, "/"+faithful) {
		t.Fatalf("fresh replica: %+v, %v", got, err)
	}
	roles, err := fresh.Roles(ctx, e.seed)
	if err != nil {
		t.Fatal(err)
	}
	owned := map[int]bool{}
	for _, r := range roles {
		owned[r.Index] = r.Owned
	}
	if want := map[int]bool{0: true, 1: false, 2: false, 3: false, 4: true, 5: true}; !maps.Equal(owned, want) {
		t.Errorf("roles table owned %v, want %v (no index 6)", owned, want)
	}

	// Drift repair (garbage collection's full pass) now treats the adopted role as ours: the
	// seed's description; the refused roles stay untouched.
	if _, err := a.SyncFromSeed(ctx, e.seed); err != nil {
		t.Fatal(err)
	}
	seed, _ := readRole(ctx, e.direct, e.seed.Name, false)
	if d, _ := readRole(ctx, e.direct, faithful, false); d.description != seed.description {
		t.Errorf("adopted role after drift repair: description %q, want the seed's %q", d.description, seed.description)
	}
	if r, _ := readRole(ctx, e.direct, extra, false); len(r.attached) != 2 || r.tags[annotations.SeedTag] != "" {
		t.Errorf("drift repair touched the refused %s: %v %v", extra, r.attached, r.tags)
	}
}

func mustAllowlist(t *testing.T, s string) Allowlist {
	t.Helper()
	l, err := ParseAllowlist(s)
	if err != nil {
		t.Fatal(err)
	}
	return l
}
