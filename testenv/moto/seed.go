package moto

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iam"
	"github.com/aws/aws-sdk-go-v2/service/iam/types"
)

const (
	// Audience is the token audience IRSA uses and seed roles require.
	Audience = "sts.amazonaws.com"
	// SeedSubject is the subject a KubeStash seed role trusts: the operator's ServiceAccount.
	SeedSubject = "system:serviceaccount:kubestash:kubestash-operator"
	// SeedTagKey and SeedTagValue are the tag CreateSeedRole puts on the role.
	SeedTagKey   = "team"
	SeedTagValue = "backup"
	// SeedMaxSessionDuration is the MaxSessionDuration (seconds) of seed roles.
	SeedMaxSessionDuration = 7200

	// A syntactically valid thumbprint; moto does not contact the issuer.
	dummyThumbprint = "9e99a48a9960b14926bb7f3b02e22da2b0ab7280"
)

// IssuerHost strips the scheme from an OIDC issuer URL: IAM names providers,
// ARNs and condition keys by host and path only
// ("oidc.eks.us-east-1.amazonaws.com/id/ABC").
func IssuerHost(issuer string) string {
	issuer = strings.TrimPrefix(issuer, "https://")
	issuer = strings.TrimPrefix(issuer, "http://")
	return strings.TrimSuffix(issuer, "/")
}

// TrustPolicy returns an IRSA trust policy document: one statement allowing
// sts:AssumeRoleWithWebIdentity to the Federated providerARN, with
// StringEquals {"<issuer>:aud": "sts.amazonaws.com"} and StringLike
// {"<issuer>:sub": subjects}.
func TrustPolicy(providerARN, issuer string, subjects ...string) string {
	host := IssuerHost(issuer)
	doc := map[string]any{
		"Version": "2012-10-17",
		"Statement": []any{map[string]any{
			"Effect":    "Allow",
			"Principal": map[string]any{"Federated": providerARN},
			"Action":    "sts:AssumeRoleWithWebIdentity",
			"Condition": map[string]any{
				"StringEquals": map[string]any{host + ":aud": Audience},
				"StringLike":   map[string]any{host + ":sub": subjects},
			},
		}},
	}
	b, err := json.Marshal(doc)
	if err != nil {
		panic(err) // maps of strings always marshal
	}
	return string(b)
}

// BoundaryDocument is the permissions boundary CreateSeedRole gives seeds: the
// most a derived role can ever do, whatever its policies say (moto stores it,
// it does not evaluate it).
const BoundaryDocument = `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["s3:*"],"Resource":"*"}]}`

// SeedBoundaryARN is the ARN of the permissions boundary policy CreateSeedRole
// created for the seed role seedARN: "<seed name>-boundary" under the seed's
// path, in its account.
func SeedBoundaryARN(seedARN string) string {
	account := accountOf(seedARN)
	partition := "aws"
	if parts := strings.SplitN(seedARN, ":", 6); len(parts) == 6 {
		partition = parts[1]
	}
	_, rest, _ := strings.Cut(seedARN, ":role/")
	return "arn:" + partition + ":iam::" + account + ":policy/" + rest + "-boundary"
}

