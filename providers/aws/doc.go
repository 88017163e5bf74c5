// Package aws gives each Kubernetes ServiceAccount an IAM role it can assume through IRSA, without
// running into the trust policy size quota (ACLSizePerRole, 2,048 characters by default, which
// holds only about 20 ServiceAccount subjects).
//
// # Derived roles
//
// A seed role (named by the ServiceAccount annotation go.klusters.dev/seed-role-name) is cloned
// into derived roles "<seed>-<i>" under the seed's path: same OIDC trust statements (provider,
// action, ":aud" and any other condition), attached managed policies, inline policies, max
// session duration, description and tags, plus the tag annotations.SeedTag naming the seed ARN,
// and always a permissions boundary: Config.PermissionsBoundary (--aws-permissions-boundary),
// else the seed's own. The seed's own subjects are not copied; each derived role's statements
// list only assigned subjects, "system:serviceaccount:<ns>:<name>", under StringLike
// "<issuer>:sub". Decisions:
//
//   - Seeds that are refused (ErrSeedRefused, permanent like ErrNotAllowed): a derived role
//     (DerivedIndex in arn.go is the one rule: named "<allowed seed>-<i>" on the same path, or
//     tagged with annotations.SeedTag), since cloning clones would bypass --role-creation-limit;
//     and a seed whose derived roles would get no boundary.
//   - Several OIDC statements in the seed (one per cluster): with Config.OIDCIssuer
//     (--aws-oidc-issuer) only the statements whose Federated principal is this cluster's
//     oidc-provider ARN get subjects, the others are copied unchanged, and a seed with no such
//     statement is refused (ErrSeedNotOIDC). Without it every statement gets the whole subject
//     list (a ServiceAccount name does not tell which cluster it lives in), trusting it in every
//     cluster the seed names; the server warns at startup. Capacity is measured either way.
//   - Deny statements are copied verbatim (dropping one would widen trust). Allow statements for
//     other principals (accounts, services, SAML) are not copied: derived roles exist for
//     ServiceAccounts only.
//   - A role left with no subject keeps its statements with an unmatchable placeholder subject:
//     an OIDC statement without a ":sub" condition would trust every ServiceAccount.
//   - Subjects are validated as DNS names, so '*' or '?' can never reach a StringLike.
//
// A role named "<seed>-<i>" without the seed tag (one an earlier manager created) is foreign:
// never written, never chosen, its index skipped. A replica checks that finding again after
// ForeignRecheck, so a role adopted since (roles adopt) is used without a restart.
//
// # Capacity
//
// A subject fits when the compact JSON that would be sent is within the quota (Config.Quota, else
// iam:GetAccountSummary AssumeRolePolicySizeQuota read once, else 2,048). Placement (Place) is
// first fit over existing roles by lowest index, so space freed by Remove is reused. IAM's
// LimitExceeded ("Cannot exceed quota for ACLSizePerRole") means "this role is full": the quota
// is lowered and the next role is tried. With KubeStash session names (about 71 characters as subjects) a role
// holds 21 subjects at 2,048, 49 at 4,096 and about 104 at 8,192 — the theoretical maximum.
//
// # Files
//
// Decisions are pure functions; I/O stays at the edges:
//
//   - placement.go: Place, where a subject goes (pure). The only place a role is chosen: the
//     writer, admission's plan, the dry run, bench and e2e all call it.
//   - policydiff.go: policyDiff, which IAM writes make a derived role match its seed, and
//     deletionWrites (pure).
//   - apply.go: the typed IAM writes and the applier that sends them (the only IAM writer).
//   - session.go: one locked read-modify-write of a seed's roles: lock, read IAM, call the pure
//     functions, apply (placeRound is plan then apply).
//   - queue.go: Assign calls waiting for a session, placed together (group commit).
//   - rolecache.go: what a replica knows of a seed's roles between sessions.
//   - plan.go: admission's plan and its short reservations, on top of Place.
//   - remove.go (garbage collection, empty roles), seedsync.go (drift repair), report.go (the
//     roles table), adopt.go (roles adopt: planAdoption, pure, decides whether an untagged
//     "<seed>-<i>" role is a faithful clone; Adopt tags it with an administrator's credentials);
//     assigner.go: Config, errors, Assign and the quota; capacity.go: Fit and
//     TheoreticalMax; trust.go: trust policies; iam.go: the IAM client and reads; locker.go:
//     the per-seed lock protocol.
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
// (drop "SEED_PATH/" for a seed at path "/"), SEED_NAME, SEED_MANAGED_POLICY, SEED_TAG_KEY (the
// tag keys the seed carries, which derived roles copy) and PERMISSIONS_BOUNDARY (the
// --aws-permissions-boundary policy), and repeat the seed-specific statements for every seed in
// the webhook's --aws-seed-roles allowlist. The goal: whoever steals the webhook's credentials
// gets at most the permissions boundary, on roles named "<seed>-*" that we created.
//
//   - ReadSeedAndDerivedRoles: GetRole, ListAttachedRolePolicies, ListRolePolicies, GetRolePolicy
//     on the seed and its derived roles. Read-only; nothing is ever written to the seed.
//   - ListRolesAndReadQuota: ListRoles and GetAccountSummary on "*": both are read-only and IAM
//     offers no narrower resource for them. ListRoles is what keeps discovery at one call.
//   - CreateDerivedRolesTaggedWithTheirSeed: CreateRole on "<seed>-*" only with the seed tag
//     naming this seed (so every role the webhook creates is marked as derived), with
//     iam:PermissionsBoundary = the boundary (no derived role is ever born unbounded), and with
//     aws:TagKeys (ForAllValues:StringEquals) limited to the seed tag and the seed's copied tag
//     keys (no ABAC tag the seeds do not carry).
//   - TagDerivedRolesOnlyWithTheirSeed: TagRole only on a role that already carries the seed tag
//     for this seed (aws:ResourceTag), restating it (aws:RequestTag; the code always does), with
//     the same tag keys plus EmptySinceTag (garbage collection's mark on an empty role): a foreign
//     role named "<seed>-<i>" can never be adopted by tagging it, nor an owned role moved to
//     another seed. The server never tags a role it did not create; adopting one (the roles adopt
//     subcommand, adopt.go) is an administrator's act with the administrator's credentials.
//   - EditOwnDerivedRoles: UpdateAssumeRolePolicy, UpdateRole, DeleteRolePolicy,
//     DetachRolePolicy and DeleteRole only on roles already carrying the seed tag. These never
//     add permissions (a trust policy only says who may use the role's bounded permissions); a
//     role someone else created under a derived name is untouchable, in the policy as in the code.
//   - WidenOwnDerivedRolesOnlyWithinTheBoundary: PutRolePolicy and PutRolePermissionsBoundary on
//     owned roles only with iam:PermissionsBoundary = the boundary (for PutRolePolicy the role's
//     current boundary, for PutRolePermissionsBoundary the one being set): any inline document is
//     capped by the boundary. policyDiff puts the boundary before anything else for this reason.
//   - UntagOwnDerivedRolesButNeverTheSeedTag: UntagRole on owned roles, never of the seed tag, or
//     a role could be made "not ours" and re-tagged.
//   - AttachOnlyTheSeedsManagedPolicies: AttachRolePolicy restricted by iam:PolicyARN to the
//     seed's managed policies (never AdministratorAccess) and to roles with the boundary.
//   - Not granted: DeleteRolePermissionsBoundary (the server never removes a boundary; drift sync
//     sets it), iam:PassRole (the webhook never hands a role to a service), CreatePolicy or any
//     policy-version call (the boundary itself cannot be widened), any write to the seed,
//     ListRoleTags (GetRole returns tags), and anything on roles outside "<seed>-*".
//
// Residual power with stolen credentials: rewriting the trust of (or deleting) derived roles,
// and so using or disrupting them: at most what the boundary allows, nothing more.
// iampolicy_test.go evaluates the rendered document against every call the code makes and
// against these attacks.
package aws
