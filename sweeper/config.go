// Package sweeper is the background half of credential-webhook: one active replica (Lease leader
// election) releases the Jobs that admission held once their credentials really work, finishes
// the ServiceAccount assignments admission accepted but could not complete, and collects trust
// policy subjects and bindings of deleted ServiceAccounts.
//
// What it may touch follows the design's security model: it releases only Jobs carrying our
// held-since annotation and KubeStash's managed-by label, and it assigns only ServiceAccounts
// carrying our pending marker, which only admission sets after checking the requester. Every
// decision about a held Job (held or not, release now or later, the release patch) is package
// hold's.
//
// Files:
//
//   - config.go: Config, Deps and the interfaces the clouds implement (Checker, Cloud,
//     Collector, ScopedCollector).
//   - sweeper.go, lease.go: leader election, one term per Lease held; seed lock Lease pruning,
//     whose list primes the leader's lock (Deps.SeedLeasesListed).
//   - term.go: one leadership term: its state, and run, which starts the loops below.
//   - informers.go: the term's Job and ServiceAccount informers; their handlers only enqueue.
//   - jobloop.go: held Jobs: events, the worker, hold.Plan, backoff. When the sweeper releases.
//   - readiness.go: whether a held Job's credentials work (hold.Precheck, the cloud Checkers).
//   - release.go: the release write (hold.ReleasePatch), its retries, Events and metrics.
//   - finisher.go: the leader's fallback for pending ServiceAccounts, after Config.Handoff.
//   - writer.go: every replica writes what its own admission planned.
//   - finish.go, finishplan.go: finishing a pending ServiceAccount (for the two above), and its
//     pure decisions (Triage, FinishPatch).
//   - gc.go, gcscope.go: garbage collection, full and event-driven per scope (token buckets).
//   - existence.go: whether a ServiceAccount is gone, for garbage collection (grace, live read).
//   - ready.go: the cache of proven ServiceAccounts that admission reads (hold.ReadyCache).
//   - azure.go: the Azure readiness Checker (AWS's is package awscheck).
//   - strip.go: the informer transforms; metrics.go: metrics and the release reasons;
//     gauges.go: the state gauges the leader computes at scrape time from its caches.
package sweeper

import (
	"context"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"

	"go.klusters.dev/credential-webhook/hold"
	"go.klusters.dev/credential-webhook/markers"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"

	"github.com/prometheus/client_golang/prometheus"
)

// Checker proves that the cloud identity of a ServiceAccount works. ready=false comes with a
// reason for Events; err is for failures of the check itself (throttling, network), which count
// as not ready and are retried.
type Checker interface {
	Check(ctx context.Context, sa *corev1.ServiceAccount) (ready bool, reason string, err error)
}

// Cloud is one cloud provider as the writer and the sweeper see it: which claim a
// ServiceAccount's annotations make on it, and how to write that claim to the cloud.
type Cloud interface {
	// Name is the claim's cloud (markers.AWS, markers.Azure).
	Name() string
	// Claim is the claim ann makes on this cloud now; ok is false when it makes none.
	Claim(ann map[string]string) (c markers.Claim, ok bool)
	// Finish writes sa's claim to the cloud (trust policy, identity binding) and returns the
	// output annotations to set (role ARN, client and tenant IDs). Errors wrapping
	// markers.ErrRefused are permanent (seed or scope not allowed): the claim is dropped.
	// Anything else is retried.
	Finish(ctx context.Context, sa *corev1.ServiceAccount) (annotations map[string]string, err error)
	// Outputs are the annotation keys Finish sets; a dropped claim removes them, so no
	// ServiceAccount keeps pointing at an identity it was not granted.
	Outputs() []string
}

// Collector removes what a cloud holds for ServiceAccounts that no longer exist (trust policy
// subjects, identity binding subjects) for ServiceAccounts that are gone or lost their standing
// (markers.Keeps). lookup answers from the sweeper's ServiceAccount cache with a grace period
// (see Config.GCGrace); removed is how many subjects went away.
type Collector interface {
	Collect(ctx context.Context, lookup markers.Lookup) (removed int, err error)
}

// Scope is one unit of garbage collection of a ScopedCollector: what one seed role's derived
// roles hold (AWS), or every identity binding (Azure).
type Scope struct {
	// Key names the scope (AWS: the seed role ARN). Collections are rate-limited per key.
	Key string
	// Claim is the claim a ServiceAccount's markers (pending, granted) carry for what the scope
	// holds for it: the deletion of a ServiceAccount carrying this claim makes the scope due. An
	// empty Digest stands for every claim on Claim.Cloud.
	Claim markers.Claim
	// Full is set by the sweeper on its periodic full pass (GCInterval): the collector should
	// read the cloud afresh rather than trust a cached view, to catch what no event showed.
	Full bool
}

// matches reports whether the scope holds what claim c stands for.
func (s Scope) matches(c markers.Claim) bool {
	return s.Claim.Cloud == c.Cloud && (s.Claim.Digest == "" || c.Digest == "" || s.Claim.Digest == c.Digest)
}

