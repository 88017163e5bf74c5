package iammodel_test

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iam"

	"go.klusters.dev/credential-webhook/bench/iammodel"
	awsp "go.klusters.dev/credential-webhook/providers/aws"
)

// readRoles reads every role under pathPrefix through api, in the form (*IAM).Roles reports the
// model's, so moto's state can be compared with the model's, and the model's API with its state.
func readRoles(ctx context.Context, api awsp.IAMAPI, pathPrefix string) ([]iammodel.RoleSnapshot, error) {
	var out []iammodel.RoleSnapshot
	p := iam.NewListRolesPaginator(api, &iam.ListRolesInput{PathPrefix: aws.String(pathPrefix), MaxItems: aws.Int32(1000)})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, err
		}
		for _, r := range page.Roles {
			s, err := readRole(ctx, api, aws.ToString(r.RoleName))
			if err != nil {
				return nil, err
			}
			out = append(out, s)
		}
	}
	slices.SortFunc(out, func(a, b iammodel.RoleSnapshot) int {
		return strings.Compare(strings.ToLower(a.Name), strings.ToLower(b.Name))
	})
	return out, nil
}

func readRole(ctx context.Context, api awsp.IAMAPI, name string) (iammodel.RoleSnapshot, error) {
	got, err := api.GetRole(ctx, &iam.GetRoleInput{RoleName: aws.String(name)})
	if err != nil {
		return iammodel.RoleSnapshot{}, err
	}
	r := got.Role
	s := iammodel.RoleSnapshot{
		Name: name, Path: aws.ToString(r.Path), ARN: aws.ToString(r.Arn), RoleID: aws.ToString(r.RoleId),
		Description: aws.ToString(r.Description), MaxSessionDuration: aws.ToInt32(r.MaxSessionDuration),
		Tags: map[string]string{}, Inline: map[string]string{},
	}
	if s.Trust, err = awsp.DecodePolicyDocument(aws.ToString(r.AssumeRolePolicyDocument)); err != nil {
		return s, fmt.Errorf("trust policy of %s: %w", name, err)
	}
	if r.PermissionsBoundary != nil {
		s.Boundary = aws.ToString(r.PermissionsBoundary.PermissionsBoundaryArn)
	}
	for _, t := range r.Tags {
		s.Tags[aws.ToString(t.Key)] = aws.ToString(t.Value)
	}
	ap := iam.NewListAttachedRolePoliciesPaginator(api, &iam.ListAttachedRolePoliciesInput{RoleName: aws.String(name)})
	for ap.HasMorePages() {
		page, err := ap.NextPage(ctx)
		if err != nil {
			return s, err
		}
		for _, a := range page.AttachedPolicies {
			s.Attached = append(s.Attached, aws.ToString(a.PolicyArn))
		}
	}
	slices.Sort(s.Attached)
	ip := iam.NewListRolePoliciesPaginator(api, &iam.ListRolePoliciesInput{RoleName: aws.String(name)})
	for ip.HasMorePages() {
		page, err := ip.NextPage(ctx)
		if err != nil {
			return s, err
		}
		for _, p := range page.PolicyNames {
			doc, err := api.GetRolePolicy(ctx, &iam.GetRolePolicyInput{RoleName: aws.String(name), PolicyName: aws.String(p)})
			if err != nil {
				return s, err
			}
			if s.Inline[p], err = awsp.DecodePolicyDocument(aws.ToString(doc.PolicyDocument)); err != nil {
				return s, fmt.Errorf("inline policy %s of %s: %w", p, name, err)
			}
		}
	}
	return s, nil
}
