package aws

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
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
			so.Backoff = jitterBackoff{base: retryBase, max: 5 * time.Second}
			so.RateLimiter = ratelimit.None
		})
	}, WithAttemptTimeout(DefaultAttemptTimeout)}, optFns...)
	return iam.NewFromConfig(cfg, opts...)
}

// retryBase is the first backoff of a retried IAM call: the n-th retry waits a random time below
// retryBase * 2^n (full jitter), at most 5 s. The SDK's own backoff starts at a second (a first
// retry waits up to 2 s, 1 s on average), and a lock session waits for its slowest call: with
// one call in ten throttled, that second was most of what a burst of new ServiceAccounts waited
// for. The server's own rate is a few calls a second (one write per role a session touches), so
// a shorter first wait adds little load on IAM; a throttling that lasts still gets seconds
// between attempts after a few retries (0.2, 0.4, 0.8, 1.6, 3.2, then 5 s).
const retryBase = 100 * time.Millisecond

// jitterBackoff is exponential backoff with full jitter from base, capped at max.
type jitterBackoff struct{ base, max time.Duration }

// BackoffDelay implements retry.BackoffDelayer.
func (b jitterBackoff) BackoffDelay(attempt int, _ error) (time.Duration, error) {
	d := b.max
	if attempt < 30 {
		d = min(b.max, b.base<<attempt)
	}
	if d <= 0 {
		return 0, nil
	}
	return time.Duration(rand.Int64N(int64(d))), nil
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
	return specFromRoleKnown(r, provider, TrustPolicy{})
}

// specFromRoleKnown is specFromRole that takes known, a policy parsed or derived for the same
// provider, as the role's trust policy when the role's document is the one known renders
// (parseTrustKnown).
func specFromRoleKnown(r *types.Role, provider string, known TrustPolicy) (*roleSpec, error) {
	arn, err := ParseRoleARN(aws.ToString(r.Arn))
	if err != nil {
		return nil, err
	}
	trust, err := parseTrustKnown(aws.ToString(r.AssumeRolePolicyDocument), provider, known)
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
	return readRoleKnown(ctx, api, name, provider, withDocs, TrustPolicy{})
}

// readRoleKnown is readRoleFor with specFromRoleKnown's known trust policy.
func readRoleKnown(ctx context.Context, api IAMAPI, name, provider string, withDocs bool, known TrustPolicy) (*roleSpec, error) {
	out, err := api.GetRole(ctx, &iam.GetRoleInput{RoleName: aws.String(name)})
	if err != nil {
		return nil, fmt.Errorf("iam:GetRole %s: %w", name, err)
	}
	spec, err := specFromRoleKnown(out.Role, provider, known)
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

// readInlineDocs reads the documents of the named inline policies into s.inline (the seed is
// read without them; policyDiff names the ones it needs with inlineDocsNeeded).
func (s *roleSpec) readInlineDocs(ctx context.Context, api IAMAPI, names []string) error {
	for _, p := range names {
		doc, err := readInline(ctx, api, s.arn.Name, p)
		if err != nil {
			return err
		}
		s.inline[p] = doc
	}
	return nil
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
