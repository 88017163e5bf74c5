package sweeper

import (
	"cmp"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"

	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/hold"
	"go.klusters.dev/credential-webhook/markers"
)

// The state gauges (issue 17): what an operator needs to see trouble before it is a failed
// backup. They are computed when Prometheus scrapes, from what the leader already holds in
// memory (its Job and ServiceAccount informer caches, the AWS provider's published role cache),
// so a scrape costs no API or cloud call. Only the sweeper leader exports them: the other
// replicas' caches are partial (their role caches hold only the seeds their own admission
// touched), and one exporter means no double counting. The decisions are the pure functions
// below; stateCollector only renders them.

// SeedUsage is how full one seed's derived roles are.
type SeedUsage struct {
	// Seed is the seed role ARN. Only seeds the allowlist admits and the provider holds a cache
	// for are reported (see UsageReporter).
	Seed string
	// Roles is the number of derived roles (<seed>-<i>), foreign ones (named like ours, not
	// tagged) included: their index is taken.
	Roles int
	// Subjects is the number of ServiceAccount subjects the derived roles list.
	Subjects int
	// Fill is the share of the seed's ceiling in use: the trust policy characters of its
	// derived roles over --role-creation-limit × the trust policy quota (a foreign or
	// unreadable role counts as full). A seed whose every role is full is above 0.9.
	Fill float64
}

// UsageReporter reports the seeds' usage from memory, without a cloud call, and
// --role-creation-limit. The AWS provider's Assigner implements it.
type UsageReporter interface {
	SeedUsage() (seeds []SeedUsage, roleCreationLimit int)
}

// MaxSeedSeries caps the seeds the per-seed gauges report, so the label set stays bounded even
// when a glob in the seed allowlist admits many seeds; the rest are counted in
// credential_webhook_derived_role_seeds_omitted.
const MaxSeedSeries = 50

// HeldJobStats counts the held Jobs (hold.IsHeld) among jobs and returns the age at now of the
// one held longest (zero when none is).
func HeldJobStats(jobs []*batchv1.Job, now time.Time) (held int, oldest time.Duration) {
	for _, j := range jobs {
		held, oldest = countHeld(j, now, held, oldest)
	}
	return held, oldest
}

// countHeld adds j to the counts of HeldJobStats.
func countHeld(j *batchv1.Job, now time.Time, held int, oldest time.Duration) (int, time.Duration) {
	if !hold.IsHeld(j) {
		return held, oldest
	}
	return held + 1, max(oldest, now.Sub(hold.HeldSince(j)))
}

// PendingByCloud counts the ServiceAccounts whose pending marker claims each cloud (deleted ones
// are left out: nothing finishes them). Every cloud of markers is a key, zero included; a
// malformed marker counts on every cloud, as markers.PendingOn has it.
func PendingByCloud(sas []*corev1.ServiceAccount) map[string]int {
	out := map[string]int{markers.AWS: 0, markers.Azure: 0}
	for _, sa := range sas {
		v := sa.Annotations[annotations.Pending]
		if v == "" || sa.DeletionTimestamp != nil {
			continue
		}
		for cloud := range out {
			if markers.PendingOn(v, cloud) {
				out[cloud]++
			}
		}
	}
	return out
}

// BoundSeeds returns at most limit seeds, sorted by seed ARN (so the same seeds keep their
// series from scrape to scrape), and how many were left out. A seed reported twice keeps its
// first entry.
func BoundSeeds(seeds []SeedUsage, limit int) (kept []SeedUsage, omitted int) {
	sorted := slices.SortedStableFunc(slices.Values(seeds), func(a, b SeedUsage) int { return cmp.Compare(a.Seed, b.Seed) })
	sorted = slices.CompactFunc(sorted, func(a, b SeedUsage) bool { return a.Seed == b.Seed })
	if len(sorted) <= limit {
		return sorted, 0
	}
	return sorted[:limit], len(sorted) - limit
}

// stateSource is what one leadership term lends the collector: its informers' caches.
type stateSource struct {
	heldJobs func(now time.Time) (held int, oldest time.Duration) // HeldJobStats of the cached Jobs
	sas      func() []*corev1.ServiceAccount
}

