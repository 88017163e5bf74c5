// Package azure implements the Azure half of credential-webhook: AKS identity binding.
//
// One user-assigned managed identity holds at most 20 federated credentials, far fewer than the
// per-session ServiceAccounts KubeStash creates. AKS identity binding replaces them with RBAC: a
// ServiceAccount may use the identity when it is a subject of a ClusterRoleBinding to a ClusterRole
// granting the verb "use-managed-identity" on resource <clientID> in API group
// "cid.wi.aks.azure.com". This package
//
//   - parses the KubeStash annotations naming the identity (ParseIdentity) and checks them against
//     the operator's scope allowlist (ParseScopes, Scopes.Allows);
//   - resolves the identity's client and tenant IDs from ARM through a cache that keeps ARM's
//     throttling budget (Resolver);
//   - writes and garbage-collects the use-mi-<clientID> RBAC objects (EnsureBinding,
//     RemoveSubjects, BindingLists);
//   - reads, for the sweeper's readiness check, the AKS identity binding in ARM (the
//     IdentityBinding resource on the managed cluster, which the operator creates) and proves it
//     maps the identity (aksbinding.go: IdentityBindingProver, MatchBinding);
//   - decides, without I/O, which annotations and labels admission adds (DecideServiceAccount,
//     DecideJobTemplate).
//   - takes over, as a cluster administrator's tool (roles adopt-azure), the unlabelled
//     use-mi-<clientID> objects an earlier manager created when they are exactly what
//     EnsureBinding makes (Adopt; the decision planAdoption is pure).
//
// The admission requester checks (namespace, user or group) live in the admission layer; this
// package only ever sees identities that have already passed them.
package azure
