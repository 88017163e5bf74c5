package admission

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the server's Prometheus collectors. Every name carries the credential_webhook_
// prefix. They live on a registry passed in by main, never on the global default registry.
//
// Every label value comes from a fixed set (see the label functions below): nothing a review
// carries reaches a label as such, so a tenant posting forged reviews with made-up kinds or
// megabyte-long operations cannot create series (issue 16).
type Metrics struct {
	Requests *prometheus.CounterVec
	Duration *prometheus.HistogramVec
	PatchOps *prometheus.CounterVec
	Panics   *prometheus.CounterVec
	// Rejected counts reviews refused before they were read: too many in flight (429) or
	// larger than the route accepts (413), by route and reason.
	Rejected *prometheus.CounterVec
	// InFlight is the number of reviews being read or answered.
	InFlight prometheus.Gauge
}

// NewMetrics creates the collectors and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "credential_webhook_requests_total",
			Help: "Admission reviews answered, by route, kind, operation, decision and HTTP code. kind and operation are the known values or \"other\" (\"\" when the review could not be read).",
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
		Rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "credential_webhook_reviews_rejected_total",
			Help: "Reviews refused before being read, by route and reason: inflight (--max-inflight-review-bytes or --max-inflight-reviews reached, HTTP 429) or too-large (over the route's body limit, HTTP 413).",
		}, []string{"route", "reason"}),
		InFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "credential_webhook_reviews_in_flight",
			Help: "Admission reviews being read or answered now.",
		}),
	}
	reg.MustRegister(m.Requests, m.Duration, m.PatchOps, m.Panics, m.Rejected, m.InFlight)
	return m
}

// Rejection reasons, the values of the reviews_rejected_total reason label.
const (
	RejectInFlight = "inflight"
	RejectTooLarge = "too-large"
)

// otherLabel stands for every value outside a label's fixed set.
const otherLabel = "other"

// kindLabel maps a review's kind to the metric label: the kinds this server serves, "" when
// the review could not be read, "other" for anything else.
func kindLabel(kind string) string {
	switch kind {
	case "", "Pod", "Job", "ServiceAccount":
		return kind
	}
	return otherLabel
}

// operationLabel maps a review's operation to the metric label: the four admission
// operations, "" when the review could not be read, "other" for anything else.
func operationLabel(op string) string {
	switch op {
	case "", "CREATE", "UPDATE", "DELETE", "CONNECT":
		return op
	}
	return otherLabel
}

// decisionLabel keeps the decision label within its fixed set.
func decisionLabel(d string) string {
	switch d {
	case "allowed", "patched", "denied", "ignored", "error":
		return d
	}
	return otherLabel
}

// codeLabel keeps the code label within the codes this handler answers with.
func codeLabel(code int) string {
	switch code {
	case 200, 400, 413, 429, 500, 503:
		return strconv.Itoa(code)
	}
	return otherLabel
}