// CreateSeedRole creates (or reuses) the OIDC provider for issuer and creates
// a role that looks like a real KubeStash IRSA seed: trust policy as in
// TrustPolicy for SeedSubject, an attached managed policy, an inline policy,
// the tag SeedTagKey=SeedTagValue, MaxSessionDuration 7200 and a permissions
// boundary (a managed policy "<name>-boundary" with BoundaryDocument, see
// SeedBoundaryARN): the webhook refuses seeds whose derived roles would get no
// boundary. path "" means "/". It returns the role's ARN.
func CreateSeedRole(ctx context.Context, cfg aws.Config, name, path, issuer string) (string, error) {
	if path == "" {
		path = "/"
	}
	client := iam.NewFromConfig(cfg)
	providerARN, err := ensureOIDCProvider(ctx, client, issuer)
	if err != nil {
		return "", err
	}
	policyARN, err := ensureManagedPolicy(ctx, client, accountOf(providerARN), name+"-s3", path)
	if err != nil {
		return "", err
	}
	boundaryARN, err := ensurePolicy(ctx, client, accountOf(providerARN), name+"-boundary", path, BoundaryDocument)
	if err != nil {
		return "", err
	}
	role, err := client.CreateRole(ctx, &iam.CreateRoleInput{
		RoleName:                 aws.String(name),
		Path:                     aws.String(path),
		AssumeRolePolicyDocument: aws.String(TrustPolicy(providerARN, issuer, SeedSubject)),
		Description:              aws.String("KubeStash seed role (test fixture)"),
		MaxSessionDuration:       aws.Int32(SeedMaxSessionDuration),
		PermissionsBoundary:      aws.String(boundaryARN),
		Tags:                     []types.Tag{{Key: aws.String(SeedTagKey), Value: aws.String(SeedTagValue)}},
	})
	if err != nil {
		return "", fmt.Errorf("create seed role %q: %w", name, err)
	}
	if _, err := client.AttachRolePolicy(ctx, &iam.AttachRolePolicyInput{
		RoleName: aws.String(name), PolicyArn: aws.String(policyARN),
	}); err != nil {
		return "", fmt.Errorf("attach %s to seed role %q: %w", policyARN, name, err)
	}
	if _, err := client.PutRolePolicy(ctx, &iam.PutRolePolicyInput{
		RoleName:       aws.String(name),
		PolicyName:     aws.String(name + "-inline"),
		PolicyDocument: aws.String(`{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:ListAllMyBuckets","Resource":"*"}]}`),
	}); err != nil {
		return "", fmt.Errorf("put inline policy on seed role %q: %w", name, err)
	}
	return aws.ToString(role.Role.Arn), nil
}

// ensureOIDCProvider creates the provider for issuer, or finds it when an
// earlier seed already created it.
func ensureOIDCProvider(ctx context.Context, client *iam.Client, issuer string) (string, error) {
	host := IssuerHost(issuer)
	out, err := client.CreateOpenIDConnectProvider(ctx, &iam.CreateOpenIDConnectProviderInput{
		Url:            aws.String("https://" + host),
		ClientIDList:   []string{Audience},
		ThumbprintList: []string{dummyThumbprint},
	})
	if err == nil {
		return aws.ToString(out.OpenIDConnectProviderArn), nil
	}
	var exists *types.EntityAlreadyExistsException
	if !errors.As(err, &exists) {
		return "", fmt.Errorf("create OIDC provider %q: %w", host, err)
	}
	list, err := client.ListOpenIDConnectProviders(ctx, &iam.ListOpenIDConnectProvidersInput{})
	if err != nil {
		return "", fmt.Errorf("list OIDC providers: %w", err)
	}
	for _, p := range list.OpenIDConnectProviderList {
		if strings.HasSuffix(aws.ToString(p.Arn), ":oidc-provider/"+host) {
			return aws.ToString(p.Arn), nil
		}
	}
	return "", fmt.Errorf("OIDC provider %q exists but is not listed", host)
}

func ensureManagedPolicy(ctx context.Context, client *iam.Client, account, name, path string) (string, error) {
	return ensurePolicy(ctx, client, account, name, path, `{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["s3:GetObject","s3:PutObject","s3:DeleteObject","s3:ListBucket"],"Resource":"*"}]}`)
}

func ensurePolicy(ctx context.Context, client *iam.Client, account, name, path, doc string) (string, error) {
	out, err := client.CreatePolicy(ctx, &iam.CreatePolicyInput{
		PolicyName:     aws.String(name),
		Path:           aws.String(path),
		PolicyDocument: aws.String(doc),
	})
	if err == nil {
		return aws.ToString(out.Policy.Arn), nil
	}
	var exists *types.EntityAlreadyExistsException
	if !errors.As(err, &exists) {
		return "", fmt.Errorf("create managed policy %q: %w", name, err)
	}
	// Policy ARNs are deterministic, so the existing one need not be looked up.
	return "arn:aws:iam::" + account + ":policy" + path + name, nil
}

// accountOf returns the account field of an ARN (arn:aws:iam::ACCOUNT:...).
func accountOf(arn string) string {
	parts := strings.SplitN(arn, ":", 6)
	if len(parts) < 6 {
		return AccountID
	}
	return parts[4]
}
