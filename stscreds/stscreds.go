// Package stscreds is the engine of the `aws-credentials` sidecar: it trades the Pod's projected
// ServiceAccount token for temporary AWS credentials (sts:AssumeRoleWithWebIdentity) and keeps an
// AWS shared-credentials file fresh for consumers that cannot do web identity themselves, such as
// the minio-go inside restic 0.14, which reads static keys from AWS_SHARED_CREDENTIALS_FILE.
//
// The decisions (retry or not, how long to back off, when to refresh, the session name) are pure
// functions; the side effects (reading the token, calling STS, writing the file) are in Run.
package stscreds

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	"github.com/aws/smithy-go"
)

// STSClient is the one STS call Run makes; *sts.Client implements it.
type STSClient interface {
	AssumeRoleWithWebIdentity(ctx context.Context, in *sts.AssumeRoleWithWebIdentityInput, optFns ...func(*sts.Options)) (*sts.AssumeRoleWithWebIdentityOutput, error)
}

// Defaults for the zero values of Config.
const (
	DefaultMaxWait        = 5 * time.Minute
	DefaultInitialBackoff = 500 * time.Millisecond
	DefaultMaxBackoff     = 30 * time.Second
	// DefaultAttemptTimeout bounds one STS call, so a hung connection becomes a retry.
	DefaultAttemptTimeout = 30 * time.Second
	// fallbackRegion is used when the Pod has no region: STS's global endpoint lives there.
	fallbackRegion = "us-east-1"
)

// Config configures Run. RoleARN, TokenFile and CredentialsFile are required.
type Config struct {
	RoleARN   string
	TokenFile string
	// CredentialsFile is written atomically with mode 0600.
	CredentialsFile string
	// SessionName is passed through SessionName; empty yields a random name.
	SessionName string
	// Duration is the requested credentials lifetime; 0 lets STS choose (1 hour). It cannot
	// exceed the role's MaxSessionDuration.
	Duration time.Duration
	// MaxWait bounds the retries of the first fetch, which covers trust-policy propagation
	// (AccessDenied for a few seconds after the webhook added the subject). Later refreshes
	// retry until the credentials in the file expire.
	MaxWait        time.Duration
	InitialBackoff time.Duration
	MaxBackoff     time.Duration
	AttemptTimeout time.Duration
	// Client is the STS client; nil builds one from the environment (region, AWS_ENDPOINT_URL)
	// with anonymous credentials: AssumeRoleWithWebIdentity is an unsigned call.
	Client STSClient
	Log    *slog.Logger

	// refreshIn replaces NextRefresh in tests, so a refresh cycle takes milliseconds.
	refreshIn func(issued, expires time.Time) time.Duration
}

// Credentials are temporary AWS credentials. They format and log without their secrets.
type Credentials struct {
	AccessKeyID     string
	SecretAccessKey string
	SessionToken    string
	Expiration      time.Time
}

// String hides the secrets, so %v in an error or log line cannot leak them.
func (c Credentials) String() string {
	return fmt.Sprintf("Credentials{expires %s}", c.Expiration.Format(time.RFC3339))
}

// GoString hides the secrets from %#v too.
func (c Credentials) GoString() string { return c.String() }

// LogValue keeps the secrets out of slog output.
func (c Credentials) LogValue() slog.Value {
	return slog.GroupValue(slog.Time("expiration", c.Expiration))
}

func (c Config) withDefaults() Config {
	if c.MaxWait <= 0 {
		c.MaxWait = DefaultMaxWait
	}
	if c.InitialBackoff <= 0 {
		c.InitialBackoff = DefaultInitialBackoff
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = DefaultMaxBackoff
	}
	if c.AttemptTimeout <= 0 {
		c.AttemptTimeout = DefaultAttemptTimeout
	}
	if c.Log == nil {
		c.Log = slog.Default()
	}
	if c.refreshIn == nil {
		c.refreshIn = NextRefresh
	}
	c.SessionName = SessionName(c.SessionName)
	return c
}

