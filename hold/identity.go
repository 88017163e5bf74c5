package hold

import (
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"go.klusters.dev/credential-webhook/annotations"
)

// Identity says which cloud identities a ServiceAccount asks for and whether they are assigned.
// It reads annotations only: whether an assigned identity really works (trust propagated) is for
// the sweeper to prove.
type Identity struct {
	// AWS: the ServiceAccount carries a seed role (annotations.SeedRole).
	AWS bool
	// Azure: the ServiceAccount names a managed identity (annotations.AzureMIName).
	Azure bool
	// Missing is empty when every requested identity is assigned, else a short sentence saying
	// what is missing, for warnings and Events.
	Missing string
}

// Requested reports whether the ServiceAccount asks for any cloud identity at all.
func (i Identity) Requested() bool { return i.AWS || i.Azure }

// IdentityOf evaluates sa's annotations. A nil sa requests nothing.
func IdentityOf(sa *corev1.ServiceAccount) Identity {
	if sa == nil {
		return Identity{}
	}
	a := sa.Annotations
	id := Identity{AWS: a[annotations.SeedRole] != "", Azure: a[annotations.AzureMIName] != ""}
	if !id.Requested() {
		return id
	}
	var missing []string
	// Pending is set by admission on a ServiceAccount it accepted but could not finish; until the
	// sweeper finishes it, whatever output annotations it carries are not to be trusted as final.
	if reason, ok := a[annotations.Pending]; ok {
		missing = append(missing, "assignment pending ("+reason+")")
	}
	if id.AWS && a[annotations.AWSRoleARN] == "" {
		missing = append(missing, "no "+annotations.AWSRoleARN+" yet")
	}
	// Azure needs both IDs: the AKS workload-identity webhook injects AZURE_TENANT_ID from the
	// tenant annotation (else the cluster's default tenant, the wrong one for an identity in
	// another tenant), so a Job must not start with the client ID alone.
	if id.Azure && a[annotations.AzureClientID] == "" {
		missing = append(missing, "no "+annotations.AzureClientID+" yet")
	}
	if id.Azure && a[annotations.AzureTenantID] == "" {
		missing = append(missing, "no "+annotations.AzureTenantID+" yet")
	}
	id.Missing = strings.Join(missing, "; ")
	return id
}

// ServiceAccountName is the ServiceAccount a Pod template runs as: serviceAccountName, else the
// deprecated serviceAccount alias, else "default" (as the apiserver resolves it).
func ServiceAccountName(spec *corev1.PodSpec) string {
	switch {
	case spec.ServiceAccountName != "":
		return spec.ServiceAccountName
	case spec.DeprecatedServiceAccount != "":
		return spec.DeprecatedServiceAccount
	}
	return "default"
}

// Verdict is what the sweeper knows of a held Job's credentials before any cloud call.
type Verdict struct {
	// Known: Ready and Why are the answer. Otherwise a cloud check of Identity decides.
	Known bool
	Ready bool
	// Why explains Ready for Events and logs (set when Known).
	Why string
	// Identity is what the ServiceAccount asks for: the clouds to check when not Known.
	Identity Identity
}

// Precheck answers, without a cloud call, whether the credentials of ServiceAccount
// namespace/name work: sa is the ServiceAccount (nil when it does not exist) and knownReady says
// the sweeper proved its current identity earlier (ReadyCache). It mirrors Decide, so a Job held
// for a reason admission could see is released as soon as that reason is gone.
func Precheck(namespace, name string, sa *corev1.ServiceAccount, knownReady bool) Verdict {
	if sa == nil {
		return Verdict{Known: true, Why: fmt.Sprintf("ServiceAccount %s/%s does not exist", namespace, name)}
	}
	id := IdentityOf(sa)
	switch {
	case !id.Requested():
		return Verdict{Known: true, Ready: true, Why: "its ServiceAccount requests no cloud identity", Identity: id}
	case id.Missing != "":
		return Verdict{Known: true, Why: id.Missing, Identity: id}
	case knownReady:
		return Verdict{Known: true, Ready: true, Why: "credentials proven earlier", Identity: id}
	}
	return Verdict{Identity: id}
}
