package aws

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/service/iam"
	"github.com/aws/aws-sdk-go-v2/service/iam/types"
	"github.com/aws/smithy-go"

	"go.klusters.dev/credential-webhook/annotations"
)

// IAMAPI is the part of the IAM client this package uses; *iam.Client implements it. Keeping it
// this small documents (and lets manifests/iam-policy.json grant) exactly what the webhook does.
type IAMAPI interface {
	GetRole(ctx context.Context, in *iam.GetRoleInput, optFns ...func(*iam.Options)) (*iam.GetRoleOutput, error)
	ListRoles(ctx context.Context, in *iam.ListRolesInput, optFns ...func(*iam.Options)) (*iam.ListRolesOutput, error)
	CreateRole(ctx context.Context, in *iam.CreateRoleInput, optFns ...func(*iam.Options)) (*iam.CreateRoleOutput, error)
	DeleteRole(ctx context.Context, in *iam.DeleteRoleInput, optFns ...func(*iam.Options)) (*iam.DeleteRoleOutput, error)
	UpdateRole(ctx context.Context, in *iam.UpdateRoleInput, optFns ...func(*iam.Options)) (*iam.UpdateRoleOutput, error)
	UpdateAssumeRolePolicy(ctx context.Context, in *iam.UpdateAssumeRolePolicyInput, optFns ...func(*iam.Options)) (*iam.UpdateAssumeRolePolicyOutput, error)
	ListAttachedRolePolicies(ctx context.Context, in *iam.ListAttachedRolePoliciesInput, optFns ...func(*iam.Options)) (*iam.ListAttachedRolePoliciesOutput, error)
	AttachRolePolicy(ctx context.Context, in *iam.AttachRolePolicyInput, optFns ...func(*iam.Options)) (*iam.AttachRolePolicyOutput, error)
	DetachRolePolicy(ctx context.Context, in *iam.DetachRolePolicyInput, optFns ...func(*iam.Options)) (*iam.DetachRolePolicyOutput, error)
	ListRolePolicies(ctx context.Context, in *iam.ListRolePoliciesInput, optFns ...func(*iam.Options)) (*iam.ListRolePoliciesOutput, error)
	GetRolePolicy(ctx context.Context, in *iam.GetRolePolicyInput, optFns ...func(*iam.Options)) (*iam.GetRolePolicyOutput, error)
	PutRolePolicy(ctx context.Context, in *iam.PutRolePolicyInput, optFns ...func(*iam.Options)) (*iam.PutRolePolicyOutput, error)
	DeleteRolePolicy(ctx context.Context, in *iam.DeleteRolePolicyInput, optFns ...func(*iam.Options)) (*iam.DeleteRolePolicyOutput, error)
	PutRolePermissionsBoundary(ctx context.Context, in *iam.PutRolePermissionsBoundaryInput, optFns ...func(*iam.Options)) (*iam.PutRolePermissionsBoundaryOutput, error)
	TagRole(ctx context.Context, in *iam.TagRoleInput, optFns ...func(*iam.Options)) (*iam.TagRoleOutput, error)
	UntagRole(ctx context.Context, in *iam.UntagRoleInput, optFns ...func(*iam.Options)) (*iam.UntagRoleOutput, error)
	GetAccountSummary(ctx context.Context, in *iam.GetAccountSummaryInput, optFns ...func(*iam.Options)) (*iam.GetAccountSummaryOutput, error)
}

var _ IAMAPI = (*iam.Client)(nil)

// NewIAMClient builds the IAM client the Assigner expects. Throttling and 5xx are retried by the
// SDK's standard retryer with exponential backoff; the number of attempts is generous because the
// caller's ctx deadline (the admission time budget) is what really bounds the retries: the SDK's
// backoff sleep returns as soon as ctx ends. The client-side retry quota is disabled so a burst of
// throttling during a busy hour does not turn into local "retry quota exceeded" failures.
// IAM's LimitExceeded (quota, HTTP 409) is not a throttling code and is never retried. An attempt
// that hangs is abandoned after DefaultAttemptTimeout and retried (WithAttemptTimeout; a later
// WithAttemptTimeout in optFns adds a tighter bound).
func NewIAMClient(cfg aws.Config, optFns ...func(*iam.Options)) *iam.Client {
	opts := append([]func(*iam.Options){func(o *iam.Options) {
		o.Retryer = retry.NewStandard(func(so *retry.StandardOptions) {
			so.MaxAttempts = 10
			so.MaxBackoff = 5 * time.Second
			so.RateLimiter = ratelimit.None
		})
	}, WithAttemptTimeout(DefaultAttemptTimeout)}, optFns...)
	return iam.NewFromConfig(cfg, opts...)
}

