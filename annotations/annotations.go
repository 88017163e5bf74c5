// Package annotations holds the names of the annotations and labels that form this server's
// contract with other software. The external names are fixed by the software that reads or writes
// them (KubeStash, the EKS pod-identity webhook, Azure workload identity, AKS identity binding);
// only the names under Prefix are ours.
package annotations

// Inputs written by the KubeStash operator.
const (
	// SeedRole holds the full ARN of the seed role (the name says "name", the value is an ARN).
	SeedRole    = "go.klusters.dev/seed-role-name"
	BucketNames = "go.klusters.dev/bucket-names"

	AzureMIName         = "klusters.dev/azure-mi-name"
	AzureRGName         = "klusters.dev/azure-rg-name"
	AzureSubscriptionID = "klusters.dev/azure-subscription-id"

	ManagedByLabel = "app.kubernetes.io/managed-by"
	ManagedByValue = "kubestash.com"
)

// Opt-ins anyone may write. Not under Prefix: the own-annotations guard strips keys under it from
// ServiceAccounts and the admission policy refuses them, so a user could never set one there.
// They grant nothing: the Pod still gets only what its ServiceAccount's role allows.
const (
	// ResticCredentials ("true") on a ServiceAccount or Pod opts into the aws-credentials sidecar.
	ResticCredentials = "go.klusters.dev/restic-credentials"
	// LegacyResticCredentials is its former key, under Prefix. Still read on Pods, which no guard
	// or policy touches (ServiceAccounts lose it to the guard unless this server wrote it).
	LegacyResticCredentials = Prefix + "restic-credentials"
)

// Outputs read by other software.
const (
	AWSRoleARN = "eks.amazonaws.com/role-arn"
	// EKS pod-identity webhook annotations honoured on ServiceAccounts (and Pods for skip-containers).
	AWSAudience             = "eks.amazonaws.com/audience"
	AWSTokenExpiration      = "eks.amazonaws.com/token-expiration"
	AWSSTSRegionalEndpoints = "eks.amazonaws.com/sts-regional-endpoints"
	AWSSkipContainers       = "eks.amazonaws.com/skip-containers"
	// AWSSkipPodIdentityLabel on a Pod (any value, as the EKS webhook's objectSelector
	// DoesNotExist has it) keeps every Pod identity webhook away from it.
	AWSSkipPodIdentityLabel = "eks.amazonaws.com/skip-pod-identity-webhook"

	AzureClientID           = "azure.workload.identity/client-id"
	AzureTenantID           = "azure.workload.identity/tenant-id"
	AzureUseLabel           = "azure.workload.identity/use"
	AzureUseIdentityBinding = "azure.workload.identity/use-identity-binding"
)

// Prefix is the one prefix of ours. Only this server may set or change keys under it: admission
// refuses or strips them when anyone else writes them.
const Prefix = "credential-webhook.klusters.dev/"

const (
	// Pending marks a ServiceAccount that admission accepted for an allowed requester: it planned
	// the identity (role ARN, client ID) but wrote nothing to the cloud. The write follows once the
	// ServiceAccount is seen persisted, and only for the claims this value records, which the
	// ServiceAccount must still make. Value: "aws:<digest> azure:<digest>" (package markers).
	Pending = Prefix + "pending"
	// HoldReason and HeldSince are set on a Job that admission suspended; the sweeper releases only
	// Jobs that carry them.
	HoldReason = Prefix + "hold-reason"
	HeldSince  = Prefix + "held-since"
	// SeedTag is the IAM tag key on a derived role naming its seed role ARN.
	SeedTag = "credential-webhook.klusters.dev/seed-role"
	// Granted records, after the cloud write, which claims were granted to which object (its
	// UID): "<uid> aws:<digest> azure:<digest>" (package markers). Garbage collection keeps a
	// subject only while the ServiceAccount with that UID exists and still makes the claim.
	Granted = Prefix + "granted"
	// ManagedLabel marks Kubernetes objects this server created (ClusterRoles, bindings, Leases).
	ManagedLabel = Prefix + "managed"
)
