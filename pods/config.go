// Package pods injects IRSA (IAM roles for service accounts) into Pods on clusters that lack the
// EKS pod-identity webhook: the env vars the AWS SDKs read and a projected ServiceAccount token
// volume, exactly as that webhook would, and optionally the aws-credentials sidecar for restic.
//
// Decisions are small pure functions over the decoded Pod and ServiceAccount; Inject turns them
// into JSON patch operations addressed into the raw Pod (append by index, never rewriting an
// array), so fields our k8s.io/api does not know survive untouched. Everything already present
// wins: running Inject on its own output yields no operation, which also makes a second call
// (reinvocationPolicy: IfNeeded, or the EKS webhook having run first) harmless.
package pods

import (
	"fmt"
	"math/rand/v2"
	"path"
	"strconv"
	"strings"
	"time"
)

// MissingPolicy says what to do with a Pod whose ServiceAccount cannot be read.
type MissingPolicy string

const (
	// MissingAdmit admits the Pod unchanged, with a warning.
	MissingAdmit MissingPolicy = "admit"
	// MissingDeny refuses it; the Job controller and ReplicaSets retry Pod creation with backoff,
	// by which time the ServiceAccount (created just before the Job) is visible.
	MissingDeny MissingPolicy = "deny"
)

// Names and paths of the EKS pod-identity webhook; AWS SDKs and existing Pods depend on them.
const (
	TokenVolumeName = "aws-iam-token"
	// TokenMountPath is where the projected token lives in Linux containers.
	TokenMountPath = "/var/run/secrets/eks.amazonaws.com/serviceaccount"
	// WindowsTokenMountPath is its Windows twin.
	WindowsTokenMountPath = `C:\var\run\secrets\eks.amazonaws.com\serviceaccount`
	TokenFileName         = "token"
	DefaultAudience       = "sts.amazonaws.com"
	// DefaultTokenExpiration is 24 hours, the EKS webhook's default.
	DefaultTokenExpiration int64 = 86400
	// MinTokenExpiration is the kube-apiserver's minimum for a projected token (10 minutes).
	MinTokenExpiration int64 = 600
	// maxTokenExpiration is the API's upper bound for expirationSeconds (2^32 s); larger values
	// would make the Pod invalid, so they count as invalid annotations.
	maxTokenExpiration int64 = 1 << 32
)

// The restic sidecar's names. Ours, but not annotations, so not under annotations.Prefix.
const (
	SidecarName           = "aws-credentials"
	CredentialsVolumeName = "aws-credentials"
	CredentialsMountPath  = "/var/run/secrets/klusters.dev/aws-credentials"
	CredentialsFile       = CredentialsMountPath + "/credentials"
	// DefaultSidecarBinary is where the Dockerfile puts this binary.
	DefaultSidecarBinary = "/credential-webhook"
)

// Env var names set on containers.
const (
	EnvRoleARN           = "AWS_ROLE_ARN"
	EnvTokenFile         = "AWS_WEB_IDENTITY_TOKEN_FILE"
	EnvRegion            = "AWS_REGION"
	EnvDefaultRegion     = "AWS_DEFAULT_REGION"
	EnvRegionalEndpoints = "AWS_STS_REGIONAL_ENDPOINTS"
	EnvCredentialsFile   = "AWS_SHARED_CREDENTIALS_FILE"
)

// Config is the Pod plugin's configuration (flags in main). The json tags let test fixtures
// carry a config.yaml.
type Config struct {
	// Region fills AWS_REGION and AWS_DEFAULT_REGION when set.
	Region string `json:"region,omitempty"`
	// RegionalSTS sets AWS_STS_REGIONAL_ENDPOINTS=regional; a ServiceAccount's
	// eks.amazonaws.com/sts-regional-endpoints ("true"/"false") overrides it, as with EKS.
	RegionalSTS bool `json:"regionalSTS,omitempty"`
	// DefaultTokenExpiration in seconds; 0 means DefaultTokenExpiration. Clamped to at least
	// MinTokenExpiration.
	DefaultTokenExpiration int64 `json:"defaultTokenExpiration,omitempty"`
	// MissingServiceAccount: MissingAdmit (the zero value) or MissingDeny. It also applies to a
	// Pod whose ServiceAccount's role is still only planned after GrantWait.
	MissingServiceAccount MissingPolicy `json:"missingServiceAccount,omitempty"`
	// GrantWait bounds how long a Pod's review waits for its ServiceAccount, created moments
	// before, to be put in its IAM role (the role ARN is only planned until then); 0 means
	// DefaultGrantWait, negative does not wait (the flag's 0). Half of the review's remaining
	// budget at most: with the chart's 5 s webhook timeout, about 2 s.
	GrantWait time.Duration `json:"grantWait,omitempty"`
	// SidecarImage is this binary's image, run as the aws-credentials sidecar. Empty disables
	// the sidecar (a Pod asking for it is admitted with a warning).
	SidecarImage string `json:"sidecarImage,omitempty"`
	// SidecarBinary is the binary's path inside SidecarImage; empty means DefaultSidecarBinary.
	// The startup probe execs it, and exec probes bypass the image's entrypoint.
	SidecarBinary string `json:"sidecarBinary,omitempty"`
	// Audience of the projected token when the ServiceAccount has no eks.amazonaws.com/audience;
	// empty means DefaultAudience (the EKS webhook's --token-audience).
	Audience string `json:"audience,omitempty"`
	// MountPath is the token directory in Linux containers; empty means TokenMountPath (the EKS
	// webhook's --token-mount-path). Windows containers get it under C:\ with backslashes.
	MountPath string `json:"mountPath,omitempty"`
	// ExpirationJitter is the largest fraction of the default token lifetime taken off at random
	// per Pod, so the tokens (and STS calls) of Pods created together do not all come due at
	// once. Never applied to a lifetime a ServiceAccount or Pod annotation sets: that one was
	// asked for. 0 disables it; values are clamped to [0, MaxExpirationJitter].
	ExpirationJitter float64 `json:"expirationJitter,omitempty"`
	// Rand returns a uniform random integer in [0, n) for the jitter; nil means math/rand/v2.
	// Tests inject a fixed one.
	Rand func(n int64) int64 `json:"-"`
}

