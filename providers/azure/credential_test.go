package azure

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
)

func TestChooseCredential(t *testing.T) {
	full := map[string]string{"AZURE_FEDERATED_TOKEN_FILE": "/var/run/secrets/azure/tokens/azure-identity-token", "AZURE_CLIENT_ID": testClientID, "AZURE_TENANT_ID": testTenant}
	tests := []struct {
		name string
		env  map[string]string
		drop string
		want CredentialKind
	}{
		{"workload identity injected", full, "", WorkloadIdentity},
		{"no token file", full, "AZURE_FEDERATED_TOKEN_FILE", DefaultChain},
		{"no client id", full, "AZURE_CLIENT_ID", DefaultChain},
		{"no tenant id", full, "AZURE_TENANT_ID", DefaultChain},
		{"nothing", nil, "", DefaultChain},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			getenv := func(k string) string {
				if k == tc.drop {
					return ""
				}
				return tc.env[k]
			}
			if got := ChooseCredential(getenv); got != tc.want {
				t.Fatalf("got %s, want %s", got, tc.want)
			}
		})
	}
}

// Only the workload-identity branch is constructed here: it reads a token file and never probes
// IMDS. (Construction does no I/O either way; no token is requested.)
func TestNewCredentialWorkloadIdentity(t *testing.T) {
	tok := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tok, []byte("header.payload.sig"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("AZURE_FEDERATED_TOKEN_FILE", tok)
	t.Setenv("AZURE_CLIENT_ID", testClientID)
	t.Setenv("AZURE_TENANT_ID", testTenant)
	cred, kind, err := NewCredential(azcore.ClientOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := cred.(*azidentity.WorkloadIdentityCredential); !ok || kind != WorkloadIdentity {
		t.Fatalf("got %T (%s)", cred, kind)
	}
}
