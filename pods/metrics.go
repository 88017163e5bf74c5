package pods

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the Pod plugin's counters. Their labels take values from fixed sets only: a Pod
// review carries nothing that reaches a label.
type Metrics struct {
	// Injected counts Pods given IRSA credentials, by whether the restic sidecar came with them.
	Injected *prometheus.CounterVec
	// ServiceAccountUnreadable counts Pods whose ServiceAccount could not be read, by reason
	// (not-found: usually the cache not having seen a fresh one yet; error) and by what
	// happened to the Pod (admitted without credentials, or denied for a retry).
	ServiceAccountUnreadable *prometheus.CounterVec
	// GrantWaits counts Pods whose ServiceAccount's role ARN was only planned (its AWS claim
	// pending) when they were reviewed, by outcome: granted while the review waited, admitted
	// with the plan after the wait (warning), or denied for a retry.
	GrantWaits *prometheus.CounterVec
}

// NewMetrics creates the collectors and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Injected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "credential_webhook_pods_injected_total",
			Help: "Pods given IRSA credentials at admission (dry runs and reinvocations that add nothing excluded), by sidecar: true when the restic aws-credentials sidecar was added too.",
		}, []string{"sidecar"}),
		ServiceAccountUnreadable: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "credential_webhook_pods_serviceaccount_unreadable_total",
			Help: "Pods whose ServiceAccount could not be read at admission, by reason (not-found or error) and action (admitted without credentials, or denied so the controller retries).",
		}, []string{"reason", "action"}),
		GrantWaits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "credential_webhook_pods_grant_waits_total",
			Help: "Pods whose ServiceAccount was still pending (its role ARN only planned) at admission, by outcome: granted while the review waited (--pod-grant-wait), admitted with the planned role, or denied so the controller retries.",
		}, []string{"outcome"}),
	}
	for _, o := range []string{grantGranted, grantPlanned, grantDenied} {
		m.GrantWaits.WithLabelValues(o)
	}
	reg.MustRegister(m.Injected, m.ServiceAccountUnreadable, m.GrantWaits)
	return m
}

// Label values.
const (
	reasonNotFound = "not-found"
	reasonError    = "error"
	actionAdmitted = "admitted"
	actionDenied   = "denied"
)

// unreadableLabels maps a failed ServiceAccount read to the counter's labels.
func unreadableLabels(notFound bool, policy MissingPolicy) (reason, action string) {
	reason, action = reasonError, actionAdmitted
	if notFound {
		reason = reasonNotFound
	}
	if policy == MissingDeny {
		action = actionDenied
	}
	return reason, action
}

// Outcomes of a Pod whose ServiceAccount was pending (GrantWaits).
const (
	grantGranted = "granted"
	grantPlanned = "admitted-planned"
	grantDenied  = "denied"
)

func (m *Metrics) grantWait(outcome string) {
	if m == nil {
		return
	}
	m.GrantWaits.WithLabelValues(outcome).Inc()
}

func (m *Metrics) injected(sidecar bool) {
	if m == nil {
		return
	}
	v := "false"
	if sidecar {
		v = "true"
	}
	m.Injected.WithLabelValues(v).Inc()
}

func (m *Metrics) unreadable(notFound bool, policy MissingPolicy) {
	if m == nil {
		return
	}
	m.ServiceAccountUnreadable.WithLabelValues(unreadableLabels(notFound, policy)).Inc()
}
