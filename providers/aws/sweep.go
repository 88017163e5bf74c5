package aws

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"

	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/markers"
	"go.klusters.dev/credential-webhook/sweeper"
)

// Cloud is AWS as the writer and the sweeper see it (sweeper.Cloud).
type Cloud struct{ Assigner *Assigner }

func (Cloud) Name() string { return markers.AWS }

func (Cloud) Claim(ann map[string]string) (markers.Claim, bool) { return ClaimOf(ann) }

func (Cloud) Outputs() []string { return []string{annotations.AWSRoleARN} }

// Finish adds the ServiceAccount, persisted and still claiming its seed (the caller checked), to
// a derived role of the seed and returns the role ARN to set. The seed is checked against the
// allowlist again: the list may have changed since admission.
func (c Cloud) Finish(ctx context.Context, sa *corev1.ServiceAccount) (map[string]string, error) {
	seed, err := ParseRoleARN(sa.Annotations[annotations.SeedRole])
	if err != nil {
		return nil, fmt.Errorf("%w: seed role annotation: %w", markers.ErrRefused, err)
	}
	c.Assigner.Expect(seed, sa.Namespace, sa.Name, sa.Annotations[annotations.AWSRoleARN])
	res, err := c.Assigner.Assign(ctx, seed, sa.Namespace, sa.Name)
	if Permanent(err) {
		return nil, fmt.Errorf("%w: %w", markers.ErrRefused, err)
	}
	if err != nil {
		return nil, err
	}
	return map[string]string{annotations.AWSRoleARN: res.RoleARN}, nil
}

// Permanent reports errors that retrying cannot cure for this ServiceAccount and seed.
func Permanent(err error) bool {
	return errors.Is(err, ErrNotAllowed) || errors.Is(err, ErrSeedMismatch) || errors.Is(err, ErrSeedNotOIDC) ||
		errors.Is(err, ErrInvalidSubject) || errors.Is(err, ErrSubjectTooLarge) || errors.Is(err, ErrInvalidARN)
}

// Collector removes from every derived role the subjects whose ServiceAccount no longer
// exists or lost its standing for the seed (markers.Keeps: re-created under the same name, or
// no longer asking for that seed). Seeds says which seeds to look at: the server's own (those it
// holds a lock Lease for, that is wrote for), never seeds named by ServiceAccount annotations.
// Only seeds the allowlist allows are collected. It is a sweeper.ScopedCollector: a scope is
// one seed.
//
// On the full passes it also maintains every seed's derived roles (MaintainScope).
type Collector struct {
	Assigner *Assigner
	Seeds    func(ctx context.Context) ([]string, error)
	// EmptyRoleGrace is how long a derived role must have listed no subject before a full pass
	// deletes it (--gc-empty-role-grace); 0 keeps empty roles.
	EmptyRoleGrace time.Duration
	// Metrics counts what maintenance wrote; nil counts nothing.
	Metrics *GCMetrics
}

var _ sweeper.ScopeMaintainer = Collector{}

// DefaultEmptyRoleGrace is the default Collector.EmptyRoleGrace: long enough that a role emptied
// between two backup sessions is refilled rather than deleted and created again.
const DefaultEmptyRoleGrace = time.Hour

// GCMetrics are the metrics of derived role maintenance. Labels are bounded: an IAM action.
type GCMetrics struct {
	rolesDeleted prometheus.Counter
	driftWrites  *prometheus.CounterVec
}

// driftActions are the writes drift repair can send (policyDiff, plus the trust policy).
var driftActions = []string{
	"iam:PutRolePermissionsBoundary", "iam:AttachRolePolicy", "iam:DetachRolePolicy", "iam:PutRolePolicy",
	"iam:DeleteRolePolicy", "iam:UpdateRole", "iam:TagRole", "iam:UntagRole", "iam:UpdateAssumeRolePolicy",
}

// NewGCMetrics registers the maintenance metrics with reg (nil: not registered).
func NewGCMetrics(reg prometheus.Registerer) *GCMetrics {
	m := &GCMetrics{
		rolesDeleted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "credential_webhook_derived_roles_deleted_total",
			Help: "Derived roles deleted by garbage collection after listing no subject for longer than --gc-empty-role-grace.",
		}),
		driftWrites: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "credential_webhook_drift_writes_total",
			Help: "IAM writes that made a derived role match its seed again (drift repair on full garbage collection passes), by action.",
		}, []string{"action"}),
	}
	for _, a := range driftActions {
		m.driftWrites.WithLabelValues(a)
	}
	if reg != nil {
		reg.MustRegister(m.rolesDeleted, m.driftWrites)
	}
	return m
}

func (m *GCMetrics) synced(rep SyncReport) {
	if m == nil {
		return
	}
	for a, n := range rep.Writes {
		m.driftWrites.WithLabelValues(a).Add(float64(n))
	}
}

