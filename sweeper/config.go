// Package sweeper is the background half of credential-webhook: one active replica (Lease leader
// election) releases the Jobs that admission held once their credentials really work, finishes
// the ServiceAccount assignments admission accepted but could not complete, and collects trust
// policy subjects and bindings of deleted ServiceAccounts.
//
// What it may touch follows the design's security model: it releases only Jobs carrying our
// held-since annotation and KubeStash's managed-by label, and it assigns only ServiceAccounts
// carrying our pending marker, which only admission sets after checking the requester.
package sweeper

import (
	"context"
	"time"

	corev1 "k8s.io/api/core/v1"
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

// Assigner finishes the assignment of a ServiceAccount that admission accepted (it carries
// annotations.Pending). It returns the output annotations to set (role ARN, client and tenant
// IDs); the sweeper writes them and removes the pending marker in one patch.
type Assigner interface {
	Finish(ctx context.Context, sa *corev1.ServiceAccount) (annotations map[string]string, err error)
}

// Collector removes what a cloud holds for ServiceAccounts that no longer exist (trust policy
// subjects, identity binding subjects). existing answers from the sweeper's ServiceAccount cache
// with a grace period (see Config.GCGrace); removed is how many subjects went away.
type Collector interface {
	Collect(ctx context.Context, existing func(namespace, name string) bool) (removed int, err error)
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
	// collected. Admission assigns a role while the ServiceAccount is still being created, before
	// any cache (or even etcd) has it; without a grace period a collection running at that
	// moment would take the fresh subject away again.
	GCGrace time.Duration

	// Namespace and LeaseName locate the leader election Lease (the webhook's own namespace).
	Namespace string
	LeaseName string
	// Identity names this replica in the Lease (the Pod name).
	Identity string
	// LeaseDuration, RenewDeadline and RetryPeriod are client-go's leader election timings.
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
	// A check is two network round trips (TokenRequest, STS) and mostly waiting: with IAM
	// throttling a third of the calls, 2 workers released 300 Jobs in minutes.
	DefaultWorkers       = 8
	DefaultFinishWorkers = 4
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
	if c.FinishWorkers <= 0 {
		c.FinishWorkers = DefaultFinishWorkers
	}
	return c
}

// Deps are the sweeper's collaborators. Every one may be nil except where noted.
type Deps struct {
	// AWS checks ServiceAccounts carrying a seed role; Azure those naming a managed identity.
	// A nil checker means that cloud's identities count as working once assigned.
	AWS, Azure Checker
	// Assigner finishes pending ServiceAccounts; nil disables the finisher.
	Assigner Assigner
	// Collectors run on ServiceAccount deletions and every GCInterval.
	Collectors []Collector
	// Ready is filled with proven ServiceAccounts; admission reads it. nil: New makes one.
	Ready *ReadyCache
	// Registerer receives the metrics (nil: not registered).
	Registerer prometheus.Registerer
	// Recorder records Events; nil: New records to the Kubernetes API as "credential-webhook".
	Recorder record.EventRecorder
	// ServiceAccounts, when set, is a running shared informer over every ServiceAccount (the
	// admission cache's, stripped to metadata). The sweeper subscribes to it instead of watching
	// and caching every ServiceAccount a second time; it neither starts nor stops it.
	ServiceAccounts cache.SharedIndexInformer
}
