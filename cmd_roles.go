package main

import (
	"context"
	"errors"
	"io"

	"github.com/aws/aws-sdk-go-v2/config"

	awsp "go.klusters.dev/credential-webhook/providers/aws"
)

func runRoles(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("roles", "Print the derived IAM roles of a seed role: index, ARN, subjects, characters used of the\ntrust-policy quota, fill, and totals. Read-only. Uses the AWS SDK's standard configuration\n(AWS_REGION, AWS_ENDPOINT_URL, the default credential chain).", stderr)
	seed := fs.String("seed", "", "seed role ARN (required)")
	quota := fs.Int("aws-trust-policy-quota", 0, "trust policy size quota; 0 reads it from iam:GetAccountSummary")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *seed == "" {
		return errors.New("--seed is required")
	}
	arn, err := awsp.ParseRoleARN(*seed)
	if err != nil {
		return err
	}
	seeds, err := awsp.ParseAllowlist(arn.String())
	if err != nil {
		return err
	}
	cfg, err := config.LoadDefaultConfig(ctx)
	if err != nil {
		return err
	}
	a := awsp.NewAssigner(awsp.NewIAMClient(cfg), awsp.NewLocalLocker(), awsp.Config{Seeds: seeds, Quota: *quota}, nil)
	roles, err := a.Roles(ctx, arn)
	if err != nil {
		return err
	}
	awsp.WriteRolesTable(stdout, roles)
	return nil
}
