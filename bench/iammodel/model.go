// Package iammodel is an in-memory model of the part of AWS IAM the webhook uses (awsp.IAMAPI):
// roles with their trust policy, inline and attached policies, permissions boundary and tags,
// IAM's errors, and the trust policy size quota as testenv/iamproxy enforces it. It exists so the
// production Assigner can run through a simulated month (millions of calls) in seconds: moto
// costs an HTTP round trip and a Python interpreter per call. model_test.go runs one scenario
// through the production code against moto and against the model and requires the same end
// state and the same calls.
//
// Test tooling only: it must never be linked into the product binary.
package iammodel

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/service/iam"
	"github.com/aws/aws-sdk-go-v2/service/iam/types"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	awsp "go.klusters.dev/credential-webhook/providers/aws"
)

// DefaultAccountID is moto's account, so ARNs read the same against either.
const DefaultAccountID = "123456789012"

// IAM's default quotas (GetAccountSummary) the model enforces besides the trust policy size.
const (
	tagsPerRole      = 50
	policiesPerRole  = 10    // AttachedPoliciesPerRoleQuota
	rolePolicySize   = 10240 // RolePolicySizeQuota: all inline policies of a role, without whitespace
	minSession       = 3600
	maxSession       = 43200
	defaultListItems = 100
	maxListItems     = 1000
)

// Options configure a model.
type Options struct {
	// Quota is the trust policy size quota (ACLSizePerRole) GetAccountSummary reports and
	// CreateRole and UpdateAssumeRolePolicy enforce; 0 is IAM's default, awsp.DefaultQuota.
	// Real IAM always enforces one, so unlike iamproxy's, 0 does not turn it off.
	Quota int
	// AccountID is the account of every ARN; "" is DefaultAccountID.
	AccountID string
	// Clock stamps CreateDate; nil is time.Now. A simulation passes its own so runs repeat.
	Clock func() time.Time
}

// IAM is the model. It implements awsp.IAMAPI and is safe for concurrent use: one mutex
// serialises every call, each being a few map operations.
type IAM struct {
	account string
	quota   int
	clock   func() time.Time

	mu     sync.Mutex
	roles  map[string]*role // by lower-cased name: IAM role names are unique regardless of case
	sorted []*role          // by key, for ListRoles
	nextID int
	calls  map[string]int
}

type role struct {
	key, name, path, id string
	created             time.Time
	trust               string // as sent
	trustEnc            string // URL-encoded trust, "" until read
	description         *string
	maxSession          int32
	boundary            string
	tags                []types.Tag       // in the order added, like IAM
	inline              map[string]string // name -> document as sent
	attached            []string          // sorted ARNs
}

var _ awsp.IAMAPI = (*IAM)(nil)

// New returns an empty account.
func New(opts Options) *IAM {
	m := &IAM{account: opts.AccountID, quota: opts.Quota, clock: opts.Clock, roles: map[string]*role{}, calls: map[string]int{}}
	if m.account == "" {
		m.account = DefaultAccountID
	}
	if m.quota <= 0 {
		m.quota = awsp.DefaultQuota
	}
	if m.clock == nil {
		m.clock = time.Now
	}
	return m
}

// Calls returns the calls received per IAM action ("UpdateAssumeRolePolicy"), failed ones
// included, as iamproxy counts them (without its "iam:" prefix).
func (m *IAM) Calls() map[string]int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return maps.Clone(m.calls)
}

// ResetCalls zeroes Calls.
func (m *IAM) ResetCalls() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.calls = map[string]int{}
}

