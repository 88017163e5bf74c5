package aws

import (
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.klusters.dev/credential-webhook/annotations"
)

// The webhook's IAM policy (manifests/iam-policy.json) is least privilege, proven against the
// code rather than reviewed by eye: every IAM call the product makes is granted, nothing else is,
// writes reach derived roles only and only those carrying our seed tag, AttachRolePolicy is
// limited by iam:PolicyARN, every call that grants permissions demands the permissions boundary,
// and there is no PassRole, no wildcard action and no "*" resource except for the two read-only
// calls IAM cannot scope. TestIAMPolicyEvaluated then evaluates the document against every call
// the code makes and against what a thief of the webhook's credentials would try. A new IAM call
// without a policy update, or a policy widened by hand, fails here. The reasoning per statement
// is in doc.go.

const iamPolicyFile = "../../manifests/iam-policy.json"

// stringList is an IAM policy value: a string or a list of strings.
type stringList []string

func (l *stringList) UnmarshalJSON(b []byte) error {
	var one string
	if err := json.Unmarshal(b, &one); err == nil {
		*l = stringList{one}
		return nil
	}
	var many []string
	if err := json.Unmarshal(b, &many); err != nil {
		return err
	}
	*l = many
	return nil
}

type policyStatement struct {
	Sid         string
	Effect      string
	Action      stringList
	NotAction   stringList
	Resource    stringList
	NotResource stringList
	Principal   json.RawMessage
	Condition   map[string]map[string]stringList
}

func readIAMPolicy(t *testing.T) []policyStatement {
	t.Helper()
	b, err := os.ReadFile(iamPolicyFile)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Version   string
		Statement []policyStatement
	}
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields() // a misspelt key ("Resources") would silently grant nothing, or more
	if err := dec.Decode(&doc); err != nil {
		t.Fatalf("%s: %v", iamPolicyFile, err)
	}
	if doc.Version != "2012-10-17" || len(doc.Statement) == 0 {
		t.Fatalf("%s: version %q, %d statements", iamPolicyFile, doc.Version, len(doc.Statement))
	}
	return doc.Statement
}

// readOnly reports whether an IAM action only reads.
func readOnly(action string) bool {
	name := strings.TrimPrefix(action, "iam:")
	return strings.HasPrefix(name, "Get") || strings.HasPrefix(name, "List")
}

// unscopable are the read-only calls IAM offers no resource for; the only ones allowed on "*".
var unscopable = []string{"iam:GetAccountSummary", "iam:ListRoles"}

const (
	seedResource    = "arn:aws:iam::ACCOUNT_ID:role/SEED_PATH/SEED_NAME"
	derivedResource = seedResource + "-*"
	seedTagValue    = seedResource
)