// DefaultQuota is IAM's default ACLSizePerRole, used when neither the configuration nor
// GetAccountSummary gives one.
const DefaultQuota = 2048

func apiErrorCode(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return ""
}

func isNoSuchEntity(err error) bool  { return apiErrorCode(err) == "NoSuchEntity" }
func isAlreadyExists(err error) bool { return apiErrorCode(err) == "EntityAlreadyExists" }

// trustQuotaError reports whether err is IAM refusing a trust policy for its size ("Cannot
// exceed quota for ACLSizePerRole: 2048", HTTP 409), and the quota it names when it names one.
func trustQuotaError(err error) (quota int, ok bool) {
	var ae smithy.APIError
	if !errors.As(err, &ae) || ae.ErrorCode() != "LimitExceeded" || !strings.Contains(ae.ErrorMessage(), "ACLSizePerRole") {
		return 0, false
	}
	_, tail, _ := strings.Cut(ae.ErrorMessage(), "ACLSizePerRole")
	tail = strings.TrimLeft(tail, ": ")
	end := 0
	for end < len(tail) && tail[end] >= '0' && tail[end] <= '9' {
		end++
	}
	if n, err := strconv.Atoi(tail[:end]); err == nil && n > 0 {
		return n, true
	}
	return 0, true
}

// isDefinite reports whether a failed call certainly did not change anything: IAM answered with an
// error. Anything else (timeout, cancelled ctx, connection reset) may have been applied.
func isDefinite(err error) bool {
	var ambiguous *ambiguousError
	return apiErrorCode(err) != "" && !errors.As(err, &ambiguous)
}

// roleSpec is what a derived role copies from its seed, or what a derived role currently has.
type roleSpec struct {
	arn         RoleARN
	id          string
	trust       TrustPolicy
	description string
	maxSession  int32 // 0: IAM default
	boundary    string
	tags        map[string]string
	attached    []string          // managed policy ARNs, sorted
	inline      map[string]string // name -> canonical document; "" until read
}

// copiedTags are the seed tags a derived role carries: all but AWS-reserved ones and our own seed
// tag (which readSeed never lets through on a seed anyway: a seed carrying it is a derived role).
// The IAM policy limits the keys (aws:TagKeys) to the seed tag and the chart's
// aws.iamPolicy.copiedTagKeys.
func copiedTags(seed *roleSpec) map[string]string {
	out := make(map[string]string, len(seed.tags)+1)
	for k, v := range seed.tags {
		if !strings.HasPrefix(strings.ToLower(k), "aws:") && k != annotations.SeedTag {
			out[k] = v
		}
	}
	out[annotations.SeedTag] = seed.arn.String()
	return out
}

func tagList(m map[string]string) []types.Tag {
	out := make([]types.Tag, 0, len(m))
	for _, k := range slices.Sorted(maps.Keys(m)) {
		out = append(out, types.Tag{Key: aws.String(k), Value: aws.String(m[k])})
	}
	return out
}

// specFromRole fills the fields GetRole returns; provider pins the trust policy's subject
// statements (ParseTrustPolicyFor; "" for none).
func specFromRole(r *types.Role, provider string) (*roleSpec, error) {
	arn, err := ParseRoleARN(aws.ToString(r.Arn))
	if err != nil {
		return nil, err
	}
	trust, err := ParseTrustPolicyFor(aws.ToString(r.AssumeRolePolicyDocument), provider)
	if err != nil {
		return nil, fmt.Errorf("trust policy of %s: %w", arn, err)
	}
	s := &roleSpec{
		arn:         arn,
		id:          aws.ToString(r.RoleId),
		trust:       trust,
		description: aws.ToString(r.Description),
		maxSession:  aws.ToInt32(r.MaxSessionDuration),
		tags:        map[string]string{},
	}
	if r.PermissionsBoundary != nil {
		s.boundary = aws.ToString(r.PermissionsBoundary.PermissionsBoundaryArn)
	}
	for _, t := range r.Tags {
		s.tags[aws.ToString(t.Key)] = aws.ToString(t.Value)
	}
	return s, nil
}

// readRole reads a role's GetRole fields and the names of its attached and inline policies
// (inline documents only when withDocs), its trust policy unpinned.
func readRole(ctx context.Context, api IAMAPI, name string, withDocs bool) (*roleSpec, error) {
	return readRoleFor(ctx, api, name, "", withDocs)
}

// readRoleFor is readRole with the trust policy pinned to provider (specFromRole).
func readRoleFor(ctx context.Context, api IAMAPI, name, provider string, withDocs bool) (*roleSpec, error) {
	out, err := api.GetRole(ctx, &iam.GetRoleInput{RoleName: aws.String(name)})
	if err != nil {
		return nil, fmt.Errorf("iam:GetRole %s: %w", name, err)
	}
	spec, err := specFromRole(out.Role, provider)
	if err != nil {
		return nil, err
	}
	if err := readPolicies(ctx, api, spec, withDocs); err != nil {
		return nil, err
	}
	return spec, nil
}