// stateCollector exports the state gauges while a term lends it its caches (set), and nothing
// otherwise.
type stateCollector struct {
	usage UsageReporter
	now   func() time.Time

	mu  sync.Mutex
	src *stateSource

	oldestHeld, pending                   *prometheus.Desc
	roles, subjects, fill, limit, omitted *prometheus.Desc
}

func newStateCollector(usage UsageReporter) *stateCollector {
	return &stateCollector{
		usage: usage,
		now:   time.Now,
		oldestHeld: prometheus.NewDesc("credential_webhook_held_job_oldest_age_seconds",
			"Age of the Job held longest (since our held-since annotation), 0 when none is held; exported by the sweeper leader only.", nil, nil),
		pending: prometheus.NewDesc("credential_webhook_pending_serviceaccounts",
			"ServiceAccounts whose cloud identity was planned at admission but not written yet (our pending marker), by cloud; exported by the sweeper leader only.", []string{"cloud"}, nil),
		roles: prometheus.NewDesc("credential_webhook_derived_roles",
			"Derived IAM roles of a seed role, as the leader's cache last read them; at most 50 seeds, exported by the sweeper leader only.", []string{"seed"}, nil),
		subjects: prometheus.NewDesc("credential_webhook_derived_role_subjects",
			"ServiceAccount subjects the derived roles of a seed list, as the leader's cache last read them.", []string{"seed"}, nil),
		fill: prometheus.NewDesc("credential_webhook_derived_role_fill_ratio",
			"Share of a seed's ceiling in use: trust policy characters of its derived roles over --role-creation-limit × the trust policy quota.", []string{"seed"}, nil),
		limit: prometheus.NewDesc("credential_webhook_role_creation_limit",
			"Derived roles a seed may have at most (--role-creation-limit).", nil, nil),
		omitted: prometheus.NewDesc("credential_webhook_derived_role_seeds_omitted",
			"Seeds left out of the per-seed gauges because more than 50 are cached.", nil, nil),
	}
}

// set lends the collector a term's caches; nil when the term ends.
func (c *stateCollector) set(src *stateSource) {
	c.mu.Lock()
	c.src = src
	c.mu.Unlock()
}

// Describe implements prometheus.Collector.
func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.oldestHeld, c.pending, c.roles, c.subjects, c.fill, c.limit, c.omitted} {
		ch <- d
	}
}

// Collect implements prometheus.Collector: it reads the caches, never the API.
func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	src := c.src
	c.mu.Unlock()
	if src == nil {
		return
	}
	_, oldest := src.heldJobs(c.now())
	ch <- prometheus.MustNewConstMetric(c.oldestHeld, prometheus.GaugeValue, oldest.Seconds())
	for cloud, n := range PendingByCloud(src.sas()) {
		ch <- prometheus.MustNewConstMetric(c.pending, prometheus.GaugeValue, float64(n), cloud)
	}
	if c.usage == nil {
		return
	}
	seeds, limit := c.usage.SeedUsage()
	kept, omitted := BoundSeeds(seeds, MaxSeedSeries)
	ch <- prometheus.MustNewConstMetric(c.limit, prometheus.GaugeValue, float64(limit))
	ch <- prometheus.MustNewConstMetric(c.omitted, prometheus.GaugeValue, float64(omitted))
	for _, s := range kept {
		ch <- prometheus.MustNewConstMetric(c.roles, prometheus.GaugeValue, float64(s.Roles), s.Seed)
		ch <- prometheus.MustNewConstMetric(c.subjects, prometheus.GaugeValue, float64(s.Subjects), s.Seed)
		ch <- prometheus.MustNewConstMetric(c.fill, prometheus.GaugeValue, s.Fill, s.Seed)
	}
}

// cacheSource lends the collector the term's informer caches.
func (t *term) cacheSource() *stateSource {
	return &stateSource{
		heldJobs: func(now time.Time) (held int, oldest time.Duration) {
			// One Job at a time, as the hold package reads it: no copy of the cache per scrape.
			for _, obj := range t.jobs.List() {
				if j, ok := asJob(obj); ok {
					held, oldest = countHeld(&j, now, held, oldest)
				}
			}
			return held, oldest
		},
		sas: func() []*corev1.ServiceAccount {
			sas, _ := t.saLister.List(labels.Everything())
			return sas
		},
	}
}
