package sweeper

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"

	"go.klusters.dev/credential-webhook/annotations"
)

// Sweeper runs the background loops while this replica holds the leader Lease.
type Sweeper struct {
	cs          kubernetes.Interface
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

	// leadMu is held for a whole leadership term, so a new term (or the Lease release on
	// shutdown) starts only after the previous term's workers stopped.
	leadMu sync.Mutex
}

// New returns a Sweeper. It registers its metrics on deps.Registerer (once per registry).
func New(cs kubernetes.Interface, cfg Config, deps Deps, log *slog.Logger) *Sweeper {
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
	if s.recorder == nil {
		s.broadcaster = record.NewBroadcaster()
		s.recorder = s.broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "credential-webhook"})
	}
	return s
}

// startEvents starts recording Events to the API once, for whichever of Run and RunWriter
// starts first; the broadcaster lives as long as the process.
func (s *Sweeper) startEvents() {
	s.eventsOnce.Do(func() {
		s.broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: s.cs.CoreV1().Events("")})
	})
}

func metaFor(namespace, name string) metav1.ObjectMeta {
	return metav1.ObjectMeta{Namespace: namespace, Name: name}
}

// Ready is the cache of proven ServiceAccounts, for the Job admission plugin.
func (s *Sweeper) Ready() *ReadyCache { return s.ready }

// RunWriter writes what admission on this replica planned, as soon as the ServiceAccount is
// seen persisted (every replica runs it; see writer.go). It blocks until ctx ends. Without
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

// Run campaigns for the leader Lease and, while it holds it, releases held Jobs, finishes the
// pending ServiceAccounts the writers left (after Config.Handoff) and collects garbage. It
// blocks until ctx ends, or returns an error at once when it cannot campaign at all (a sweeper
// that silently does nothing would leave every held Job held until max-hold). On the way out it
// stops its workers first and then releases the Lease (ReleaseOnCancel), so another replica
// takes over within one retry period instead of waiting for the Lease to expire.
func (s *Sweeper) Run(ctx context.Context) error {
	if s.broadcaster != nil {
		s.startEvents()
	}
	lock := &renewalTracker{Interface: &resourcelock.LeaseLock{
		LeaseMeta:  metaFor(s.cfg.Namespace, s.cfg.LeaseName),
		Client:     s.cs.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: s.cfg.Identity},
		Labels:     map[string]string{annotations.ManagedLabel: "true"},
	}}
	s.log.Info("sweeper campaigning for leadership", "lease", s.cfg.Namespace+"/"+s.cfg.LeaseName, "identity", s.cfg.Identity)
	for ctx.Err() == nil {
		// The elector runs on its own context: when ctx ends, the term's workers stop first
		// (lead watches ctx too), and only then is the elector cancelled, releasing the Lease.
		runCtx, cancelRun := context.WithCancel(context.WithoutCancel(ctx))
		stop := context.AfterFunc(ctx, func() {
			s.leadMu.Lock()
			s.leadMu.Unlock() //nolint:staticcheck // waiting for the current term to end
			cancelRun()
		})
		le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
			Lock:            lock,
			Name:            "credential-webhook-sweeper",
			LeaseDuration:   s.cfg.LeaseDuration,
			RenewDeadline:   s.cfg.RenewDeadline,
			RetryPeriod:     s.cfg.RetryPeriod,
			ReleaseOnCancel: true,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: func(lctx context.Context) { s.lead(lctx, ctx, lock, cancelRun) },
				OnStoppedLeading: func() {},
				OnNewLeader: func(id string) {
					s.log.Info("sweeper leader", "leader", id, "self", id == s.cfg.Identity)
				},
			},
		})
		if err != nil {
			stop()
			cancelRun()
			return fmt.Errorf("sweeper: invalid leader election configuration: %w", err)
		}
		le.Run(runCtx)
		stop()
		cancelRun()
		if ctx.Err() != nil {
			break
		}
		s.log.Warn("sweeper lost its leader Lease; campaigning again")
		select {
		case <-ctx.Done():
		case <-time.After(s.cfg.RetryPeriod):
		}
	}
	// A term that started late (its context already cancelled) returns at once; wait for it.
	s.leadMu.Lock()
	s.leadMu.Unlock() //nolint:staticcheck // waiting for the current term to end
	return nil
}

// lead runs one leadership term until the Lease is lost (lctx), the process stops (outer) or no
// renewal succeeded for renewalBudget: client-go notices a lost Lease late (see renewalTracker),
// so the term stops itself before the Lease can expire for the other replicas. When the term
// ends it stops its elector (stopElector), after the workers stopped: a replica never holds the
// Lease while doing nothing, and Run campaigns again.
func (s *Sweeper) lead(lctx, outer context.Context, lock *renewalTracker, stopElector context.CancelFunc) {
	s.leadMu.Lock()
	defer s.leadMu.Unlock()
	defer stopElector()
	ctx, cancel := context.WithCancel(lctx)
	defer cancel()
	defer context.AfterFunc(outer, cancel)()
	if ctx.Err() != nil {
		return
	}
	budget := renewalBudget(s.cfg)
	expired := func(since time.Duration) {
		s.log.Warn(fmt.Sprintf("sweeper Lease not renewed for %s; stopping work before it expires", since.Round(time.Millisecond)),
			"identity", s.cfg.Identity, "renewDeadline", s.cfg.RenewDeadline, "leaseDuration", s.cfg.LeaseDuration)
		cancel()
	}
	// This term may have waited for the previous one to end: check before starting any work.
	if since, overdue := leaseOverdue(lock, budget); overdue {
		expired(since)
		return
	}
	var watchdog sync.WaitGroup
	watchdog.Go(func() { s.watchLease(ctx, lock, budget, expired) })
	s.log.Info("sweeper leading", "identity", s.cfg.Identity)
	s.m.leader.Set(1)
	s.work(ctx)
	s.m.leader.Set(0)
	cancel()
	watchdog.Wait()
	s.log.Info("sweeper stopped leading", "identity", s.cfg.Identity)
}
