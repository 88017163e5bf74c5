package admission

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the server's Prometheus collectors. Every name carries the credential_webhook_
// prefix. They live on a registry passed in by main, never on the global default registry.
type Metrics struct {
	Requests *prometheus.CounterVec
	Duration *prometheus.HistogramVec
	PatchOps *prometheus.CounterVec
	Panics   *prometheus.CounterVec
}

// NewMetrics creates the collectors and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "credential_webhook_requests_total",
			Help: "Admission reviews answered, by route, kind, operation, decision and HTTP code.",
		}, []string{"route", "kind", "operation", "decision", "code"}),
		Duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "credential_webhook_request_duration_seconds",
			Help: "Time to answer an admission review, by route.",
			// Pod and Job reviews take tens of microseconds; ServiceAccount reviews that call a
			// cloud take up to seconds. The buckets cover both.
			Buckets: []float64{.00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"route"}),
		PatchOps: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "credential_webhook_patch_operations_total",
			Help: "JSON patch operations returned, by route.",
		}, []string{"route"}),
		Panics: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "credential_webhook_panics_total",
			Help: "Panics recovered while handling a review, by route.",
		}, []string{"route"}),
	}
	reg.MustRegister(m.Requests, m.Duration, m.PatchOps, m.Panics)
	return m
}
