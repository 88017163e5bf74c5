// Package awscheck proves that an IRSA identity works before the sweeper releases a Job: the
// ServiceAccount's role must be a derived role of its seed that lists the ServiceAccount, and
// sts:AssumeRoleWithWebIdentity must accept a real token of that ServiceAccount several times
// in a row. IAM is eventually consistent: a trust policy just written is not seen by every STS
// endpoint at once, and one success can come from an endpoint that already has it while the
// next (the backup's) lands on one that does not. Then, with the credentials STS issued, it
// proves access to every bucket the ServiceAccount names (buckets.go): a role's S3 permissions
// propagate apart from its trust policy.
package awscheck

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	"github.com/aws/smithy-go"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/kube"
)

// DefaultAudience is the STS audience: the token audience IRSA uses unless the ServiceAccount
// says otherwise (annotations.AWSAudience, as the EKS pod-identity webhook honours it), and the
// only one the check ever mints a token for.
const DefaultAudience = "sts.amazonaws.com"

// DefaultTokenTTL is the lifetime of the token minted for a check (TokenRequest's minimum).
const DefaultTokenTTL = 10 * time.Minute

// sessionName names the check's sessions in CloudTrail.
const sessionName = "credential-webhook-readiness-check"

// RoleLister says whether the derived role roleARN lists subject
// ("system:serviceaccount:<ns>:<name>") in its trust policy. The AWS provider implements it
// from its role cache; IAMRoleLister reads IAM directly.
type RoleLister interface {
	Lists(ctx context.Context, roleARN, subject string) (bool, error)
}

// TokenSource mints a ServiceAccount token for audience. KubeTokens uses the TokenRequest API.
type TokenSource interface {
	Token(ctx context.Context, namespace, name, audience string, ttl time.Duration) (string, error)
}

// STSAPI is the part of the STS client the check calls (*sts.Client implements it).
type STSAPI interface {
	AssumeRoleWithWebIdentity(ctx context.Context, in *sts.AssumeRoleWithWebIdentityInput, optFns ...func(*sts.Options)) (*sts.AssumeRoleWithWebIdentityOutput, error)
}

// Checker implements sweeper.Checker for AWS.
type Checker struct {
	Roles  RoleLister
	Tokens TokenSource
	STS    STSAPI
	// ChecksInARow is how many consecutive successful AssumeRoleWithWebIdentity calls prove the
	// identity (at least 1).
	ChecksInARow int
	// TokenTTL is the minted token's lifetime (DefaultTokenTTL when zero). The chart's self
	// policy (selfPolicy.maxTokenExpirationSeconds, 3600 by default) refuses longer ones.
	TokenTTL time.Duration
	// Audience is the one audience tokens are minted for (DefaultAudience when empty): never
	// one the ServiceAccount's owner chose. The chart's self policy (selfPolicy.tokenAudiences)
	// refuses any other.
	Audience string
	// BucketCheck is what is proven on each bucket of annotations.BucketNames with the assumed
	// role's credentials; "" or BucketCheckOff proves nothing. S3 makes the requests.
	BucketCheck   BucketCheck
	S3            S3API
	BucketMetrics *BucketMetrics
}

// New returns a Checker.
func New(roles RoleLister, tokens TokenSource, api STSAPI, checksInARow int) *Checker {
	return &Checker{Roles: roles, Tokens: tokens, STS: api, ChecksInARow: checksInARow, TokenTTL: DefaultTokenTTL, Audience: DefaultAudience}
}