// ScopedCollector is a Collector whose work divides into scopes. Only such collectors are
// driven by events precisely (issue 16): the deletion (or change) of a ServiceAccount that
// carried our markers makes due only the scopes its claims name, each collected at most at the
// rate of its token bucket (Config.GCScopeInterval, GCScopeBurst); the deletion of any other
// ServiceAccount makes nothing due. A plain Collector is run on every deletion (rate-limited
// too) and every GCInterval.
type ScopedCollector interface {
	Collector
	// Scopes lists the scopes to collect, from the server's own configuration and state (AWS:
	// the configured seeds it holds a lock Lease for), never from annotations of objects.
	Scopes(ctx context.Context) ([]Scope, error)
	// CollectScope collects one scope that Scopes returned.
	CollectScope(ctx context.Context, scope Scope, lookup markers.Lookup) (removed int, err error)
}

// Config tunes the sweeper. Zero fields take the defaults below.
type Config struct {
	// MaxHold is how long a Job stays held at most; after it the Job is released anyway, with a
	// Warning Event saying what was missing, so no backup hangs silently (--max-hold).
	MaxHold time.Duration
	// ChecksInARow is how many consecutive successful sts:AssumeRoleWithWebIdentity calls prove
	// an AWS identity (read by the AWS checker; kept here so one flag reaches both).
	ChecksInARow int
	// GCInterval is the period of the full garbage collection sweep.
	GCInterval time.Duration
	// GCGrace: a ServiceAccount must be seen missing for this long before its subjects are
	// collected. An authenticated review (client certificate) writes at admission, before any
	// cache (or even etcd) has the ServiceAccount; without a grace period a collection running
	// at that moment would take the fresh subject away again.
	GCGrace time.Duration
	// Handoff is how long the leader's finisher leaves a pending ServiceAccount to the writer (its
	// own, or without a sweeper the planning replica's) before retrying it with backoff.
	Handoff time.Duration
	// GCScopeInterval and GCScopeBurst are the token bucket of event-driven collections per
	// scope (per seed role): at most GCScopeBurst at once, then one per GCScopeInterval. The
	// periodic full collection (GCInterval) is not counted. A burst of deletions therefore costs
	// IAM a bounded number of reads of one seed's roles, whoever deletes.
	GCScopeInterval time.Duration
	GCScopeBurst    int

	// Namespace and LeaseName locate the leader election Lease (the webhook's own namespace).
	Namespace string
	LeaseName string
	// Identity names this replica in the Lease (the Pod name).
	Identity string
	// LeaseDuration, RenewDeadline and RetryPeriod are the leader election's timings (kube/election).
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration

	// BackoffInitial and BackoffMax bound the per-Job retry delay between readiness checks.
	BackoffInitial, BackoffMax time.Duration
	// FinishBackoffInitial and FinishBackoffMax bound retries of a failing assignment, gentler
	// than Jobs' because a failing cloud call should not be hammered.
	FinishBackoffInitial, FinishBackoffMax time.Duration
	// CheckTimeout bounds one readiness check (token, IAM read, STS calls).
	CheckTimeout time.Duration
	// ReadyTTL is how long a proven ServiceAccount stays "known ready" for admission.
	ReadyTTL time.Duration
	// Workers is the number of Jobs checked at once.
	Workers int
	// FinishWorkers is the number of pending ServiceAccounts finished at once. Concurrent
	// finishes for one seed share a lock session (the Assigner commits them together), so more
	// workers mean fewer IAM writes per ServiceAccount, not more.
	FinishWorkers int
	// WriterWorkers is the number of pending ServiceAccounts the writer finishes at once. They
	// mostly wait for a seed's lock session, where they are written together: a round takes
	// everyone waiting, so in a burst the workers bound a round's batch (32 made a round of 100 ms
	// IAM calls carry too few of a burst's 100 new ServiceAccounts a second).
	WriterWorkers int
}

// Defaults.
const (
	DefaultMaxHold       = 10 * time.Minute
	DefaultChecksInARow  = 2
	DefaultGCInterval    = 10 * time.Minute
	DefaultGCGrace       = time.Minute
	DefaultLeaseName     = "credential-webhook-sweeper"
	DefaultLeaseDuration = 15 * time.Second
	DefaultRenewDeadline = 10 * time.Second
	DefaultRetryPeriod   = 2 * time.Second
	// Readiness checks per held Job: every check is one TokenRequest and one STS call, cheap
	// enough to repeat every 2 s, and a Job should start within about 2 s of its trust
	// propagating (IAM takes 10-20 s; a 30 s ceiling made Jobs wait up to a step longer).
	DefaultBackoffInitial       = 500 * time.Millisecond
	DefaultBackoffMax           = 2 * time.Second
	DefaultFinishBackoffInitial = 5 * time.Second
	DefaultFinishBackoffMax     = 5 * time.Minute
	DefaultCheckTimeout         = 30 * time.Second
	DefaultReadyTTL             = 10 * time.Minute
	// A check is mostly waiting, on about ten round trips in a row with the default write
	// bucket check (TokenRequest, iam:GetRole, two STS calls, three S3 requests per bucket):
	// with IAM throttling a third of the calls, 2 workers released 300 Jobs in minutes. Serve's
	// --sweeper-check-workers.
	DefaultWorkers       = 8
	DefaultFinishWorkers = 4
	DefaultWriterWorkers = 128
	DefaultHandoff       = 5 * time.Second
	// A deletion is collected after GCGrace (1 min): two passes (the one that sees it missing,
	// the one after the grace) fit the burst; a steady stream of deletions costs one read of the
	// seed's roles per 30 s.
	DefaultGCScopeInterval = 30 * time.Second
	DefaultGCScopeBurst    = 3
)