func readPolicies(ctx context.Context, api IAMAPI, spec *roleSpec, withDocs bool) error {
	name := spec.arn.Name
	spec.attached = nil
	ap := iam.NewListAttachedRolePoliciesPaginator(api, &iam.ListAttachedRolePoliciesInput{RoleName: aws.String(name)})
	for ap.HasMorePages() {
		page, err := ap.NextPage(ctx)
		if err != nil {
			return fmt.Errorf("iam:ListAttachedRolePolicies %s: %w", name, err)
		}
		for _, p := range page.AttachedPolicies {
			spec.attached = append(spec.attached, aws.ToString(p.PolicyArn))
		}
	}
	slices.Sort(spec.attached)
	spec.inline = map[string]string{}
	ip := iam.NewListRolePoliciesPaginator(api, &iam.ListRolePoliciesInput{RoleName: aws.String(name)})
	for ip.HasMorePages() {
		page, err := ip.NextPage(ctx)
		if err != nil {
			return fmt.Errorf("iam:ListRolePolicies %s: %w", name, err)
		}
		for _, p := range page.PolicyNames {
			spec.inline[p] = ""
		}
	}
	if withDocs {
		for p := range spec.inline {
			doc, err := readInline(ctx, api, name, p)
			if err != nil {
				return err
			}
			spec.inline[p] = doc
		}
	}
	return nil
}

func readInline(ctx context.Context, api IAMAPI, role, policy string) (string, error) {
	out, err := api.GetRolePolicy(ctx, &iam.GetRolePolicyInput{RoleName: aws.String(role), PolicyName: aws.String(policy)})
	if err != nil {
		return "", fmt.Errorf("iam:GetRolePolicy %s %s: %w", role, policy, err)
	}
	doc, err := CanonicalJSON(aws.ToString(out.PolicyDocument))
	if err != nil {
		return "", fmt.Errorf("inline policy %s of %s: %w", policy, role, err)
	}
	return doc, nil
}

// inlineDoc returns the seed's inline policy document, reading it on first use.
func (s *roleSpec) inlineDoc(ctx context.Context, api IAMAPI, policy string) (string, error) {
	if doc := s.inline[policy]; doc != "" {
		return doc, nil
	}
	doc, err := readInline(ctx, api, s.arn.Name, policy)
	if err != nil {
		return "", err
	}
	s.inline[policy] = doc
	return doc, nil
}

// listedRole is one derived role as ListRoles shows it.
type listedRole struct {
	index int
	arn   RoleARN
	id    string
	doc   string // URL-encoded trust policy; real IAM includes it in ListRoles
}

// listDerived finds the derived roles of seed with ListRoles (PathPrefix = the seed's path,
// 1,000 per page): one call for most accounts, instead of one GetRole per candidate name.
// ListRoles does not return tags, so ownership is checked later, only for roles we write to.
func listDerived(ctx context.Context, api IAMAPI, seed RoleARN) ([]listedRole, error) {
	var out []listedRole
	p := iam.NewListRolesPaginator(api, &iam.ListRolesInput{PathPrefix: aws.String(seed.Path), MaxItems: aws.Int32(1000)})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("iam:ListRoles %s: %w", seed.Path, err)
		}
		for _, r := range page.Roles {
			arn, err := ParseRoleARN(aws.ToString(r.Arn))
			if err != nil {
				continue
			}
			i, ok := DerivedIndex(arn, seed) // a deeper path shares the prefix, and is not ours
			if !ok {
				continue
			}
			out = append(out, listedRole{index: i, arn: arn, id: aws.ToString(r.RoleId), doc: aws.ToString(r.AssumeRolePolicyDocument)})
		}
	}
	slices.SortFunc(out, func(a, b listedRole) int { return a.index - b.index })
	return out, nil
}

// writer performs IAM writes; before the first one it calls before (the generation bump).
type writer struct {
	api    IAMAPI
	before func(context.Context) error
	writes int
}