// Check implements sweeper.Checker.
func (c *Checker) Check(ctx context.Context, sa *corev1.ServiceAccount) (bool, string, error) {
	seed, role := sa.Annotations[annotations.SeedRole], sa.Annotations[annotations.AWSRoleARN]
	if role == "" {
		return false, "no " + annotations.AWSRoleARN + " yet", nil
	}
	if !DerivedFrom(seed, role) {
		return false, fmt.Sprintf("role %s is not a derived role of seed %s", role, seed), nil
	}
	audience := c.Audience
	if audience == "" {
		audience = DefaultAudience
	}
	// The audience annotation is the ServiceAccount owner's to write: minting a token for it
	// would hand whoever can edit the ServiceAccount a token of their choosing, signed by the
	// cluster, through this server's credentials. The check mints only the STS audience, so it
	// cannot prove an identity whose Pods will present another one: not ready, and no later
	// check can change that while the annotation stays (the Job is released at --max-hold).
	if want := sa.Annotations[annotations.AWSAudience]; want != "" && want != audience {
		return false, fmt.Sprintf("the ServiceAccount asks for token audience %q (%s); the readiness check mints tokens only for %q and cannot prove this identity: remove the annotation or set it to %q",
			want, annotations.AWSAudience, audience, audience), nil
	}
	subject := "system:serviceaccount:" + sa.Namespace + ":" + sa.Name
	listed, err := c.Roles.Lists(ctx, role, subject)
	if err != nil {
		return false, "", fmt.Errorf("reading the trust policy of %s: %w", role, err)
	}
	if !listed {
		return false, fmt.Sprintf("derived role %s does not list %s", role, subject), nil
	}
	proveBuckets := c.BucketCheck != "" && c.BucketCheck != BucketCheckOff
	var buckets []string
	if proveBuckets {
		// A refused annotation needs no token and no STS call: nothing could prove it.
		var problem string
		if buckets, problem = BucketNames(sa.Annotations[annotations.BucketNames]); problem != "" {
			c.BucketMetrics.inc(c.BucketCheck, BucketInvalid)
			return false, problem, nil
		}
	}
	ttl := c.TokenTTL
	if ttl <= 0 {
		ttl = DefaultTokenTTL
	}
	token, err := c.Tokens.Token(ctx, sa.Namespace, sa.Name, audience, ttl)
	if err != nil {
		return false, "", fmt.Errorf("minting a token for %s/%s: %w", sa.Namespace, sa.Name, err)
	}
	n := max(c.ChecksInARow, 1)
	var last *sts.AssumeRoleWithWebIdentityOutput
	for i := 1; i <= n; i++ {
		out, err := c.STS.AssumeRoleWithWebIdentity(ctx, &sts.AssumeRoleWithWebIdentityInput{
			RoleArn:          aws.String(role),
			RoleSessionName:  aws.String(sessionName),
			WebIdentityToken: aws.String(token),
			// The shortest session STS grants: the credentials serve the bucket proof at most,
			// and are thrown away with the check.
			DurationSeconds: aws.Int32(900),
		})
		if err == nil {
			last = out
			continue
		}
		if code, msg, refused := refusal(err); refused {
			return false, fmt.Sprintf("sts:AssumeRoleWithWebIdentity on %s refused (call %d of %d in a row): %s: %s", role, i, n, code, msg), nil
		}
		return false, "", fmt.Errorf("sts:AssumeRoleWithWebIdentity on %s (call %d of %d): %w", role, i, n, err)
	}
	why := fmt.Sprintf("sts:AssumeRoleWithWebIdentity accepted a token of the ServiceAccount for %s %d times in a row", role, n)
	if len(buckets) == 0 {
		return true, why, nil
	}
	if last == nil || last.Credentials == nil {
		return false, "", fmt.Errorf("sts:AssumeRoleWithWebIdentity on %s returned no credentials", role)
	}
	cr := last.Credentials
	ok, bucketWhy, err := c.proveBuckets(ctx, string(sa.UID), buckets, aws.Credentials{
		AccessKeyID: aws.ToString(cr.AccessKeyId), SecretAccessKey: aws.ToString(cr.SecretAccessKey), SessionToken: aws.ToString(cr.SessionToken),
		Source: sessionName,
	})
	if err != nil || !ok {
		return false, bucketWhy, err
	}
	return true, why + "; " + bucketWhy, nil
}

// refusal reports whether STS answered that it does not (yet) trust the token: the identity is
// not ready. Anything else (throttling, 5xx, network) is a failure of the check itself.
func refusal(err error) (code, message string, refused bool) {
	var ae smithy.APIError
	if !errors.As(err, &ae) {
		return "", "", false
	}
	switch ae.ErrorCode() {
	case "AccessDenied", "InvalidIdentityToken", "IDPRejectedClaim", "ExpiredTokenException", "ExpiredToken":
		return ae.ErrorCode(), ae.ErrorMessage(), true
	}
	return "", "", false
}

// DerivedFrom reports whether role is a derived role of seed: same partition, account and path,
// and the name "<seed name>-<i>" with i in canonical decimal form.
func DerivedFrom(seed, role string) bool {
	seedPrefix, seedName, ok := splitRoleARN(seed)
	if !ok {
		return false
	}
	rolePrefix, roleName, ok := splitRoleARN(role)
	if !ok || rolePrefix != seedPrefix {
		return false
	}
	digits, ok := strings.CutPrefix(roleName, seedName+"-")
	if !ok || digits == "" || len(digits) > 6 || (len(digits) > 1 && digits[0] == '0') {
		return false
	}
	_, err := strconv.ParseUint(digits, 10, 32)
	return err == nil
}

// splitRoleARN splits "arn:<partition>:iam::<account>:role<path><name>" into everything up to
// the last "/" and the name.
func splitRoleARN(arn string) (prefix, name string, ok bool) {
	parts := strings.SplitN(arn, ":", 6)
	if len(parts) != 6 || parts[0] != "arn" || parts[2] != "iam" || !strings.HasPrefix(parts[5], "role/") {
		return "", "", false
	}
	i := strings.LastIndexByte(arn, '/')
	if i < 0 || i == len(arn)-1 {
		return "", "", false
	}
	return arn[:i+1], arn[i+1:], true
}

// KubeTokens mints tokens with the TokenRequest API (serviceaccounts/token create), exactly as
// the kubelet does for a Pod's projected token, so STS sees what the backup will send.
type KubeTokens struct {
	Client kube.Client
}

// Token implements TokenSource.
func (k KubeTokens) Token(ctx context.Context, namespace, name, audience string, ttl time.Duration) (string, error) {
	secs := int64(ttl / time.Second)
	tr, err := k.Client.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, name, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{Audiences: []string{audience}, ExpirationSeconds: &secs},
	}, metav1.CreateOptions{})
	if err != nil {
		return "", err
	}
	return tr.Status.Token, nil
}
