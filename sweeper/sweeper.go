package sweeper

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"

	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/kube"
	"go.klusters.dev/credential-webhook/kube/election"
)

// Sweeper runs the background loops while this replica holds the leader Lease.
type Sweeper struct {
	cs          kube.Client
	cfg         Config
	deps        Deps
	log         *slog.Logger
	ready       *ReadyCache
	m           *metrics
	recorder    record.EventRecorder
	broadcaster record.EventBroadcaster // nil when Deps.Recorder was given
	now         func() time.Time
	// work runs one leadership term's workers until ctx ends (tests replace it to observe the
	// term's lifetime).
	work func(ctx context.Context)

	// clouds by name (Deps.Clouds); writer finishes what this replica planned.
	clouds map[string]Cloud
	writer *writer
	// gcBuckets rate-limit event-driven collections per scope, across leadership terms.
	gcBuckets *buckets

	eventsOnce sync.Once
	strip      *Stripper

	// campaigning: Run campaigns for the leader Lease in this process; leading: this replica
	// leads now. Together they decide which replica's writer writes (writer.go).
	campaigning, leading atomic.Bool
}

// New returns a Sweeper. It registers its metrics on deps.Registerer (once per registry).
func New(cs kube.Client, cfg Config, deps Deps, log *slog.Logger) *Sweeper {
	cfg = cfg.WithDefaults()
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Sweeper{cs: cs, cfg: cfg, deps: deps, log: log.With("component", "sweeper"), m: newMetrics(deps.Registerer, deps.Usage), now: time.Now}
	s.work = func(ctx context.Context) { newTerm(s).run(ctx) }
	s.gcBuckets = newBuckets(cfg.GCScopeInterval, cfg.GCScopeBurst)
	s.clouds = map[string]Cloud{}
	for _, c := range deps.Clouds {
		s.clouds[c.Name()] = c
	}
	s.writer = &writer{s: s, planned: map[string]time.Time{},
		q: workqueue.NewTypedDelayingQueueWithConfig(workqueue.TypedDelayingQueueConfig[string]{Name: "credential-webhook-planned-serviceaccounts"})}
	s.ready = deps.Ready
	if s.ready == nil {
		s.ready = NewReadyCache(cfg.ReadyTTL)
	}
	s.recorder = deps.Recorder
	s.strip = deps.Strip
	if s.strip == nil {
		s.strip = NewStripper()
	}
	if s.recorder == nil {
		s.broadcaster = record.NewBroadcaster()
		s.recorder = s.broadcaster.NewRecorder(kube.Scheme, corev1.EventSource{Component: "credential-webhook"})
	}
	return s
}

// startEvents starts recording Events to the API once, for whichever of Run and RunWriter
// starts first; the broadcaster lives as long as the process.
func (s *Sweeper) startEvents() {
	s.eventsOnce.Do(func() {
		s.broadcaster.StartRecordingToSink(kube.EventSink{Client: s.cs})
	})
}

// Ready is the cache of proven ServiceAccounts, for the Job admission plugin.
func (s *Sweeper) Ready() *ReadyCache { return s.ready }

// RunWriter writes pending ServiceAccounts as soon as they are seen persisted: every one while
// this replica leads, none while another does, what admission here planned without a sweeper
// (every replica runs it; see writer.go). It blocks until ctx ends. Without
// Deps.ServiceAccounts or clouds it returns at once. The error is for the composition root's
// runnables; the writer has no failure of its own to report (it retries and logs).
func (s *Sweeper) RunWriter(ctx context.Context) error {
	if s.deps.ServiceAccounts == nil || len(s.clouds) == 0 {
		return nil
	}
	if s.broadcaster != nil {
		s.startEvents()
	}
	s.writer.run(ctx, s.deps.ServiceAccounts)
	return nil
}

// Run campaigns for the leader Lease and, while it holds it, releases held Jobs, writes every
// pending ServiceAccount (RunWriter's writer at once, the finisher after Config.Handoff) and
// collects garbage. It
// blocks until ctx ends, or returns an error at once when it cannot campaign at all (a sweeper
// that silently does nothing would leave every held Job held until max-hold). A term ends when
// the Lease may no longer be held: no renewal succeeded within the elector's budget, which ends
// before the Lease expires for the other replicas. On the way out the term's workers stop first
// and then the Lease is released, so another replica takes over within one retry period instead
// of waiting for the Lease to expire.
func (s *Sweeper) Run(ctx context.Context) error {
	if s.broadcaster != nil {
		s.startEvents()
	}
	el := s.elector()
	if err := el.Validate(); err != nil {
		return fmt.Errorf("sweeper: invalid leader election configuration: %w", err)
	}
	s.campaigning.Store(true)
	defer s.campaigning.Store(false)
	s.log.Info("sweeper campaigning for leadership", "lease", s.cfg.Namespace+"/"+s.cfg.LeaseName, "identity", s.cfg.Identity)
	return el.Run(ctx, s.lead)
}

// elector is the sweeper's leader election on its Lease.
func (s *Sweeper) elector() *election.Elector {
	return &election.Elector{
		Leases:        s.cs.CoordinationV1().Leases(s.cfg.Namespace),
		Name:          s.cfg.LeaseName,
		Identity:      s.cfg.Identity,
		Labels:        map[string]string{annotations.ManagedLabel: "true"},
		LeaseDuration: s.cfg.LeaseDuration,
		RenewDeadline: s.cfg.RenewDeadline,
		RetryPeriod:   s.cfg.RetryPeriod,
		Log:           s.log,
		OnLeader: func(id string) {
			s.log.Info("sweeper leader", "leader", id, "self", id == s.cfg.Identity)
		},
		OnOverdue: func(since time.Duration) {
			s.log.Warn(fmt.Sprintf("sweeper Lease not renewed for %s; stopping work before it expires", since.Round(time.Millisecond)),
				"identity", s.cfg.Identity, "renewDeadline", s.cfg.RenewDeadline, "leaseDuration", s.cfg.LeaseDuration)
		},
	}
}

// lead runs one leadership term until ctx ends (the elector ends it when the Lease is lost or
// may be, or when the process stops).
func (s *Sweeper) lead(ctx context.Context) {
	s.log.Info("sweeper leading", "identity", s.cfg.Identity)
	s.m.leader.Set(1)
	s.leading.Store(true)
	s.writer.leadingStarted()
	s.work(ctx)
	s.leading.Store(false)
	s.m.leader.Set(0)
	s.log.Info("sweeper stopped leading", "identity", s.cfg.Identity)
}