// WithDefaults returns c with zero fields set to the defaults.
func (c Config) WithDefaults() Config {
	set := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	set(&c.MaxHold, DefaultMaxHold)
	set(&c.GCInterval, DefaultGCInterval)
	set(&c.GCGrace, DefaultGCGrace)
	set(&c.Handoff, DefaultHandoff)
	set(&c.GCScopeInterval, DefaultGCScopeInterval)
	if c.GCScopeBurst <= 0 {
		c.GCScopeBurst = DefaultGCScopeBurst
	}
	set(&c.LeaseDuration, DefaultLeaseDuration)
	set(&c.RenewDeadline, DefaultRenewDeadline)
	set(&c.RetryPeriod, DefaultRetryPeriod)
	set(&c.BackoffInitial, DefaultBackoffInitial)
	set(&c.BackoffMax, DefaultBackoffMax)
	set(&c.FinishBackoffInitial, DefaultFinishBackoffInitial)
	set(&c.FinishBackoffMax, DefaultFinishBackoffMax)
	set(&c.CheckTimeout, DefaultCheckTimeout)
	set(&c.ReadyTTL, DefaultReadyTTL)
	if c.ChecksInARow <= 0 {
		c.ChecksInARow = DefaultChecksInARow
	}
	if c.LeaseName == "" {
		c.LeaseName = DefaultLeaseName
	}
	if c.Workers <= 0 {
		c.Workers = DefaultWorkers
	}
	if c.WriterWorkers <= 0 {
		c.WriterWorkers = DefaultWriterWorkers
	}
	if c.FinishWorkers <= 0 {
		c.FinishWorkers = DefaultFinishWorkers
	}
	return c
}

// holdPolicy is the timing of holds (max hold, check backoff and timeout) for package hold.
func (c Config) holdPolicy() hold.Policy {
	return hold.Policy{MaxHold: c.MaxHold, BackoffInitial: c.BackoffInitial, BackoffMax: c.BackoffMax, CheckTimeout: c.CheckTimeout}
}

// Deps are the sweeper's collaborators. Every one may be nil except where noted.
type Deps struct {
	// AWS checks ServiceAccounts carrying a seed role; Azure those naming a managed identity.
	// A nil checker means that cloud's identities count as working once assigned.
	AWS, Azure Checker
	// Clouds finish pending claims (the writer on every replica, the leader as the fallback);
	// none disables both.
	Clouds []Cloud
	// Namespaces says whether a namespace may still hold cloud identities (the allowlist may
	// have changed since admission); nil allows every namespace.
	Namespaces func(namespace string) bool
	// Collectors run on ServiceAccount deletions and every GCInterval.
	Collectors []Collector
	// Ready is filled with proven ServiceAccounts; admission reads it. nil: New makes one.
	Ready *ReadyCache
	// Registerer receives the metrics (nil: not registered).
	Registerer prometheus.Registerer
	// Usage reports how full each seed's derived roles are, for the leader's per-seed gauges
	// (gauges.go); nil: no per-seed gauges.
	Usage UsageReporter
	// Recorder records Events; nil: New records to the Kubernetes API as "credential-webhook".
	Recorder record.EventRecorder
	// ServiceAccounts, when set, is a running shared informer over every ServiceAccount (the
	// admission cache's, stripped to metadata). The sweeper subscribes to it instead of watching
	// and caching every ServiceAccount a second time; it neither starts nor stops it.
	ServiceAccounts cache.SharedIndexInformer
	// Strip is the transforms of the informers, shared with ServiceAccounts' so that every cache
	// shares one copy of repeated strings. nil: New makes one.
	Strip *Stripper
	// SeedLeaseAllowed says whether the key of a per-seed lock Lease (a seed role ARN) is still
	// a configured seed. The leader deletes, on every full collection, the lock Leases this
	// server created (managed label, name derived from the key) whose key it does not allow and
	// that nobody holds. nil: lock Leases are left alone.
	SeedLeaseAllowed func(key string) bool
	// SeedLeasesListed receives the managed Leases of Config.Namespace (the namespace first)
	// after each listing for the pruning above, without those it deleted: the leader's lock
	// (kube.LeaseLocker.Observe) learns which seed Leases exist and in what state, so its first
	// lock session of a seed saves a Get, at no extra API call. nil: the list is not shared.
	SeedLeasesListed func(namespace string, leases []coordinationv1.Lease)
}