func TestIAMPolicyLeastPrivilege(t *testing.T) {
	stmts := readIAMPolicy(t)
	granted := map[string][]policyStatement{}
	for _, st := range stmts {
		if st.Effect != "Allow" {
			continue // a Deny only narrows
		}
		if len(st.NotAction) > 0 || len(st.NotResource) > 0 || len(st.Principal) > 0 {
			t.Errorf("%s: NotAction, NotResource or Principal in an identity policy grant more than they name", st.Sid)
		}
		if len(st.Action) == 0 || len(st.Resource) == 0 {
			t.Errorf("%s: no Action or no Resource", st.Sid)
		}
		for _, a := range st.Action {
			if strings.ContainsAny(a, "*?") || !strings.HasPrefix(a, "iam:") {
				t.Errorf("%s: action %q is a wildcard or not IAM", st.Sid, a)
			}
			if strings.EqualFold(a, "iam:PassRole") {
				t.Errorf("%s: grants iam:PassRole", st.Sid)
			}
			granted[a] = append(granted[a], st)
		}
		star := slices.ContainsFunc(st.Resource, func(r string) bool { return r == "*" || strings.HasSuffix(r, ":*") })
		if star {
			for _, a := range st.Action {
				if !slices.Contains(unscopable, a) {
					t.Errorf("%s: %s on Resource %q; only %v may have an unscoped resource", st.Sid, a, st.Resource, unscopable)
				}
			}
			continue
		}
		for _, r := range st.Resource {
			if r != seedResource && r != derivedResource {
				t.Errorf("%s: resource %q is neither the seed nor its derived roles", st.Sid, r)
			}
		}
		for _, a := range st.Action {
			if readOnly(a) {
				continue
			}
			// Writes: derived roles only (nothing is ever written to the seed), and only roles
			// that carry our seed tag (or, when creating or tagging, that get it).
			if !slices.Equal(st.Resource, stringList{derivedResource}) {
				t.Errorf("%s: write %s on %q; writes go to %q only", st.Sid, a, st.Resource, derivedResource)
			}
			tagKey := "aws:ResourceTag/" + annotations.SeedTag
			if a == "iam:CreateRole" || a == "iam:TagRole" {
				tagKey = "aws:RequestTag/" + annotations.SeedTag
			}
			if got := st.Condition["StringEquals"][tagKey]; !slices.Equal(got, stringList{seedTagValue}) {
				t.Errorf("%s: write %s lacks the condition StringEquals %s = %s (has %v)", st.Sid, a, tagKey, seedTagValue, st.Condition)
			}
		}
	}

	// AttachRolePolicy: only the seed's managed policies, named by iam:PolicyARN.
	for _, st := range granted["iam:AttachRolePolicy"] {
		var arns stringList
		for op, keys := range st.Condition {
			for k, v := range keys {
				if strings.EqualFold(k, "iam:PolicyARN") && (strings.HasPrefix(op, "Arn") || strings.HasPrefix(op, "String")) {
					arns = append(arns, v...)
				}
			}
		}
		if len(arns) == 0 {
			t.Errorf("%s: AttachRolePolicy without an iam:PolicyARN condition (it could attach AdministratorAccess)", st.Sid)
		}
		for _, a := range arns {
			if strings.Contains(a, "*") || strings.Contains(a, "arn:aws:iam::aws:policy/") {
				t.Errorf("%s: iam:PolicyARN %q is a wildcard or an AWS managed policy", st.Sid, a)
			}
		}
	}
	// UntagRole must never remove the seed tag, or a role could be made "not ours" and re-tagged.
	for _, st := range granted["iam:UntagRole"] {
		if got := st.Condition["ForAllValues:StringNotEquals"]["aws:TagKeys"]; !slices.Contains(got, annotations.SeedTag) {
			t.Errorf("%s: UntagRole may remove %s", st.Sid, annotations.SeedTag)
		}
	}

	// Every call that can give a derived role permissions demands the permissions boundary; the
	// boundary can never be removed; tags are limited to known keys; TagRole never adopts a role.
	for _, a := range []string{"iam:CreateRole", "iam:PutRolePolicy", "iam:AttachRolePolicy", "iam:PutRolePermissionsBoundary"} {
		for _, st := range granted[a] {
			if got := st.Condition["StringEquals"]["iam:PermissionsBoundary"]; !slices.Equal(got, stringList{boundaryPlaceholder}) {
				t.Errorf("%s: %s without StringEquals iam:PermissionsBoundary = %s (has %v)", st.Sid, a, boundaryPlaceholder, st.Condition)
			}
		}
	}
	if _, ok := granted["iam:DeleteRolePermissionsBoundary"]; ok {
		t.Error("iam:DeleteRolePermissionsBoundary is granted: a derived role could lose its boundary")
	}
	for _, a := range []string{"iam:CreateRole", "iam:TagRole"} {
		for _, st := range granted[a] {
			if got := st.Condition["ForAllValues:StringEquals"]["aws:TagKeys"]; !slices.Contains(got, annotations.SeedTag) || slices.ContainsFunc(got, func(k string) bool { return strings.ContainsAny(k, "*?") }) {
				t.Errorf("%s: %s without ForAllValues:StringEquals aws:TagKeys listing exact keys (has %v)", st.Sid, a, got)
			}
		}
	}
	for _, st := range granted["iam:TagRole"] {
		if got := st.Condition["StringEquals"]["aws:ResourceTag/"+annotations.SeedTag]; !slices.Equal(got, stringList{seedTagValue}) {
			t.Errorf("%s: TagRole does not require the role to carry the seed tag already (has %v)", st.Sid, st.Condition)
		}
	}

	// Granted exactly what the code calls: both directions.
	called := iamActionsCalled(t)
	for _, a := range slices.Sorted(maps.Keys(called)) {
		if _, ok := granted[a]; !ok {
			t.Errorf("the code calls %s (%s) but manifests/iam-policy.json does not grant it", a, called[a])
		}
	}
	for _, a := range slices.Sorted(maps.Keys(granted)) {
		if _, ok := called[a]; !ok {
			t.Errorf("manifests/iam-policy.json grants %s, which no product code calls", a)
		}
	}
	t.Logf("%d IAM actions called and granted: %v", len(called), slices.Sorted(maps.Keys(called)))
}