func (m *GCMetrics) expired(rep EmptyReport) {
	if m == nil {
		return
	}
	m.rolesDeleted.Add(float64(len(rep.Deleted)))
}

// Scopes lists the configured seeds to collect (sweeper.ScopedCollector), each with the claim
// a ServiceAccount granted that seed carries. Seeds that are no ARN or not allowed cost nothing.
func (c Collector) Scopes(ctx context.Context) ([]sweeper.Scope, error) {
	seeds, err := c.Seeds(ctx)
	if err != nil {
		return nil, err
	}
	var out []sweeper.Scope
	seen := map[string]bool{}
	for _, s := range seeds {
		seed, err := ParseRoleARN(s)
		if err != nil || c.Assigner.allowed(seed) != nil || seen[seed.String()] {
			continue
		}
		seen[seed.String()] = true
		out = append(out, sweeper.Scope{Key: seed.String(), Claim: SeedClaim(seed)})
	}
	return out, nil
}

// Collect collects every scope: one ListRoles and one GetRole per derived role per seed (Roles),
// plus one UpdateAssumeRolePolicy per role that changed.
func (c Collector) Collect(ctx context.Context, lookup markers.Lookup) (int, error) {
	scopes, err := c.Scopes(ctx)
	if err != nil {
		return 0, err
	}
	removed := 0
	var errs []error
	for _, s := range scopes {
		n, err := c.CollectScope(ctx, s, lookup)
		removed += n
		if err != nil {
			errs = append(errs, err)
		}
	}
	return removed, errors.Join(errs...)
}

// CollectScope collects one seed (sweeper.ScopedCollector).
func (c Collector) CollectScope(ctx context.Context, scope sweeper.Scope, lookup markers.Lookup) (int, error) {
	seed, err := ParseRoleARN(scope.Key)
	if err != nil {
		return 0, err
	}
	if err := c.Assigner.allowed(seed); err != nil {
		return 0, nil // no longer configured: nothing of ours to look at
	}
	want := SeedClaim(seed)
	if !scope.Full {
		// After a deletion: decide on the lock session's view (RemoveUnless), which reads
		// nothing while it is current. Reading every role on every deletion cost IAM about
		// 46 GetRole calls per collection, 130,000 a day for 1,000 BackupConfigurations on a
		// five-minute schedule (benchtool sim).
		n, err := c.Assigner.RemoveUnless(ctx, seed, func(sub string) bool {
			ns, name, err := ParseSubject(sub)
			if err != nil {
				return true // not a ServiceAccount subject: not ours to judge
			}
			sa, exists := lookup(ns, name)
			return markers.Keeps(sa, exists, ClaimOf, want)
		})
		if err != nil {
			return n, fmt.Errorf("collecting derived roles of %s: %w", seed, err)
		}
		return n, nil
	}
	roles, err := c.Assigner.Roles(ctx, seed)
	if err != nil {
		return 0, fmt.Errorf("listing derived roles of %s: %w", seed, err)
	}
	var gone []string
	for _, r := range roles {
		if !r.Owned {
			continue
		}
		for _, sub := range r.Subjects {
			ns, name, err := ParseSubject(sub)
			if err != nil {
				continue
			}
			if sa, exists := lookup(ns, name); !markers.Keeps(sa, exists, ClaimOf, want) {
				gone = append(gone, sub)
			}
		}
	}
	if len(gone) == 0 {
		return 0, nil
	}
	n, err := c.Assigner.Remove(ctx, seed, gone)
	if err != nil {
		return n, fmt.Errorf("removing %d subjects from %s: %w", len(gone), seed, err)
	}
	return n, nil
}

// MaintainScope runs on every full pass, after CollectScope (sweeper.ScopeMaintainer): it repairs
// the drift of the seed's derived roles from the seed (SyncFromSeed), then deletes those empty
// for longer than EmptyRoleGrace (ExpireEmpty). Sync first: it reads every role's marks, which
// saves ExpireEmpty the reads. Both run even when the other fails: a seed that was deleted
// cannot be synced from, yet its emptied roles should still go.
func (c Collector) MaintainScope(ctx context.Context, scope sweeper.Scope) error {
	seed, err := ParseRoleARN(scope.Key)
	if err != nil {
		return err
	}
	if err := c.Assigner.allowed(seed); err != nil {
		return nil // no longer configured: nothing of ours to look at
	}
	rep, syncErr := c.Assigner.SyncFromSeed(ctx, seed)
	c.Metrics.synced(rep)
	exp, expErr := c.Assigner.ExpireEmpty(ctx, seed, c.EmptyRoleGrace)
	c.Metrics.expired(exp)
	return errors.Join(syncErr, expErr)
}
