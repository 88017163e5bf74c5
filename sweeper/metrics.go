package sweeper

import "github.com/prometheus/client_golang/prometheus"

// Release reasons, the values of the releases_total reason label.
const (
	ReleaseReady       = "ready"
	ReleaseMaxHold     = "max-hold"
	ReleaseResumedElse = "resumed-elsewhere"
)

type metrics struct {
	heldJobs          prometheus.Gauge
	holdDuration      prometheus.Histogram
	releases          *prometheus.CounterVec
	subjectsCollected prometheus.Counter
	checks            *prometheus.CounterVec
	finishes          *prometheus.CounterVec
	gcRuns            *prometheus.CounterVec
	gcLastFull        prometheus.Gauge
	leader            prometheus.Gauge
	// state are the gauges computed at scrape time from the leader's caches (gauges.go).
	state *stateCollector
}

func newMetrics(reg prometheus.Registerer, usage UsageReporter) *metrics {
	m := &metrics{
		state: newStateCollector(usage),
		heldJobs: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "credential_webhook_held_jobs",
			Help: "Jobs held by admission that the sweeper is waiting to release (0 on replicas that are not the sweeper leader).",
		}),
		holdDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "credential_webhook_hold_duration_seconds",
			Help:    "How long released Jobs were held, from admission to release.",
			Buckets: []float64{1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200},
		}),
		releases: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "credential_webhook_releases_total",
			Help: "Held Jobs released, by reason: ready (credentials proven), max-hold (released without working credentials), resumed-elsewhere (someone else resumed it; only our annotations were removed).",
		}, []string{"reason"}),
		subjectsCollected: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "credential_webhook_subjects_collected_total",
			Help: "Trust policy and binding subjects of deleted ServiceAccounts removed by garbage collection.",
		}),
		checks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "credential_webhook_readiness_checks_total",
			Help: "Credential readiness checks by cloud and result (ready, not-ready, error).",
		}, []string{"cloud", "result"}),
		finishes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "credential_webhook_assignments_finished_total",
			Help: "Pending ServiceAccount assignments the sweeper attempted, by result (finished, error).",
		}, []string{"result"}),
		gcRuns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "credential_webhook_gc_runs_total",
			Help: "Garbage collection runs by result (ok, error).",
		}, []string{"result"}),
		gcLastFull: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "credential_webhook_gc_last_full_success_timestamp_seconds",
			Help: "When this replica last finished a full garbage collection (every configured seed's derived roles, drift repair, empty roles) without error, in Unix seconds; 0 until it has. Full passes run when a term starts and every --gc-interval: alert when it falls far behind.",
		}),
		leader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "credential_webhook_sweeper_leader",
			Help: "1 while this replica is the active sweeper.",
		}),
	}
	for _, r := range []string{ReleaseReady, ReleaseMaxHold, ReleaseResumedElse} {
		m.releases.WithLabelValues(r)
	}
	if reg != nil {
		reg.MustRegister(m.heldJobs, m.holdDuration, m.releases, m.subjectsCollected, m.checks, m.finishes, m.gcRuns, m.gcLastFull, m.leader, m.state)
	}
	return m
}