// Run keeps cfg.CredentialsFile filled with fresh credentials until ctx ends, then returns nil.
// It returns an error when the first fetch does not succeed within MaxWait, when a refresh fails
// until the credentials in the file have expired, or when the file cannot be written: the
// sidecar then exits and the kubelet restarts it, visibly.
func Run(ctx context.Context, cfg Config) error {
	cfg = cfg.withDefaults()
	if cfg.RoleARN == "" || cfg.TokenFile == "" || cfg.CredentialsFile == "" {
		return errors.New("stscreds: RoleARN, TokenFile and CredentialsFile are required")
	}
	if cfg.Client == nil {
		c, err := newClient(ctx, cfg.Log)
		if err != nil {
			return err
		}
		cfg.Client = c
	}
	log := cfg.Log.With("role_arn", cfg.RoleARN, "session_name", cfg.SessionName, "file", cfg.CredentialsFile)
	deadline := time.Now().Add(cfg.MaxWait)
	for {
		creds, err := fetch(ctx, cfg, log, deadline)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return err
		}
		if err := WriteFile(cfg.CredentialsFile, creds); err != nil {
			return err
		}
		issued := time.Now()
		wait := cfg.refreshIn(issued, creds.Expiration)
		log.Info("wrote AWS credentials", "expiration", creds.Expiration, "refresh_in", wait.Round(time.Second))
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		// A refresh may keep trying as long as the credentials in the file still work, but at
		// least MaxWait, so short-lived credentials still get the propagation allowance.
		deadline = creds.Expiration
		if floor := time.Now().Add(cfg.MaxWait); deadline.Before(floor) {
			deadline = floor
		}
	}
}

// fetch calls STS until it succeeds, a non-retryable error occurs, or the next attempt would
// start after deadline.
func fetch(ctx context.Context, cfg Config, log *slog.Logger, deadline time.Time) (Credentials, error) {
	for attempt := 0; ; attempt++ {
		creds, err := assumeOnce(ctx, cfg)
		if err == nil {
			if attempt > 0 {
				log.Info("assumed role after retries", "attempts", attempt+1)
			}
			return creds, nil
		}
		if ctx.Err() != nil {
			return Credentials{}, ctx.Err()
		}
		if !Retryable(err) {
			return Credentials{}, fmt.Errorf("stscreds: assume role %s: %w", cfg.RoleARN, err)
		}
		wait := Backoff(attempt, cfg.InitialBackoff, cfg.MaxBackoff, rand.Float64())
		if time.Now().Add(wait).After(deadline) {
			return Credentials{}, fmt.Errorf("stscreds: assume role %s: giving up after %d attempts: %w", cfg.RoleARN, attempt+1, err)
		}
		log.Warn("assume role failed, retrying", "attempt", attempt+1, "retry_in", wait.Round(time.Millisecond), "error", err)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return Credentials{}, ctx.Err()
		case <-t.C:
		}
	}
}

// assumeOnce reads the token afresh (the kubelet rotates it, and a retry after
// InvalidIdentityToken should see the new one) and makes one STS call.
func assumeOnce(ctx context.Context, cfg Config) (Credentials, error) {
	token, err := os.ReadFile(cfg.TokenFile)
	if err != nil {
		return Credentials{}, fmt.Errorf("read web identity token: %w", err)
	}
	tok := strings.TrimSpace(string(token))
	if tok == "" {
		return Credentials{}, fmt.Errorf("read web identity token %s: file is empty", cfg.TokenFile)
	}
	in := &sts.AssumeRoleWithWebIdentityInput{
		RoleArn:          aws.String(cfg.RoleARN),
		RoleSessionName:  aws.String(cfg.SessionName),
		WebIdentityToken: aws.String(tok),
	}
	if cfg.Duration > 0 {
		in.DurationSeconds = aws.Int32(int32(cfg.Duration / time.Second))
	}
	actx, cancel := context.WithTimeout(ctx, cfg.AttemptTimeout)
	defer cancel()
	// One attempt per call: the SDK's own retryer would hide throttling from our backoff and
	// would not re-read the token between attempts.
	out, err := cfg.Client.AssumeRoleWithWebIdentity(actx, in, func(o *sts.Options) { o.RetryMaxAttempts = 1 })
	if err != nil {
		return Credentials{}, err
	}
	c := out.Credentials
	if c == nil || c.AccessKeyId == nil || c.SecretAccessKey == nil || c.SessionToken == nil || c.Expiration == nil {
		return Credentials{}, errors.New("STS returned incomplete credentials")
	}
	return Credentials{
		AccessKeyID:     *c.AccessKeyId,
		SecretAccessKey: *c.SecretAccessKey,
		SessionToken:    *c.SessionToken,
		Expiration:      *c.Expiration,
	}, nil
}

func newClient(ctx context.Context, log *slog.Logger) (*sts.Client, error) {
	// Anonymous credentials: the call is unsigned, and resolving the default chain here would
	// find AWS_ROLE_ARN plus the token file and try web identity through the SDK itself.
	awsCfg, err := config.LoadDefaultConfig(ctx, config.WithCredentialsProvider(aws.AnonymousCredentials{}))
	if err != nil {
		return nil, fmt.Errorf("stscreds: load AWS config: %w", err)
	}
	if awsCfg.Region == "" {
		log.Info("no AWS region configured, using " + fallbackRegion + " for STS")
		awsCfg.Region = fallbackRegion
	}
	return sts.NewFromConfig(awsCfg), nil
}

