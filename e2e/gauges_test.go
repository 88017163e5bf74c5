package e2e

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/e2e/harness"
	"go.klusters.dev/credential-webhook/sweeper"
)

// gauge is the value of an unlabelled gauge, or of the one whose labels include want; ok is
// false when reg exports no such series.
func gauge(t *testing.T, reg *prometheus.Registry, name string, want map[string]string) (v float64, ok bool) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if labelsMatch(m, want) && m.Gauge != nil {
				return m.Gauge.GetValue(), true
			}
		}
	}
	return 0, false
}

// The sweeper leader exports the age of the Job held longest and the pending ServiceAccounts
// from its informer caches; a replica that does not lead exports neither, and the leader stops
// once it stops leading.
func TestSweeperLeaderExportsHeldJobAge(t *testing.T) {
	ns := cluster.Namespace(t)
	cluster.StartWebhook(t, harness.WebhookOptions{Args: []string{"--sweeper=false"}}) // this test runs its own sweepers
	// Its ServiceAccount does not exist: held until max hold (2 minutes in fastConfig).
	job := createHeldJob(t, ns, "missing-"+shortName(ns))
	heldSince, err := time.Parse(time.RFC3339, job.Annotations[annotations.HeldSince])
	if err != nil {
		t.Fatal(err)
	}
	leader := startSweeper(t, fastConfig("sweeper-"+ns, "replica-a"), webhookClient(t, nil), sweeper.Deps{})
	const oldest = "credential_webhook_held_job_oldest_age_seconds"
	var age float64
	flowPoll(t, 30*time.Second, "the leader's held-Job age gauge at one second or more", func() (bool, error) {
		v, ok := gauge(t, leader.reg, oldest, nil)
		age = v
		return ok && v >= 1, nil
	})
	if upper := time.Since(heldSince).Seconds() + 1; age > upper {
		t.Errorf("%s = %v, more than the Job has been held (%v)", oldest, age, upper)
	}
	if v, ok := gauge(t, leader.reg, "credential_webhook_pending_serviceaccounts", map[string]string{"cloud": "aws"}); !ok || v != 0 {
		t.Errorf("pending ServiceAccounts (aws) = %v (exported %v), want 0", v, ok)
	}

	follower := startSweeper(t, fastConfig("sweeper-"+ns, "replica-b"), webhookClient(t, nil), sweeper.Deps{})
	time.Sleep(2 * time.Second) // a few retry periods: it campaigns and stays a follower
	if v, ok := gauge(t, follower.reg, oldest, nil); ok {
		t.Errorf("a replica that does not lead exports %s = %v", oldest, v)
	}
	if v, _ := gauge(t, follower.reg, "credential_webhook_sweeper_leader", nil); v != 0 {
		t.Fatalf("replica-b leads (%v): the test's premise failed", v)
	}

	leader.stop()
	if v, ok := gauge(t, leader.reg, oldest, nil); ok {
		t.Errorf("after it stopped leading, the replica still exports %s = %v", oldest, v)
	}
	// replica-b takes over and exports the same Job's age.
	flowPoll(t, 30*time.Second, "the new leader's held-Job age gauge", func() (bool, error) {
		v, ok := gauge(t, follower.reg, oldest, nil)
		return ok && v >= age, nil
	})
}
