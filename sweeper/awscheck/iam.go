package awscheck

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iam"
	"github.com/aws/smithy-go"

	"go.klusters.dev/credential-webhook/annotations"
)

// GetRoleAPI is the part of the IAM client IAMRoleLister calls (*iam.Client implements it).
type GetRoleAPI interface {
	GetRole(ctx context.Context, in *iam.GetRoleInput, optFns ...func(*iam.Options)) (*iam.GetRoleOutput, error)
}

// IAMRoleLister implements RoleLister with one iam:GetRole: the role must carry our seed tag
// (annotations.SeedTag, so it is a derived role this server manages) and list the subject under
// an ":sub" condition of an Allow statement. A provider with a role cache can answer without
// the call; this is the fallback that needs nothing but IAM.
type IAMRoleLister struct {
	IAM GetRoleAPI
}

// Lists implements RoleLister. A role that does not exist lists nobody.
func (l IAMRoleLister) Lists(ctx context.Context, roleARN, subject string) (bool, error) {
	_, name, ok := splitRoleARN(roleARN)
	if !ok {
		return false, fmt.Errorf("%q is not an IAM role ARN", roleARN)
	}
	out, err := l.IAM.GetRole(ctx, &iam.GetRoleInput{RoleName: aws.String(name)})
	if err != nil {
		var ae smithy.APIError
		if errors.As(err, &ae) && ae.ErrorCode() == "NoSuchEntity" {
			return false, nil
		}
		return false, fmt.Errorf("iam:GetRole %s: %w", name, err)
	}
	if aws.ToString(out.Role.Arn) != roleARN {
		return false, nil // same name under another path: not the role the ServiceAccount names
	}
	tagged := false
	for _, t := range out.Role.Tags {
		if aws.ToString(t.Key) == annotations.SeedTag {
			tagged = true
		}
	}
	if !tagged {
		return false, nil
	}
	// IAM returns policy documents URL-encoded.
	doc, err := url.QueryUnescape(aws.ToString(out.Role.AssumeRolePolicyDocument))
	if err != nil {
		return false, fmt.Errorf("trust policy of %s: %w", name, err)
	}
	subjects, err := TrustedSubjects(doc)
	if err != nil {
		return false, fmt.Errorf("trust policy of %s: %w", name, err)
	}
	for _, s := range subjects {
		if s == subject {
			return true, nil
		}
	}
	return false, nil
}

// TrustedSubjects returns the values of every "<issuer>:sub" condition (StringEquals or
// StringLike) of the Allow statements of a trust policy document.
func TrustedSubjects(doc string) ([]string, error) {
	var p struct {
		Statement json.RawMessage
	}
	if err := json.Unmarshal([]byte(doc), &p); err != nil {
		return nil, err
	}
	type statement struct {
		Effect    string
		Condition map[string]map[string]json.RawMessage
	}
	var stmts []statement
	if len(p.Statement) > 0 && p.Statement[0] == '{' {
		var one statement
		if err := json.Unmarshal(p.Statement, &one); err != nil {
			return nil, err
		}
		stmts = []statement{one}
	} else if len(p.Statement) > 0 {
		if err := json.Unmarshal(p.Statement, &stmts); err != nil {
			return nil, err
		}
	}
	var out []string
	for _, st := range stmts {
		if st.Effect != "Allow" {
			continue
		}
		for op, keys := range st.Condition {
			if op != "StringEquals" && op != "StringLike" {
				continue
			}
			for k, raw := range keys {
				if !strings.HasSuffix(k, ":sub") {
					continue
				}
				vals, err := stringOrList(raw)
				if err != nil {
					return nil, fmt.Errorf("condition %s %s: %w", op, k, err)
				}
				out = append(out, vals...)
			}
		}
	}
	return out, nil
}

// stringOrList decodes an IAM policy value: a string or a list of strings.
func stringOrList(raw json.RawMessage) ([]string, error) {
	var one string
	if err := json.Unmarshal(raw, &one); err == nil {
		return []string{one}, nil
	}
	var many []string
	if err := json.Unmarshal(raw, &many); err != nil {
		return nil, err
	}
	return many, nil
}