// Retryable reports whether an AssumeRoleWithWebIdentity failure may go away by itself.
// AccessDenied is retried: right after the webhook adds a subject to a trust policy, STS refuses
// it until IAM has propagated the change (seconds). InvalidIdentityToken is retried because the
// token is re-read and the kubelet may have rotated an expired one meanwhile. Errors about the
// request itself (validation, malformed policy, disabled region) are not.
func Retryable(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) {
		return false
	}
	var ae smithy.APIError
	if errors.As(err, &ae) {
		switch ae.ErrorCode() {
		case "AccessDenied", "InvalidIdentityToken", "ExpiredTokenException", "IDPCommunicationError",
			"Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequestsException",
			"ServiceUnavailable", "InternalFailure", "InternalError", "RequestTimeout":
			return true
		}
		var re *awshttp.ResponseError
		if errors.As(err, &re) {
			s := re.HTTPStatusCode()
			return s >= 500 || s == 429
		}
		return false
	}
	// No answer from STS at all (connection refused or reset, an attempt's timeout) or the
	// token file not readable yet: transient.
	return true
}

// Backoff is the wait before retry number attempt+1: exponential from base, capped at max, with
// "equal jitter" (half fixed, half random from r in [0,1)) so replicas that failed together do
// not retry together, yet never retry immediately.
func Backoff(attempt int, base, max time.Duration, r float64) time.Duration {
	d := base
	for i := 0; i < attempt && d < max; i++ {
		d *= 2
	}
	if d > max {
		d = max
	}
	return d/2 + time.Duration(float64(d/2)*r)
}

// refreshLead is how long before expiry a refresh happens at the latest.
const refreshLead = 15 * time.Minute

// minRefresh keeps a bogus expiry (in the past, or seconds away) from spinning the loop.
const minRefresh = 5 * time.Second

// NextRefresh is how long after issued to refresh credentials expiring at expires: at half the
// lifetime or 15 minutes before expiry, whichever is earlier, but never before a quarter of the
// lifetime (15-minute credentials would otherwise be refreshed at once, forever).
func NextRefresh(issued, expires time.Time) time.Duration {
	life := expires.Sub(issued)
	d := min(life/2, life-refreshLead)
	d = max(d, life/4, minRefresh)
	return d
}

// Keys of the shared-credentials file, as the AWS SDKs and minio-go read them.
const (
	keyAccessKeyID     = "aws_access_key_id"
	keySecretAccessKey = "aws_secret_access_key"
	keySessionToken    = "aws_session_token"
)

// Format renders c as an AWS shared-credentials file with a [default] profile.
func Format(c Credentials) []byte {
	var sb strings.Builder
	sb.WriteString("# Written by credential-webhook " + Subcommand + "; expires " + c.Expiration.UTC().Format(time.RFC3339) + "\n")
	sb.WriteString("[default]\n")
	sb.WriteString(keyAccessKeyID + " = " + c.AccessKeyID + "\n")
	sb.WriteString(keySecretAccessKey + " = " + c.SecretAccessKey + "\n")
	sb.WriteString(keySessionToken + " = " + c.SessionToken + "\n")
	return []byte(sb.String())
}

// WriteFile replaces path with the credentials file atomically: readers (restic starting up
// mid-refresh) see the old file or the new one, never half of one. The file has mode 0600.
func WriteFile(path string, c Credentials) (err error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return fmt.Errorf("stscreds: write credentials file: %w", err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			_ = os.Remove(tmp)
		}
	}()
	if err = f.Chmod(0o600); err != nil {
		_ = f.Close()
		return fmt.Errorf("stscreds: write credentials file: %w", err)
	}
	if _, err = f.Write(Format(c)); err != nil {
		_ = f.Close()
		return fmt.Errorf("stscreds: write credentials file: %w", err)
	}
	if err = f.Sync(); err != nil {
		_ = f.Close()
		return fmt.Errorf("stscreds: write credentials file: %w", err)
	}
	if err = f.Close(); err != nil {
		return fmt.Errorf("stscreds: write credentials file: %w", err)
	}
	if err = os.Rename(tmp, path); err != nil {
		return fmt.Errorf("stscreds: write credentials file: %w", err)
	}
	return nil
}
