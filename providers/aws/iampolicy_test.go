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
// limited by iam:PolicyARN, and there is no PassRole, no wildcard action and no "*" resource
// except for the two read-only calls IAM cannot scope. A new IAM call without a policy update,
// or a policy widened by hand, fails here. The reasoning per statement is in doc.go.

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
