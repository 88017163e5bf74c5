package iammodel

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iam"
	"github.com/aws/aws-sdk-go-v2/service/iam/types"

	awsp "go.klusters.dev/credential-webhook/providers/aws"
)

// Defaults of SeedSetup: those of testenv/moto's CreateSeedRole, so a seed looks the same
// whichever helper made it.
const (
	DefaultIssuer      = "oidc.eks.us-east-1.amazonaws.com/id/5C5E1A2B3C4D5E6F7A8B9C0D1E2F3A4B"
	DefaultSeedPath    = "/kubestash/"
	DefaultSeedSubject = "system:serviceaccount:kubestash:kubestash-operator"
	DefaultMaxSession  = 7200
	audience           = "sts.amazonaws.com"
	inlineDocument     = `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:ListAllMyBuckets","Resource":"*"}]}`
)

// SeedSetup describes a seed role like the ones the integration tests create in moto: an IRSA
// trust policy, a permissions boundary, tags, attached and inline policies. Zero fields take the
// defaults documented on them.
type SeedSetup struct {
	Name    string
	Path    string // DefaultSeedPath
	Account string // DefaultAccountID
	Issuer  string // DefaultIssuer, as awsp.NormalizeIssuer returns it (no scheme)
	Subject string // DefaultSeedSubject
	// Boundary is the permissions boundary ARN; "" names "<Name>-boundary" under Path. moto only
	// checks the ARN's form, so the policy need not exist.
	Boundary string
	// Managed are attached policy ARNs. moto refuses to attach a policy it does not have, so a
	// test against moto creates them first (iam.Client.CreatePolicy; IAMAPI cannot).
	Managed            []string
	Inline             map[string]string // name -> document; nil: "<Name>-inline" allowing s3:ListAllMyBuckets
	Tags               map[string]string // nil: team=backup
	Description        string            // "KubeStash seed role (test fixture)"
	MaxSessionDuration int32             // DefaultMaxSession
}

func (s SeedSetup) withDefaults() SeedSetup {
	def := func(v *string, d string) {
		if *v == "" {
			*v = d
		}
	}
	def(&s.Path, DefaultSeedPath)
	def(&s.Account, DefaultAccountID)
	def(&s.Issuer, DefaultIssuer)
	def(&s.Subject, DefaultSeedSubject)
	def(&s.Boundary, "arn:aws:iam::"+s.Account+":policy"+s.Path+s.Name+"-boundary")
	def(&s.Description, "KubeStash seed role (test fixture)")
	if s.Inline == nil {
		s.Inline = map[string]string{s.Name + "-inline": inlineDocument}
	}
	if s.Tags == nil {
		s.Tags = map[string]string{"team": "backup"}
	}
	if s.MaxSessionDuration == 0 {
		s.MaxSessionDuration = DefaultMaxSession
	}
	return s
}

// TrustPolicy is an IRSA trust policy: sts:AssumeRoleWithWebIdentity for the account's OIDC
// provider of issuer, with StringEquals on the audience and on "<issuer>:sub" for subjects.
func TrustPolicy(account, issuer string, subjects ...string) string {
	b, err := json.Marshal(map[string]any{
		"Version": "2012-10-17",
		"Statement": []any{map[string]any{
			"Effect":    "Allow",
			"Principal": map[string]any{"Federated": "arn:aws:iam::" + account + ":oidc-provider/" + issuer},
			"Action":    "sts:AssumeRoleWithWebIdentity",
			"Condition": map[string]any{"StringEquals": map[string]any{issuer + ":aud": audience, issuer + ":sub": subjects}},
		}},
	})
	if err != nil {
		panic(err) // maps of strings always marshal
	}
	return string(b)
}

// CreateSeed creates the seed role s describes through api (the model or a real *iam.Client)
// and returns its ARN.
func CreateSeed(ctx context.Context, api awsp.IAMAPI, s SeedSetup) (awsp.RoleARN, error) {
	s = s.withDefaults()
	tags := make([]types.Tag, 0, len(s.Tags))
	for _, k := range slices.Sorted(maps.Keys(s.Tags)) {
		tags = append(tags, types.Tag{Key: aws.String(k), Value: aws.String(s.Tags[k])})
	}
	out, err := api.CreateRole(ctx, &iam.CreateRoleInput{
		RoleName:                 aws.String(s.Name),
		Path:                     aws.String(s.Path),
		AssumeRolePolicyDocument: aws.String(TrustPolicy(s.Account, s.Issuer, s.Subject)),
		Description:              aws.String(s.Description),
		MaxSessionDuration:       aws.Int32(s.MaxSessionDuration),
		PermissionsBoundary:      aws.String(s.Boundary),
		Tags:                     tags,
	})
	if err != nil {
		return awsp.RoleARN{}, fmt.Errorf("create seed role %s: %w", s.Name, err)
	}
	for _, p := range s.Managed {
		if _, err := api.AttachRolePolicy(ctx, &iam.AttachRolePolicyInput{RoleName: aws.String(s.Name), PolicyArn: aws.String(p)}); err != nil {
			return awsp.RoleARN{}, fmt.Errorf("attach %s to seed role %s: %w", p, s.Name, err)
		}
	}
	for _, p := range slices.Sorted(maps.Keys(s.Inline)) {
		in := &iam.PutRolePolicyInput{RoleName: aws.String(s.Name), PolicyName: aws.String(p), PolicyDocument: aws.String(s.Inline[p])}
		if _, err := api.PutRolePolicy(ctx, in); err != nil {
			return awsp.RoleARN{}, fmt.Errorf("put inline policy %s on seed role %s: %w", p, s.Name, err)
		}
	}
	return awsp.ParseRoleARN(aws.ToString(out.Role.Arn))
}