// iamActionsCalled collects the IAM actions the product can call, from two sources that must
// both be covered: the IAMAPI interface (iam.go), and every iam.<Action>Input built anywhere in
// the module's product code (another package might hold its own small client interface, as
// sweeper/awscheck does). Test code, test environments, e2e and the bench tool are not the product.
func iamActionsCalled(t *testing.T) map[string]string {
	t.Helper()
	called := map[string]string{}
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, "iam.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	ast.Inspect(f, func(n ast.Node) bool {
		ts, ok := n.(*ast.TypeSpec)
		if !ok || ts.Name.Name != "IAMAPI" {
			return true
		}
		for _, m := range ts.Type.(*ast.InterfaceType).Methods.List {
			for _, name := range m.Names {
				called["iam:"+name.Name] = "IAMAPI in providers/aws/iam.go"
			}
		}
		return false
	})
	if len(called) == 0 {
		t.Fatal("no IAMAPI interface found in iam.go")
	}

	inputRE := regexp.MustCompile(`\biam\.([A-Z][A-Za-z]+)Input\b`)
	root := "../.."
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		if d.IsDir() {
			switch rel {
			case "testenv", "e2e", "bench", ".git", "docs", "manifests":
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, m := range inputRE.FindAllStringSubmatch(string(src), -1) {
			if _, ok := called["iam:"+m[1]]; !ok {
				called["iam:"+m[1]] = rel
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return called
}

// Placeholders of manifests/iam-policy.json besides the seed's.
const (
	boundaryPlaceholder = "arn:aws:iam::ACCOUNT_ID:policy/PERMISSIONS_BOUNDARY"
	managedPlaceholder  = "arn:aws:iam::ACCOUNT_ID:policy/SEED_MANAGED_POLICY"
	tagKeyPlaceholder   = "SEED_TAG_KEY"
)

// iamRequest is one IAM call as the policy evaluator sees it: the action, the resource and the
// request context keys IAM sets for that call (multi-valued keys, such as aws:TagKeys, have
// several values; a key absent from the map is absent from the request).
type iamRequest struct {
	action   string
	resource string
	context  map[string][]string
}

// evalIAMPolicy evaluates an identity policy for req the way IAM does for the subset the webhook's
// policy uses: an explicit Deny wins, else some Allow must match action, resource and every
// condition; otherwise the implicit deny. Condition operators outside the subset fail the test,
// so a policy edit cannot slip past the evaluator by using one it does not know.
func evalIAMPolicy(t *testing.T, stmts []policyStatement, req iamRequest) (allowed bool, sid string) {
	t.Helper()
	for _, st := range stmts {
		if !matchesAny(st.Action, req.action, true) || !matchesAny(st.Resource, req.resource, false) || !conditionsHold(t, st.Condition, req.context) {
			continue
		}
		switch st.Effect {
		case "Deny":
			return false, st.Sid
		case "Allow":
			allowed, sid = true, st.Sid
		default:
			t.Fatalf("%s: Effect %q", st.Sid, st.Effect)
		}
	}
	return allowed, sid
}

// matchesAny reports whether value matches one of the IAM globs ('*' any run, '?' one
// character); actions compare case-insensitively, as IAM does.
func matchesAny(globs []string, value string, fold bool) bool {
	for _, g := range globs {
		if fold {
			g, value = strings.ToLower(g), strings.ToLower(value)
		}
		if iamGlob(g, value) {
			return true
		}
	}
	return false
}

func iamGlob(pattern, s string) bool {
	re := "^" + strings.NewReplacer(`\*`, ".*", `\?`, ".").Replace(regexp.QuoteMeta(pattern)) + "$"
	return regexp.MustCompile(re).MatchString(s)
}

func conditionsHold(t *testing.T, cond map[string]map[string]stringList, ctx map[string][]string) bool {
	t.Helper()
	for op, keys := range cond {
		for key, want := range keys {
			have, present := ctx[key]
			if !conditionHolds(t, op, want, have, present) {
				return false
			}
		}
	}
	return true
}

// conditionHolds is one condition operator on one key. Single-valued operators match when the
// request's value matches any listed value; a missing key fails them, except the negated ones,
// which a missing key satisfies. ForAllValues holds when every request value matches (vacuously
// with none).
func conditionHolds(t *testing.T, op string, want, have []string, present bool) bool {
	t.Helper()
	var match func(w, h string) bool
	base := strings.TrimPrefix(op, "ForAllValues:")
	switch base {
	case "StringEquals", "StringNotEquals", "ArnEquals":
		match = func(w, h string) bool { return w == h }
	case "StringLike", "ArnLike":
		match = iamGlob
	default:
		t.Fatalf("condition operator %q is outside what the evaluator knows", op)
	}
	anyMatch := func(h string) bool { return slices.ContainsFunc(want, func(w string) bool { return match(w, h) }) }
	negated := base == "StringNotEquals"
	if strings.HasPrefix(op, "ForAllValues:") {
		for _, h := range have {
			if anyMatch(h) == negated {
				return false
			}
		}
		return true
	}
	if !present || len(have) == 0 {
		return negated
	}
	if len(have) != 1 {
		t.Fatalf("single-valued operator %s on a multi-valued key %v", op, have)
	}
	return anyMatch(have[0]) != negated
}

// Request contexts as IAM builds them for the calls the webhook makes.

func withResourceTags(ctx map[string][]string, tags map[string]string) map[string][]string {
	if ctx == nil {
		ctx = map[string][]string{}
	}
	for k, v := range tags {
		ctx["aws:ResourceTag/"+k] = []string{v}
	}
	return ctx
}

func withRequestTags(ctx map[string][]string, tags map[string]string) map[string][]string {
	if ctx == nil {
		ctx = map[string][]string{}
	}
	for k, v := range tags {
		ctx["aws:RequestTag/"+k] = []string{v}
		ctx["aws:TagKeys"] = append(ctx["aws:TagKeys"], k)
	}
	slices.Sort(ctx["aws:TagKeys"])
	return ctx
}

func withBoundary(ctx map[string][]string, boundary string) map[string][]string {
	if ctx == nil {
		ctx = map[string][]string{}
	}
	if boundary != "" {
		ctx["iam:PermissionsBoundary"] = []string{boundary}
	}
	return ctx
}

// TestIAMPolicyEvaluated proves manifests/iam-policy.json by evaluating it (moto does not evaluate
// conditions): every call the code makes, with the request context IAM gives it, is allowed; and
// what a thief of the webhook's credentials would try is denied.
func TestIAMPolicyEvaluated(t *testing.T) {
	stmts := readIAMPolicy(t)
	const (
		seed    = seedResource
		derived = seedResource + "-3"
		foreign = seedResource + "-7" // named like ours, not tagged by us
		other   = "arn:aws:iam::ACCOUNT_ID:role/SEED_PATH/admin"
		b       = boundaryPlaceholder
	)
	ours := map[string]string{annotations.SeedTag: seedTagValue, tagKeyPlaceholder: "backup"}
	created := map[string]string{annotations.SeedTag: seedTagValue, tagKeyPlaceholder: "backup"} // copiedTags of a seed tagged SEED_TAG_KEY
	owned := func() map[string][]string { return withBoundary(withResourceTags(nil, ours), b) }
	req := func(action, resource string, ctx map[string][]string) iamRequest {
		return iamRequest{action: "iam:" + action, resource: resource, context: ctx}
	}

	allowed := []struct {
		name string
		req  iamRequest
	}{
		{"ListRoles (discovery)", req("ListRoles", "*", nil)},
		{"GetAccountSummary (quota)", req("GetAccountSummary", "*", nil)},
		{"GetRole of the seed", req("GetRole", seed, nil)},
		{"GetRole of a derived role", req("GetRole", derived, nil)},
		{"GetRole of a foreign role named like ours (ownership check)", req("GetRole", foreign, nil)},
		{"ListAttachedRolePolicies of the seed", req("ListAttachedRolePolicies", seed, nil)},
		{"ListRolePolicies of a derived role", req("ListRolePolicies", derived, nil)},
		{"GetRolePolicy of the seed", req("GetRolePolicy", seed, nil)},
		{"CreateRole with the seed tag, copied tags and the boundary", req("CreateRole", derived, withBoundary(withRequestTags(nil, created), b))},
		{"CreateRole with only the seed tag", req("CreateRole", derived, withBoundary(withRequestTags(nil, map[string]string{annotations.SeedTag: seedTagValue}), b))},
		{"UpdateAssumeRolePolicy of an owned derived role", req("UpdateAssumeRolePolicy", derived, owned())},
		{"UpdateAssumeRolePolicy of an owned role still without a boundary (Remove before sync)", req("UpdateAssumeRolePolicy", derived, withResourceTags(nil, ours))},
		{"PutRolePermissionsBoundary on an owned role (completion, drift)", req("PutRolePermissionsBoundary", derived, withBoundary(withResourceTags(nil, ours), b))},
		{"PutRolePolicy on an owned role with the boundary", req("PutRolePolicy", derived, owned())},
		{"AttachRolePolicy of the seed's managed policy", req("AttachRolePolicy", derived, func() map[string][]string {
			c := owned()
			c["iam:PolicyARN"] = []string{managedPlaceholder}
			return c
		}())},
		{"DetachRolePolicy (drift, delete)", req("DetachRolePolicy", derived, owned())},
		{"DeleteRolePolicy (drift, delete)", req("DeleteRolePolicy", derived, owned())},
		{"UpdateRole (description, session length)", req("UpdateRole", derived, owned())},
		{"TagRole restating the seed tag", req("TagRole", derived, withRequestTags(owned(), created))},
		{"TagRole marking an empty role (ExpireEmpty, Remove)", req("TagRole", derived, withRequestTags(owned(), map[string]string{annotations.SeedTag: seedTagValue, EmptySinceTag: "2026-01-02T03:04:05Z"}))},
		{"UntagRole of the empty-since mark", req("UntagRole", derived, func() map[string][]string {
			c := owned()
			c["aws:TagKeys"] = []string{EmptySinceTag}
			return c
		}())},
		{"UntagRole of a copied tag", req("UntagRole", derived, func() map[string][]string {
			c := owned()
			c["aws:TagKeys"] = []string{tagKeyPlaceholder}
			return c
		}())},
		{"DeleteRole of an empty owned role", req("DeleteRole", derived, owned())},
	}
	covered := map[string]bool{}
	for _, tc := range allowed {
		if ok, sid := evalIAMPolicy(t, stmts, tc.req); !ok {
			t.Errorf("denied, but the code makes this call: %s (%s on %s, context %v; matched %q)", tc.name, tc.req.action, tc.req.resource, tc.req.context, sid)
		}
		covered[tc.req.action] = true
	}
	for a := range iamActionsCalled(t) {
		if !covered[a] {
			t.Errorf("the code calls %s but no allowed case above evaluates it", a)
		}
	}

	withTags := func(ctx map[string][]string, tags map[string]string) map[string][]string {
		return withRequestTags(ctx, tags)
	}
	extraKey := map[string]string{annotations.SeedTag: seedTagValue, "admin": "true"}
	denied := []struct {
		name string
		req  iamRequest
	}{
		{"CreateRole without a boundary", req("CreateRole", derived, withTags(nil, created))},
		{"CreateRole with another boundary", req("CreateRole", derived, withBoundary(withTags(nil, created), "arn:aws:iam::aws:policy/AdministratorAccess"))},
		{"CreateRole without the seed tag", req("CreateRole", derived, withBoundary(withTags(nil, map[string]string{tagKeyPlaceholder: "backup"}), b))},
		{"CreateRole tagged with another seed", req("CreateRole", derived, withBoundary(withTags(nil, map[string]string{annotations.SeedTag: other}), b))},
		{"CreateRole with an extra tag key", req("CreateRole", derived, withBoundary(withTags(nil, extraKey), b))},
		{"CreateRole outside <seed>-*", req("CreateRole", other, withBoundary(withTags(nil, created), b))},
		{"CreateRole of the seed's name", req("CreateRole", seed, withBoundary(withTags(nil, created), b))},
		{"PutRolePolicy on a derived role without the boundary", req("PutRolePolicy", derived, withResourceTags(nil, ours))},
		{"PutRolePolicy on a derived role with another boundary", req("PutRolePolicy", derived, withBoundary(withResourceTags(nil, ours), "arn:aws:iam::ACCOUNT_ID:policy/wide"))},
		{"PutRolePolicy on a foreign role", req("PutRolePolicy", foreign, withBoundary(nil, b))},
		{"AttachRolePolicy without the boundary", req("AttachRolePolicy", derived, map[string][]string{"aws:ResourceTag/" + annotations.SeedTag: {seedTagValue}, "iam:PolicyARN": {managedPlaceholder}})},
		{"AttachRolePolicy of AdministratorAccess", req("AttachRolePolicy", derived, func() map[string][]string {
			c := owned()
			c["iam:PolicyARN"] = []string{"arn:aws:iam::aws:policy/AdministratorAccess"}
			return c
		}())},
		{"PutRolePermissionsBoundary to another boundary", req("PutRolePermissionsBoundary", derived, withBoundary(withResourceTags(nil, ours), "arn:aws:iam::ACCOUNT_ID:policy/wide"))},
		{"DeleteRolePermissionsBoundary", req("DeleteRolePermissionsBoundary", derived, owned())},
		{"TagRole adopting a foreign <seed>-N role (no resource tag)", req("TagRole", foreign, withTags(nil, created))},
		{"TagRole moving an owned role to another seed", req("TagRole", derived, withTags(owned(), map[string]string{annotations.SeedTag: other}))},
		{"TagRole with an extra tag key", req("TagRole", derived, withTags(owned(), extraKey))},
		{"TagRole without restating the seed tag", req("TagRole", derived, withTags(owned(), map[string]string{tagKeyPlaceholder: "x"}))},
		{"TagRole marking a foreign <seed>-N role empty", req("TagRole", foreign, withTags(nil, map[string]string{annotations.SeedTag: seedTagValue, EmptySinceTag: "2026-01-02T03:04:05Z"}))},
		{"TagRole marking without restating the seed tag", req("TagRole", derived, withTags(owned(), map[string]string{EmptySinceTag: "2026-01-02T03:04:05Z"}))},
		{"CreateRole born marked empty", req("CreateRole", derived, withBoundary(withTags(nil, map[string]string{annotations.SeedTag: seedTagValue, EmptySinceTag: "2026-01-02T03:04:05Z"}), b))},
		{"UntagRole of the seed tag", req("UntagRole", derived, func() map[string][]string {
			c := owned()
			c["aws:TagKeys"] = []string{annotations.SeedTag}
			return c
		}())},
		{"UpdateAssumeRolePolicy on the seed itself", req("UpdateAssumeRolePolicy", seed, withBoundary(withResourceTags(nil, map[string]string{tagKeyPlaceholder: "backup"}), b))},
		{"UpdateAssumeRolePolicy on the seed even if tagged", req("UpdateAssumeRolePolicy", seed, owned())},
		{"UpdateAssumeRolePolicy on a foreign role", req("UpdateAssumeRolePolicy", foreign, nil)},
		{"UpdateAssumeRolePolicy on a role outside <seed>-*", req("UpdateAssumeRolePolicy", other, owned())},
		{"DeleteRole outside <seed>-*", req("DeleteRole", other, owned())},
		{"PutRolePolicy outside <seed>-*", req("PutRolePolicy", other, owned())},
		{"DeleteRole of a foreign role", req("DeleteRole", foreign, nil)},
		{"iam:PassRole", req("PassRole", derived, owned())},
		{"iam:CreatePolicy", req("CreatePolicy", "arn:aws:iam::ACCOUNT_ID:policy/anything", nil)},
		{"iam:CreatePolicyVersion", req("CreatePolicyVersion", boundaryPlaceholder, nil)},
		{"iam:AttachUserPolicy", req("AttachUserPolicy", "arn:aws:iam::ACCOUNT_ID:user/me", nil)},
		{"iam:CreateOpenIDConnectProvider", req("CreateOpenIDConnectProvider", "arn:aws:iam::ACCOUNT_ID:oidc-provider/evil.example", nil)},
		{"sts:AssumeRole", iamRequest{action: "sts:AssumeRole", resource: derived}},
	}
	for _, tc := range denied {
		if ok, sid := evalIAMPolicy(t, stmts, tc.req); ok {
			t.Errorf("allowed by %s, must be denied: %s (%s on %s, context %v)", sid, tc.name, tc.req.action, tc.req.resource, tc.req.context)
		}
	}
}

// The evaluator itself, on the operators' edge cases the table relies on.
func TestIAMPolicyEvaluator(t *testing.T) {
	for _, tc := range []struct {
		op      string
		want    []string
		have    []string
		present bool
		holds   bool
	}{
		{"StringEquals", []string{"a"}, []string{"a"}, true, true},
		{"StringEquals", []string{"a"}, []string{"b"}, true, false},
		{"StringEquals", []string{"a"}, nil, false, false},
		{"StringNotEquals", []string{"a"}, nil, false, true},
		{"StringNotEquals", []string{"a"}, []string{"a"}, true, false},
		{"StringLike", []string{"arn:*:x"}, []string{"arn:1:x"}, true, true},
		{"StringLike", []string{"a?"}, []string{"abc"}, true, false},
		{"ArnEquals", []string{"arn:p"}, []string{"arn:p"}, true, true},
		{"ForAllValues:StringEquals", []string{"a", "b"}, []string{"a", "b"}, true, true},
		{"ForAllValues:StringEquals", []string{"a", "b"}, []string{"a", "c"}, true, false},
		{"ForAllValues:StringEquals", []string{"a"}, nil, false, true},
		{"ForAllValues:StringNotEquals", []string{"a"}, []string{"b", "c"}, true, true},
		{"ForAllValues:StringNotEquals", []string{"a"}, []string{"b", "a"}, true, false},
	} {
		if got := conditionHolds(t, tc.op, tc.want, tc.have, tc.present); got != tc.holds {
			t.Errorf("%s %v on %v (present %v) = %v", tc.op, tc.want, tc.have, tc.present, got)
		}
	}
	deny := []policyStatement{
		{Sid: "A", Effect: "Allow", Action: stringList{"iam:*"}, Resource: stringList{"*"}},
		{Sid: "D", Effect: "Deny", Action: stringList{"iam:DeleteRole"}, Resource: stringList{"*"}},
	}
	if ok, _ := evalIAMPolicy(t, deny, iamRequest{action: "iam:deleterole", resource: "x"}); ok {
		t.Error("an explicit Deny must win")
	}
	if ok, _ := evalIAMPolicy(t, deny, iamRequest{action: "iam:GetRole", resource: "x"}); !ok {
		t.Error("Allow iam:* must allow iam:GetRole")
	}
}
