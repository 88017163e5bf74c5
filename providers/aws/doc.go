// Package aws gives each Kubernetes ServiceAccount an IAM role it can assume through IRSA, without
// running into the trust policy size quota (ACLSizePerRole, 2,048 characters by default, which
// holds only about 20 ServiceAccount subjects).
//
// # Derived roles
//
// A seed role (named by the ServiceAccount annotation go.klusters.dev/seed-role-name) is cloned
// into derived roles "<seed>-<i>" under the seed's path: same OIDC trust statements (provider,
// action, ":aud" and any other condition), attached managed policies, inline policies,
// permissions boundary, max session duration, description and tags, plus the tag
// annotations.SeedTag naming the seed ARN. The seed's own subjects are not copied; each derived
// role's statements list only assigned subjects, "system:serviceaccount:<ns>:<name>", under
// StringLike "<issuer>:sub". Decisions:
//
//   - Several OIDC statements in the seed (one per cluster): every statement gets the whole
//     subject list. A ServiceAccount name does not tell which cluster it lives in, and a wrong
//     guess would break a working identity; capacity shrinks accordingly, and is measured.
//   - Deny statements are copied verbatim (dropping one would widen trust). Allow statements for
//     other principals (accounts, services, SAML) are not copied: derived roles exist for
//     ServiceAccounts only.
//   - A role left with no subject keeps its statements with an unmatchable placeholder subject:
//     an OIDC statement without a ":sub" condition would trust every ServiceAccount.
//   - Subjects are validated as DNS names, so '*' or '?' can never reach a StringLike.
//
// # Capacity
//
// A subject fits when the compact JSON that would be sent is within the quota (Config.Quota, else
// iam:GetAccountSummary AssumeRolePolicySizeQuota read once, else 2,048). Placement is first fit
// over existing roles by lowest index, so space freed by Remove is reused. IAM's LimitExceeded
// ("Cannot exceed quota for ACLSizePerRole") means "this role is full": the quota is lowered and
// the next role is tried. With KubeStash session names (about 71 characters as subjects) a role
// holds 21 subjects at 2,048, 49 at 4,096 and about 104 at 8,192 — the theoretical maximum.
//
// # IAM calls
//
// Steady state (warm cache, no other replica wrote since): one UpdateAssumeRolePolicy per
// assignment; an already-listed subject costs none. A new role costs CreateRole (subject included)
// plus one call per attached and inline policy. A cold process pays once for ListRoles (one call per
// 1,000 roles under the seed's path: derived roles are found by listing, never by probing names),
// GetAccountSummary, and the seed's and the chosen role's GetRole and policy listings. A role is
// checked for the seed tag (GetRole; ListRoles returns no tags) before it is first written, and a
// role half-created by an earlier attempt is completed then. Throttling and 5xx are retried by
// the SDK (NewIAMClient), bounded by the caller's deadline.
//
// # Concurrency
//
// IAM has no compare-and-swap, so every read-modify-write of a seed's roles happens under a
// Locker (a Kubernetes Lease per seed in production) whose generation tells a replica when its
// cache is stale; see Locker for the protocol. Assign calls that arrive while a session runs (or
// waits for the lock) are placed together in the next session, with one trust policy write per
// role touched: under a busy hour or IAM throttling, the cost of a session is shared instead of
// queued.
//
// # IAM policy (manifests/iam-policy.json)
//
// IAM policies cannot carry comments, so the reasoning lives here. Replace ACCOUNT_ID, SEED_PATH
// (drop "SEED_PATH/" for a seed at path "/"), SEED_NAME and SEED_MANAGED_POLICY, and repeat the
// seed-specific statements for every seed in the webhook's --seed allowlist.
//
//   - ReadSeedAndDerivedRoles: GetRole, ListAttachedRolePolicies, ListRolePolicies, GetRolePolicy
//     on the seed and its derived roles. Read-only; nothing is ever written to the seed.
//   - ListRolesAndReadQuota: ListRoles and GetAccountSummary on "*": both are read-only and IAM
//     offers no narrower resource for them. ListRoles is what keeps discovery at one call.
//   - CreateDerivedRolesTaggedWithTheirSeed, TagDerivedRolesOnlyWithTheirSeed: CreateRole and
//     TagRole on "<seed>-*" only when the request carries the seed tag with this seed's ARN (the
//     code always restates it in TagRole), so every role the webhook creates is marked as derived.
//   - EditOwnDerivedRoles, UntagOwnDerivedRolesButNeverTheSeedTag: every other write
//     (UpdateAssumeRolePolicy, UpdateRole, Put/DeleteRolePolicy, DetachRolePolicy,
//     Put/DeleteRolePermissionsBoundary, DeleteRole, UntagRole) only on roles already carrying the
//     seed tag, and the tag itself can never be removed. A role someone else created under a
//     derived name is untouchable, in the policy as in the code.
//   - AttachOnlyTheSeedsManagedPolicies: AttachRolePolicy restricted by iam:PolicyARN to the
//     seed's managed policies, so the webhook cannot attach AdministratorAccess to anything.
//   - Not granted: iam:PassRole (the webhook never hands a role to a service), any write to the
//     seed, ListRoleTags (GetRole returns tags), and anything on roles outside "<seed>-*".
//
// Residual power: PutRolePolicy cannot be restricted by document content, so the webhook's
// credentials could write any inline policy into a derived role. Where that matters, give seeds a
// permissions boundary (it is cloned) and add an iam:PermissionsBoundary condition to the
// CreateRole statement and a Deny on DeleteRolePermissionsBoundary.
package aws