// call counts one call of op and runs f under the lock. A call whose ctx already ended is
// refused uncounted, as the SDK never sends it. API errors f returns are wrapped the way the SDK
// wraps them, so whoever unwraps to the HTTP status or prints the error sees a real call's.
func call[O any](m *IAM, ctx context.Context, op string, f func() (*O, error)) (*O, error) {
	if err := ctx.Err(); err != nil {
		return nil, &smithy.OperationError{ServiceID: "IAM", OperationName: op, Err: &smithy.CanceledError{Err: err}}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.calls[op]++
	out, err := f()
	if err == nil {
		return out, nil
	}
	status, code := http.StatusBadRequest, ""
	if ae, ok := err.(smithy.APIError); ok {
		code = ae.ErrorCode()
	}
	switch code {
	case "NoSuchEntity":
		status = http.StatusNotFound
	case "EntityAlreadyExists", "LimitExceeded", "DeleteConflict":
		status = http.StatusConflict
	}
	return nil, &smithy.OperationError{ServiceID: "IAM", OperationName: op, Err: &awshttp.ResponseError{
		ResponseError: &smithyhttp.ResponseError{Response: &smithyhttp.Response{Response: &http.Response{StatusCode: status}}, Err: err},
		RequestID:     "iammodel",
	}}
}

// onRole is call for an action on an existing role.
func onRole[O any](m *IAM, ctx context.Context, op string, name *string, f func(*role) (*O, error)) (*O, error) {
	return call(m, ctx, op, func() (*O, error) {
		r, ok := m.roles[strings.ToLower(aws.ToString(name))]
		if !ok {
			return nil, noSuch("The role with name %s cannot be found.", aws.ToString(name))
		}
		return f(r)
	})
}

func invalid(format string, args ...any) error {
	return &smithy.GenericAPIError{Code: "ValidationError", Message: "1 validation error detected: " + fmt.Sprintf(format, args...), Fault: smithy.FaultClient}
}

func invalidARN(arn string) error {
	return &types.InvalidInputException{Message: aws.String("ARN " + arn + " is not valid.")}
}

func noSuch(format string, args ...any) error {
	return &types.NoSuchEntityException{Message: aws.String(fmt.Sprintf(format, args...))}
}

func limit(format string, args ...any) error {
	return &types.LimitExceededException{Message: aws.String(fmt.Sprintf(format, args...))}
}

func malformed(field string) error {
	return &types.MalformedPolicyDocumentException{Message: aws.String(field + " is not a valid JSON policy document")}
}

// measure returns the size IAM charges doc against a quota and whether it is a JSON object with
// a Statement. The size rule is iamproxy's (policySize): IAM ignores whitespace, so JSON is
// measured compacted, in characters, anything else without its whitespace. Compacting keeps
// every string as it is, so `"Statement"` is in the compacted document exactly when it is in doc.
func (m *IAM) measure(doc string) (size int, object bool) {
	if n, ok := compactSize(doc); ok {
		first := strings.TrimLeft(doc, " \t\n\r")
		return n, first[0] == '{' && strings.Contains(doc, `"Statement"`)
	}
	for _, r := range doc {
		if !unicode.IsSpace(r) {
			size++
		}
	}
	return size, false
}

// checkTrust applies the quota before anything else, as iamproxy does before moto sees the
// request: an oversized document is refused for its size even when the role does not exist.
func (m *IAM) checkTrust(doc string) (object bool, err error) {
	size, object := m.measure(doc)
	if size > m.quota {
		return false, limit("Cannot exceed quota for ACLSizePerRole: %d", m.quota)
	}
	return object, nil
}

var (
	roleNameRE   = regexp.MustCompile(`^[\w+=,.@-]{1,64}$`)
	policyNameRE = regexp.MustCompile(`^[\w+=,.@-]{1,128}$`)
	pathRE       = regexp.MustCompile(`^/([\x21-\x7E]{0,510}/)?$`)
)

func checkSession(d int32) error {
	if d < minSession || d > maxSession {
		return invalid("Value '%d' at 'maxSessionDuration' failed to satisfy constraint", d)
	}
	return nil
}

func (m *IAM) CreateRole(ctx context.Context, in *iam.CreateRoleInput, _ ...func(*iam.Options)) (*iam.CreateRoleOutput, error) {
	name, doc := aws.ToString(in.RoleName), aws.ToString(in.AssumeRolePolicyDocument)
	object, err := m.checkTrust(doc) // before the lock, as in UpdateAssumeRolePolicy
	return call(m, ctx, "CreateRole", func() (*iam.CreateRoleOutput, error) {
		r := &role{key: strings.ToLower(name), name: name, path: aws.ToString(in.Path), trust: doc, description: copyPtr(in.Description),
			maxSession: aws.ToInt32(in.MaxSessionDuration), boundary: aws.ToString(in.PermissionsBoundary), inline: map[string]string{}}
		if r.path == "" {
			r.path = "/"
		}
		if r.maxSession == 0 {
			r.maxSession = minSession
		}
		switch {
		case err != nil:
			return nil, err
		case !roleNameRE.MatchString(name):
			return nil, invalid("Value '%s' at 'roleName' failed to satisfy constraint", name)
		case !pathRE.MatchString(r.path):
			return nil, invalid("Value '%s' at 'path' failed to satisfy constraint", r.path)
		case checkSession(r.maxSession) != nil:
			return nil, checkSession(r.maxSession)
		case r.boundary != "" && !validPolicyARN(r.boundary):
			return nil, invalidARN(r.boundary)
		case m.roles[r.key] != nil:
			return nil, &types.EntityAlreadyExistsException{Message: aws.String("Role with name " + name + " already exists.")}
		case !object: // moto does not validate the document on CreateRole; real IAM does
			return nil, malformed("AssumeRolePolicyDocument")
		case len(in.Tags) > tagsPerRole:
			return nil, limit("Cannot exceed quota for TagsPerRole: %d", tagsPerRole)
		}
		r.tags = mergeTags(nil, in.Tags)
		m.nextID++
		r.id = fmt.Sprintf("AROAMODEL%012d", m.nextID) // 21 characters like IAM's, and runs repeat
		r.created = m.clock().UTC()
		m.roles[r.key] = r
		i, _ := slices.BinarySearchFunc(m.sorted, r.key, byKey)
		m.sorted = slices.Insert(m.sorted, i, r)
		return &iam.CreateRoleOutput{Role: m.view(r, true)}, nil
	})
}

func byKey(r *role, key string) int { return strings.Compare(r.key, key) }

func validPolicyARN(arn string) bool { _, err := awsp.ParsePolicyARN(arn); return err == nil }

// view renders r as GetRole does; full=false is ListRoles, which returns neither tags nor the
// boundary (moto and real IAM agree: ownership has to be read with GetRole).
func (m *IAM) view(r *role, full bool) *types.Role {
	if r.trustEnc == "" {
		r.trustEnc = urlEncode(r.trust)
	}
	created := r.created
	out := &types.Role{
		Arn: aws.String("arn:aws:iam::" + m.account + ":role" + r.path + r.name), RoleName: aws.String(r.name), Path: aws.String(r.path),
		RoleId: aws.String(r.id), CreateDate: &created, AssumeRolePolicyDocument: aws.String(r.trustEnc),
		MaxSessionDuration: aws.Int32(r.maxSession), Description: copyPtr(r.description),
	}
	if !full {
		return out
	}
	if r.boundary != "" {
		out.PermissionsBoundary = &types.AttachedPermissionsBoundary{
			PermissionsBoundaryArn: aws.String(r.boundary), PermissionsBoundaryType: types.PermissionsBoundaryAttachmentTypePolicy,
		}
	}
	if len(r.tags) > 0 {
		out.Tags = mergeTags(nil, r.tags)
	}
	out.RoleLastUsed = &types.RoleLastUsed{}
	return out
}

func copyPtr[T any](p *T) *T {
	if p == nil {
		return nil
	}
	v := *p
	return &v
}

func (m *IAM) GetRole(ctx context.Context, in *iam.GetRoleInput, _ ...func(*iam.Options)) (*iam.GetRoleOutput, error) {
	return onRole(m, ctx, "GetRole", in.RoleName, func(r *role) (*iam.GetRoleOutput, error) {
		return &iam.GetRoleOutput{Role: m.view(r, true)}, nil
	})
}

// ListRoles returns roles in name order; the marker names the next role, so a page boundary
// survives roles deleted between pages. moto returns the trust documents here as plain JSON; real
// IAM URL-encodes them as in GetRole, and so does the model.
func (m *IAM) ListRoles(ctx context.Context, in *iam.ListRolesInput, _ ...func(*iam.Options)) (*iam.ListRolesOutput, error) {
	return call(m, ctx, "ListRoles", func() (*iam.ListRolesOutput, error) {
		n, err := maxItems(in.MaxItems)
		if err != nil {
			return nil, err
		}
		prefix := aws.ToString(in.PathPrefix)
		start, _ := slices.BinarySearchFunc(m.sorted, aws.ToString(in.Marker), byKey)
		out := &iam.ListRolesOutput{Roles: []types.Role{}}
		for _, r := range m.sorted[start:] {
			if !strings.HasPrefix(r.path, prefix) {
				continue
			}
			if len(out.Roles) == n {
				out.IsTruncated, out.Marker = true, aws.String(r.key)
				break
			}
			out.Roles = append(out.Roles, *m.view(r, false))
		}
		return out, nil
	})
}

func maxItems(n *int32) (int, error) {
	if n == nil {
		return defaultListItems, nil
	}
	if *n < 1 || *n > maxListItems {
		return 0, invalid("Value '%d' at 'maxItems' failed to satisfy constraint", *n)
	}
	return int(*n), nil
}

// page pages sorted keys; the marker is the first key of the next page.
func page(keys []string, marker *string, n *int32) (out []string, next *string, err error) {
	size, err := maxItems(n)
	if err != nil {
		return nil, nil, err
	}
	start, _ := slices.BinarySearch(keys, aws.ToString(marker))
	if out = keys[start:]; len(out) > size {
		return out[:size], aws.String(out[size]), nil
	}
	return out, nil, nil
}

func (m *IAM) DeleteRole(ctx context.Context, in *iam.DeleteRoleInput, _ ...func(*iam.Options)) (*iam.DeleteRoleOutput, error) {
	return onRole(m, ctx, "DeleteRole", in.RoleName, func(r *role) (*iam.DeleteRoleOutput, error) {
		if len(r.attached) > 0 {
			return nil, &types.DeleteConflictException{Message: aws.String("Cannot delete entity, must detach all policies first.")}
		}
		if len(r.inline) > 0 {
			return nil, &types.DeleteConflictException{Message: aws.String("Cannot delete entity, must delete policies first.")}
		}
		delete(m.roles, r.key)
		i, _ := slices.BinarySearchFunc(m.sorted, r.key, byKey)
		m.sorted = slices.Delete(m.sorted, i, i+1)
		return &iam.DeleteRoleOutput{}, nil
	})
}

// UpdateRole leaves an omitted field as it is, as real IAM does; moto resets an omitted
// MaxSessionDuration to 3600.
func (m *IAM) UpdateRole(ctx context.Context, in *iam.UpdateRoleInput, _ ...func(*iam.Options)) (*iam.UpdateRoleOutput, error) {
	return onRole(m, ctx, "UpdateRole", in.RoleName, func(r *role) (*iam.UpdateRoleOutput, error) {
		if d := in.MaxSessionDuration; d != nil {
			if err := checkSession(*d); err != nil {
				return nil, err
			}
			r.maxSession = *d
		}
		if in.Description != nil {
			r.description = copyPtr(in.Description)
		}
		return &iam.UpdateRoleOutput{}, nil
	})
}

func (m *IAM) UpdateAssumeRolePolicy(ctx context.Context, in *iam.UpdateAssumeRolePolicyInput, _ ...func(*iam.Options)) (*iam.UpdateAssumeRolePolicyOutput, error) {
	// Measured before the model's lock (checkTrust reads nothing it guards): a placement round
	// writes its roles at once, and validating each document under the lock (6 % of benchtool
	// sim's CPU) kept them from running side by side.
	doc := aws.ToString(in.PolicyDocument)
	object, err := m.checkTrust(doc)
	return call(m, ctx, "UpdateAssumeRolePolicy", func() (*iam.UpdateAssumeRolePolicyOutput, error) {
		r := m.roles[strings.ToLower(aws.ToString(in.RoleName))]
		switch {
		case err != nil:
			return nil, err
		case r == nil:
			return nil, noSuch("The role with name %s cannot be found.", aws.ToString(in.RoleName))
		case !object:
			return nil, malformed("PolicyDocument")
		}
		r.trust, r.trustEnc = doc, ""
		return &iam.UpdateAssumeRolePolicyOutput{}, nil
	})
}

func (m *IAM) ListAttachedRolePolicies(ctx context.Context, in *iam.ListAttachedRolePoliciesInput, _ ...func(*iam.Options)) (*iam.ListAttachedRolePoliciesOutput, error) {
	return onRole(m, ctx, "ListAttachedRolePolicies", in.RoleName, func(r *role) (*iam.ListAttachedRolePoliciesOutput, error) {
		prefix := ":policy" + aws.ToString(in.PathPrefix)
		arns := slices.DeleteFunc(slices.Clone(r.attached), func(a string) bool { return !strings.Contains(a, prefix) })
		keys, next, err := page(arns, in.Marker, in.MaxItems)
		if err != nil {
			return nil, err
		}
		out := &iam.ListAttachedRolePoliciesOutput{AttachedPolicies: []types.AttachedPolicy{}, IsTruncated: next != nil, Marker: next}
		for _, a := range keys {
			out.AttachedPolicies = append(out.AttachedPolicies, types.AttachedPolicy{PolicyArn: aws.String(a), PolicyName: aws.String(a[strings.LastIndexByte(a, '/')+1:])})
		}
		return out, nil
	})
}

// AttachRolePolicy accepts any well-formed policy ARN: managed policies are not modelled, where
// moto and IAM answer NoSuchEntity for one they do not have.
func (m *IAM) AttachRolePolicy(ctx context.Context, in *iam.AttachRolePolicyInput, _ ...func(*iam.Options)) (*iam.AttachRolePolicyOutput, error) {
	return onRole(m, ctx, "AttachRolePolicy", in.RoleName, func(r *role) (*iam.AttachRolePolicyOutput, error) {
		a := aws.ToString(in.PolicyArn)
		i, attached := slices.BinarySearch(r.attached, a)
		switch {
		case !validPolicyARN(a):
			return nil, invalidARN(a)
		case attached: // attaching twice is no error in IAM
		case len(r.attached) >= policiesPerRole:
			return nil, limit("Cannot exceed quota for PoliciesPerRole: %d", policiesPerRole)
		default:
			r.attached = slices.Insert(r.attached, i, a)
		}
		return &iam.AttachRolePolicyOutput{}, nil
	})
}

func (m *IAM) DetachRolePolicy(ctx context.Context, in *iam.DetachRolePolicyInput, _ ...func(*iam.Options)) (*iam.DetachRolePolicyOutput, error) {
	return onRole(m, ctx, "DetachRolePolicy", in.RoleName, func(r *role) (*iam.DetachRolePolicyOutput, error) {
		a := aws.ToString(in.PolicyArn)
		i, ok := slices.BinarySearch(r.attached, a)
		if !ok {
			return nil, noSuch("Policy %s was not found.", a)
		}
		r.attached = slices.Delete(r.attached, i, i+1)
		return &iam.DetachRolePolicyOutput{}, nil
	})
}

func (m *IAM) ListRolePolicies(ctx context.Context, in *iam.ListRolePoliciesInput, _ ...func(*iam.Options)) (*iam.ListRolePoliciesOutput, error) {
	return onRole(m, ctx, "ListRolePolicies", in.RoleName, func(r *role) (*iam.ListRolePoliciesOutput, error) {
		names, next, err := page(slices.Sorted(maps.Keys(r.inline)), in.Marker, in.MaxItems)
		if err != nil {
			return nil, err
		}
		return &iam.ListRolePoliciesOutput{PolicyNames: names, IsTruncated: next != nil, Marker: next}, nil
	})
}

func (m *IAM) GetRolePolicy(ctx context.Context, in *iam.GetRolePolicyInput, _ ...func(*iam.Options)) (*iam.GetRolePolicyOutput, error) {
	return onRole(m, ctx, "GetRolePolicy", in.RoleName, func(r *role) (*iam.GetRolePolicyOutput, error) {
		name := aws.ToString(in.PolicyName)
		doc, ok := r.inline[name]
		if !ok {
			return nil, noSuch("The role policy with name %s cannot be found.", name)
		}
		return &iam.GetRolePolicyOutput{RoleName: aws.String(r.name), PolicyName: aws.String(name), PolicyDocument: aws.String(urlEncode(doc))}, nil
	})
}

func (m *IAM) PutRolePolicy(ctx context.Context, in *iam.PutRolePolicyInput, _ ...func(*iam.Options)) (*iam.PutRolePolicyOutput, error) {
	return onRole(m, ctx, "PutRolePolicy", in.RoleName, func(r *role) (*iam.PutRolePolicyOutput, error) {
		name, doc := aws.ToString(in.PolicyName), aws.ToString(in.PolicyDocument)
		if !policyNameRE.MatchString(name) {
			return nil, invalid("Value '%s' at 'policyName' failed to satisfy constraint", name)
		}
		size, object := m.measure(doc)
		if !object {
			return nil, malformed("PolicyDocument")
		}
		for p, d := range r.inline {
			if p != name {
				n, _ := m.measure(d)
				size += n
			}
		}
		if size > rolePolicySize {
			return nil, limit("Maximum policy size of %d bytes exceeded for role %s", rolePolicySize, r.name)
		}
		r.inline[name] = doc
		return &iam.PutRolePolicyOutput{}, nil
	})
}

func (m *IAM) DeleteRolePolicy(ctx context.Context, in *iam.DeleteRolePolicyInput, _ ...func(*iam.Options)) (*iam.DeleteRolePolicyOutput, error) {
	return onRole(m, ctx, "DeleteRolePolicy", in.RoleName, func(r *role) (*iam.DeleteRolePolicyOutput, error) {
		name := aws.ToString(in.PolicyName)
		if _, ok := r.inline[name]; !ok {
			return nil, noSuch("The role policy with name %s cannot be found.", name)
		}
		delete(r.inline, name)
		return &iam.DeleteRolePolicyOutput{}, nil
	})
}

func (m *IAM) PutRolePermissionsBoundary(ctx context.Context, in *iam.PutRolePermissionsBoundaryInput, _ ...func(*iam.Options)) (*iam.PutRolePermissionsBoundaryOutput, error) {
	return onRole(m, ctx, "PutRolePermissionsBoundary", in.RoleName, func(r *role) (*iam.PutRolePermissionsBoundaryOutput, error) {
		b := aws.ToString(in.PermissionsBoundary)
		if !validPolicyARN(b) {
			return nil, invalidARN(b)
		}
		r.boundary = b
		return &iam.PutRolePermissionsBoundaryOutput{}, nil
	})
}

func (m *IAM) TagRole(ctx context.Context, in *iam.TagRoleInput, _ ...func(*iam.Options)) (*iam.TagRoleOutput, error) {
	return onRole(m, ctx, "TagRole", in.RoleName, func(r *role) (*iam.TagRoleOutput, error) {
		tags := mergeTags(r.tags, in.Tags)
		if len(tags) > tagsPerRole {
			return nil, limit("Cannot exceed quota for TagsPerRole: %d", tagsPerRole)
		}
		r.tags = tags
		return &iam.TagRoleOutput{}, nil
	})
}

func (m *IAM) UntagRole(ctx context.Context, in *iam.UntagRoleInput, _ ...func(*iam.Options)) (*iam.UntagRoleOutput, error) {
	return onRole(m, ctx, "UntagRole", in.RoleName, func(r *role) (*iam.UntagRoleOutput, error) {
		r.tags = slices.DeleteFunc(r.tags, func(t types.Tag) bool { return slices.Contains(in.TagKeys, aws.ToString(t.Key)) })
		return &iam.UntagRoleOutput{}, nil
	})
}

func (m *IAM) GetAccountSummary(ctx context.Context, _ *iam.GetAccountSummaryInput, _ ...func(*iam.Options)) (*iam.GetAccountSummaryOutput, error) {
	return call(m, ctx, "GetAccountSummary", func() (*iam.GetAccountSummaryOutput, error) {
		return &iam.GetAccountSummaryOutput{SummaryMap: map[string]int32{
			string(types.SummaryKeyTypeAssumeRolePolicySizeQuota):    int32(m.quota),
			string(types.SummaryKeyTypeRoles):                        int32(len(m.roles)),
			string(types.SummaryKeyTypeRolesQuota):                   1000,
			string(types.SummaryKeyTypeRolePolicySizeQuota):          rolePolicySize,
			string(types.SummaryKeyTypeAttachedPoliciesPerRoleQuota): policiesPerRole,
		}}, nil
	})
}

// mergeTags returns a fresh copy of have with add applied (same key: new value, in place), so
// nothing the caller holds aliases the model's state.
func mergeTags(have, add []types.Tag) []types.Tag {
	out := make([]types.Tag, 0, len(have)+len(add))
	for _, t := range slices.Concat(have, add) {
		k, v := aws.ToString(t.Key), aws.ToString(t.Value)
		if i := slices.IndexFunc(out, func(x types.Tag) bool { return *x.Key == k }); i >= 0 {
			out[i].Value = aws.String(v)
		} else {
			out = append(out, types.Tag{Key: aws.String(k), Value: aws.String(v)})
		}
	}
	return out
}

// urlEncode encodes a policy document as moto does (Python's urllib.parse.quote: all but letters,
// digits, "_.-~" and "/" percent-encoded), which is how real IAM's responses look too.
func urlEncode(s string) string {
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	b.Grow(len(s) * 2)
	for i := 0; i < len(s); i++ {
		if c := s[i]; 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("_.-~/", c) >= 0 {
			b.WriteByte(c)
		} else {
			b.Write([]byte{'%', hex[c>>4], hex[c&15]})
		}
	}
	return b.String()
}

// RoleSnapshot is one role as the model holds it, or as ReadRoles reads it through the API.
type RoleSnapshot struct {
	Name, Path, ARN, RoleID string
	Trust                   string // the trust policy document, decoded
	Description             string
	MaxSessionDuration      int32
	Boundary                string
	Tags                    map[string]string
	Inline                  map[string]string // policy name -> document, decoded
	Attached                []string          // policy ARNs, sorted; nil for none
}

// RoleTrust is one role's ARN and trust policy document, as sent (not URL-encoded).
type RoleTrust struct{ ARN, Trust string }

// Trusts returns the ARN and trust policy of every role whose path starts with pathPrefix, in
// name order, without counting a call: a caller's own measurements (benchtool sim's sample of the
// roles in use after each burst). ListRoles URL-encoded every document only for the sample to
// decode it again; Roles copies every role's tags and policies.
func (m *IAM) Trusts(pathPrefix string) []RoleTrust {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]RoleTrust, 0, len(m.sorted))
	for _, r := range m.sorted {
		if strings.HasPrefix(r.path, pathPrefix) {
			out = append(out, RoleTrust{ARN: "arn:aws:iam::" + m.account + ":role" + r.path + r.name, Trust: r.trust})
		}
	}
	return out
}

// Roles returns every role of the account in name order, without counting a call.
func (m *IAM) Roles() []RoleSnapshot {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]RoleSnapshot, 0, len(m.sorted))
	for _, r := range m.sorted {
		s := RoleSnapshot{
			Name: r.name, Path: r.path, ARN: *m.view(r, false).Arn, RoleID: r.id, Trust: r.trust,
			Description: aws.ToString(r.description), MaxSessionDuration: r.maxSession, Boundary: r.boundary,
			Tags: map[string]string{}, Inline: maps.Clone(r.inline), Attached: slices.Clip(slices.Clone(r.attached)),
		}
		if len(s.Attached) == 0 {
			s.Attached = nil
		}
		for _, t := range r.tags {
			s.Tags[*t.Key] = *t.Value
		}
		out = append(out, s)
	}
	return out
}