// MaxExpirationJitter bounds ExpirationJitter: at most half the lifetime is taken off, so a
// token still lives long enough for the kubelet's refresh at 80 % of it to matter.
const MaxExpirationJitter = 0.5

// DefaultExpirationJitter is the flag's default: 10 %, 2.4 hours of a 24-hour token.
const DefaultExpirationJitter = 0.1

// DefaultGrantWait is Config.GrantWait's default: the writer grants within about a second, in a
// burst of a thousand ServiceAccounts too (make bench).
const DefaultGrantWait = 3 * time.Second

func (c Config) grantWait() time.Duration {
	if c.GrantWait == 0 {
		return DefaultGrantWait
	}
	return c.GrantWait
}

func (c Config) defaultExpiration() int64 {
	switch {
	case c.DefaultTokenExpiration <= 0:
		return DefaultTokenExpiration
	case c.DefaultTokenExpiration < MinTokenExpiration:
		return MinTokenExpiration
	case c.DefaultTokenExpiration > maxTokenExpiration:
		return maxTokenExpiration
	}
	return c.DefaultTokenExpiration
}

func (c Config) audience() string {
	if a := strings.TrimSpace(c.Audience); a != "" {
		return a
	}
	return DefaultAudience
}

func (c Config) mountPath() string {
	if c.MountPath == "" {
		return TokenMountPath
	}
	return c.MountPath
}

// windowsMountPath is the Windows twin of the Linux token directory, as the kubelet on Windows
// maps a Linux-style mount path: C: and backslashes.
func (c Config) windowsMountPath() string {
	if c.MountPath == "" {
		return WindowsTokenMountPath
	}
	return `C:` + strings.ReplaceAll(c.MountPath, "/", `\`)
}

func (c Config) jitter() float64 {
	// NaN compares false both ways: it ends up 0.
	if !(c.ExpirationJitter > 0) {
		return 0
	}
	return min(c.ExpirationJitter, MaxExpirationJitter)
}

func (c Config) randN(n int64) int64 {
	if c.Rand != nil {
		return c.Rand(n)
	}
	return rand.Int64N(n)
}

func (c Config) sidecarBinary() string {
	if c.SidecarBinary == "" {
		return DefaultSidecarBinary
	}
	return c.SidecarBinary
}

// ParseMountPath checks a --aws-token-mount-path value: an absolute, clean Linux path, since it
// becomes a volume mount path and, joined with "token", AWS_WEB_IDENTITY_TOKEN_FILE.
func ParseMountPath(v string) (string, error) {
	switch {
	case v == "":
		return "", nil
	case !path.IsAbs(v) || strings.ContainsAny(v, `\:`):
		return "", fmt.Errorf("%q is not an absolute Linux path", v)
	case path.Clean(v) != v || v == "/":
		return "", fmt.Errorf("%q: want a clean directory path such as %s", v, TokenMountPath)
	}
	return v, nil
}

// ParseAudience checks a --aws-token-audience value: one audience, as the projected token takes.
func ParseAudience(v string) (string, error) {
	v = strings.TrimSpace(v)
	if strings.ContainsAny(v, ", \t\n") {
		return "", fmt.Errorf("%q: want a single audience such as %s", v, DefaultAudience)
	}
	return v, nil
}

// ParseJitter checks a --aws-token-expiration-jitter value: a fraction in [0, MaxExpirationJitter].
func ParseJitter(v string) (float64, error) {
	f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
	if err != nil || !(f >= 0 && f <= MaxExpirationJitter) {
		return 0, fmt.Errorf("%q: want a fraction from 0 to %g", v, MaxExpirationJitter)
	}
	return f, nil
}
