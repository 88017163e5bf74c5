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
	// MissingServiceAccount: MissingAdmit (the zero value) or MissingDeny.
	MissingServiceAccount MissingPolicy `json:"missingServiceAccount,omitempty"`
	// SidecarImage is this binary's image, run as the aws-credentials sidecar. Empty disables
	// the sidecar (a Pod asking for it is admitted with a warning).
	SidecarImage string `json:"sidecarImage,omitempty"`
	// SidecarBinary is the binary's path inside SidecarImage; empty means DefaultSidecarBinary.
	// The startup probe execs it, and exec probes bypass the image's entrypoint.
	SidecarBinary string `json:"sidecarBinary,omitempty"`
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

func (c Config) sidecarBinary() string {
	if c.SidecarBinary == "" {
		return DefaultSidecarBinary
	}
	return c.SidecarBinary
}
