package azure

import (
	"fmt"
	"os"
	"strings"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/arm"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
)

// PublicARMAudience is the token audience of Azure Resource Manager in the public cloud.
const PublicARMAudience = "https://management.core.windows.net/"

// ClientOptions returns ARM client options for the given endpoint. An empty endpoint means the
// public cloud. A custom endpoint (a sovereign cloud, Azure Stack, or a local test server) needs
// its token audience; an empty audience falls back to the public cloud's, which is what a test
// server accepts.
func ClientOptions(armEndpoint, audience string) arm.ClientOptions {
	var o arm.ClientOptions
	if armEndpoint == "" {
		return o // the SDK's default: public cloud
	}
	if audience == "" {
		audience = PublicARMAudience
	}
	o.Cloud = cloud.Configuration{
		ActiveDirectoryAuthorityHost: cloud.AzurePublic.ActiveDirectoryAuthorityHost,
		Services: map[cloud.ServiceName]cloud.ServiceConfiguration{
			cloud.ResourceManager: {Endpoint: strings.TrimSuffix(armEndpoint, "/"), Audience: audience},
		},
	}
	return o
}

// CredentialKind names the credential NewCredential builds.
type CredentialKind string

const (
	// WorkloadIdentity: the AKS workload identity webhook injected AZURE_FEDERATED_TOKEN_FILE,
	// AZURE_CLIENT_ID and AZURE_TENANT_ID into our own pod.
	WorkloadIdentity CredentialKind = "workload-identity"
	// DefaultChain: azidentity's DefaultAzureCredential (environment, workload identity,
	// managed identity via IMDS, Azure CLI, ...), for running outside AKS.
	DefaultChain CredentialKind = "default"
)

// ChooseCredential decides which credential to build from the environment. Workload identity is
// chosen explicitly when its variables are present because the default chain would otherwise
// probe further sources (IMDS) after a workload-identity failure and report a confusing error.
func ChooseCredential(getenv func(string) string) CredentialKind {
	if getenv("AZURE_FEDERATED_TOKEN_FILE") != "" && getenv("AZURE_CLIENT_ID") != "" && getenv("AZURE_TENANT_ID") != "" {
		return WorkloadIdentity
	}
	return DefaultChain
}

// NewCredential builds the webhook's own Azure credential. opts.Cloud should match the ARM
// client's (it selects the Entra ID authority). Constructing a credential does no I/O.
func NewCredential(opts azcore.ClientOptions) (azcore.TokenCredential, CredentialKind, error) {
	kind := ChooseCredential(os.Getenv)
	switch kind {
	case WorkloadIdentity:
		c, err := azidentity.NewWorkloadIdentityCredential(&azidentity.WorkloadIdentityCredentialOptions{ClientOptions: opts})
		if err != nil {
			return nil, kind, fmt.Errorf("azure workload identity credential: %w", err)
		}
		return c, kind, nil
	default:
		c, err := azidentity.NewDefaultAzureCredential(&azidentity.DefaultAzureCredentialOptions{ClientOptions: opts})
		if err != nil {
			return nil, kind, fmt.Errorf("azure default credential: %w", err)
		}
		return c, kind, nil
	}
}