func (w *writer) do(ctx context.Context, what string, call func() error) error {
	if err := w.before(ctx); err != nil {
		return err
	}
	w.writes++
	if err := call(); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// syncPolicies makes target's permissions match seed's. With full=false it only adds what is
// missing (completing a half-created role: fewer permissions than the seed, never more). With
// full=true it also removes extras and fixes changed documents, description, session length and
// tags: the drift repair of SyncFromSeed. target must have been read with readRole (with inline
// documents when full).
func syncPolicies(ctx context.Context, w *writer, seed, target *roleSpec, full bool) error {
	name := aws.String(target.arn.Name)
	// The boundary first: the IAM policy lets PutRolePolicy and AttachRolePolicy touch only roles
	// that already carry it. seed.boundary is never empty (readSeed refuses such a seed); nothing
	// ever removes a boundary.
	if seed.boundary != "" && target.boundary != seed.boundary {
		if err := w.do(ctx, "iam:PutRolePermissionsBoundary "+target.arn.Name, func() error {
			_, err := w.api.PutRolePermissionsBoundary(ctx, &iam.PutRolePermissionsBoundaryInput{RoleName: name, PermissionsBoundary: aws.String(seed.boundary)})
			return err
		}); err != nil {
			return err
		}
	}
	for _, p := range seed.attached {
		if _, ok := slices.BinarySearch(target.attached, p); ok {
			continue
		}
		if err := w.do(ctx, "iam:AttachRolePolicy "+target.arn.Name+" "+p, func() error {
			_, err := w.api.AttachRolePolicy(ctx, &iam.AttachRolePolicyInput{RoleName: name, PolicyArn: aws.String(p)})
			return err
		}); err != nil {
			return err
		}
	}
	for _, p := range slices.Sorted(maps.Keys(seed.inline)) {
		have, ok := target.inline[p]
		if ok && !full {
			continue
		}
		want, err := seed.inlineDoc(ctx, w.api, p)
		if err != nil {
			return err
		}
		if ok && have == want {
			continue
		}
		if err := w.do(ctx, "iam:PutRolePolicy "+target.arn.Name+" "+p, func() error {
			_, err := w.api.PutRolePolicy(ctx, &iam.PutRolePolicyInput{RoleName: name, PolicyName: aws.String(p), PolicyDocument: aws.String(want)})
			return err
		}); err != nil {
			return err
		}
	}
	if !full {
		return nil
	}
	for _, p := range target.attached {
		if _, ok := slices.BinarySearch(seed.attached, p); ok {
			continue
		}
		if err := w.do(ctx, "iam:DetachRolePolicy "+target.arn.Name+" "+p, func() error {
			_, err := w.api.DetachRolePolicy(ctx, &iam.DetachRolePolicyInput{RoleName: name, PolicyArn: aws.String(p)})
			return err
		}); err != nil {
			return err
		}
	}
	for _, p := range slices.Sorted(maps.Keys(target.inline)) {
		if _, ok := seed.inline[p]; ok {
			continue
		}
		if err := w.do(ctx, "iam:DeleteRolePolicy "+target.arn.Name+" "+p, func() error {
			_, err := w.api.DeleteRolePolicy(ctx, &iam.DeleteRolePolicyInput{RoleName: name, PolicyName: aws.String(p)})
			return err
		}); err != nil {
			return err
		}
	}
	if seed.description != target.description || (seed.maxSession != 0 && seed.maxSession != target.maxSession) {
		in := &iam.UpdateRoleInput{RoleName: name, Description: aws.String(seed.description)}
		if seed.maxSession != 0 {
			in.MaxSessionDuration = aws.Int32(seed.maxSession)
		}
		if err := w.do(ctx, "iam:UpdateRole "+target.arn.Name, func() error {
			_, err := w.api.UpdateRole(ctx, in)
			return err
		}); err != nil {
			return err
		}
	}
	want := copiedTags(seed)
	var set []types.Tag
	var unset []string
	for k, v := range want {
		if have, ok := target.tags[k]; !ok || have != v {
			set = append(set, types.Tag{Key: aws.String(k), Value: aws.String(v)})
		}
	}
	for k := range target.tags {
		if _, ok := want[k]; !ok && !strings.HasPrefix(strings.ToLower(k), "aws:") {
			unset = append(unset, k)
		}
	}
	if len(set) > 0 {
		// Always restate the seed tag: the IAM policy allows TagRole only with it (see doc.go).
		if _, ok := target.tags[annotations.SeedTag]; ok && target.tags[annotations.SeedTag] == want[annotations.SeedTag] {
			set = append(set, types.Tag{Key: aws.String(annotations.SeedTag), Value: aws.String(want[annotations.SeedTag])})
		}
		slices.SortFunc(set, func(a, b types.Tag) int { return strings.Compare(*a.Key, *b.Key) })
		if err := w.do(ctx, "iam:TagRole "+target.arn.Name, func() error {
			_, err := w.api.TagRole(ctx, &iam.TagRoleInput{RoleName: name, Tags: set})
			return err
		}); err != nil {
			return err
		}
	}
	if len(unset) > 0 {
		slices.Sort(unset)
		if err := w.do(ctx, "iam:UntagRole "+target.arn.Name, func() error {
			_, err := w.api.UntagRole(ctx, &iam.UntagRoleInput{RoleName: name, TagKeys: unset})
			return err
		}); err != nil {
			return err
		}
	}
	return nil
}
