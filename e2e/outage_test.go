package e2e

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/e2e/harness"
	"go.klusters.dev/credential-webhook/hold"
	awsp "go.klusters.dev/credential-webhook/providers/aws"
	"go.klusters.dev/credential-webhook/sweeper"
	"go.klusters.dev/credential-webhook/sweeper/awscheck"
)

// The API server unreachable for a while (issue 9). One replica reaches the apiserver through a
// TCP proxy that the test cuts for ~20 s: every connection from the webhook to the apiserver is
// reset, while the apiserver still calls the webhook (through the frontend), exactly as when the
// network path from the webhook's node to the control plane breaks.
//
// What the product promises for that time, from reading it:
//   - admission never fails: ServiceAccount assignment needs the per-seed lock Lease, which it
//     cannot take, so the ServiceAccount is admitted with the pending marker within its budget
//     (8 s of the 10 s webhook timeout); a Job's ServiceAccount created during the outage is in
//     no cache and cannot be read, so the Job is held (ServiceAccountUnreadable) within its
//     budget (4 s of 5 s);
//   - the process stays up, and /healthz and /readyz keep answering 200: readiness means "this
//     replica can serve reviews" (a certificate is loaded and a TLS handshake with its own
//     listener works, see tlsProbe in cmd_serve.go), which it still can from its caches and
//     fallbacks. Reporting not-ready on an apiserver outage would take every replica out of the
//     Service at once and turn a degraded webhook into failed admissions (failurePolicy Fail);
//   - the sweeper gives its leadership up once it cannot renew the Lease (client-go's renew
//     deadline, 10 s), so no replica acts as leader on a Lease another one may take over.
//
// After Restore the replica must catch up by itself: lead again, finish every pending
// ServiceAccount (each subject in exactly one derived role) and release every held Job, once,
// with reason ready.
func TestOutageAPIServerUnreachableThenCatchUp(t *testing.T) {
	const (
		n       = 10               // session ServiceAccounts and Jobs created during the outage
		outage  = 20 * time.Second // at least: longer if the creates take longer
		catchUp = 120 * time.Second
	)
	ctx := context.Background()
	w := flowSetup(t, "kubestash-outage")
	proxy, kubeconfig := cluster.APIServerProxy(t)
	// --lease-duration bounds how long a per-seed lock left behind by a session the outage
	// interrupted blocks the next one (default 30 s); 15 s still exceeds any lock session.
	wh := w.replica(t, "a", "--kubeconfig="+kubeconfig, "--lease-duration=15s")
	flowWaitLeader(t, wh.Name)
	flowPoll(t, 30*time.Second, wh.Name+" running its sweeper term", func() (bool, error) {
		return flowMetric(t, wh, "credential_webhook_sweeper_leader", nil) == 1, nil
	})
	if st := proxy.Stats(); st.Forwarded == 0 {
		t.Fatalf("the replica never reached the apiserver through the proxy (stats %+v): is --kubeconfig ignored?", st)
	}

	probe := outageStartProbe(t, wh)
	iamBefore := cluster.IAM.Calls()
	cutAt := time.Now()
	proxy.Cut()
	t.Logf("%s: API path cut", cutAt.Format(time.StampMilli))

	// The operator creates the session ServiceAccounts, then their Jobs, as KubeStash does; all
	// at once, so they all fall into the outage although each review takes its whole budget.
	base := time.Now().Unix()
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("sample-backup-daemon-demo-session-%d", base+int64(i))
	}
	sas := outageParallel(names, func(name string) (*corev1.ServiceAccount, error) {
		return w.op.CoreV1().ServiceAccounts(w.ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{
			Name: name, Namespace: w.ns,
			Annotations: map[string]string{annotations.SeedRole: w.seed, annotations.BucketNames: harness.BucketNames},
		}}, metav1.CreateOptions{})
	})
	jobsCreated := outageParallel(names, func(name string) (*batchv1.Job, error) {
		return w.op.BatchV1().Jobs(w.ns).Create(ctx, flowJob(w.ns, name, name), metav1.CreateOptions{})
	})
	createsDone := time.Since(cutAt)

	pendingAtAdmission, roleAtAdmission := 0, 0
	holdReasons := map[string]int{}
	for i, name := range names {
		sa := sas[i]
		if sa.err != nil {
			t.Errorf("ServiceAccount %s: create failed during the outage after %s: %v", name, sa.took.Round(time.Millisecond), sa.err)
			continue
		}
		_, pending := sa.obj.Annotations[annotations.Pending]
		role := sa.obj.Annotations[annotations.AWSRoleARN]
		switch {
		case pending && (role == "" || awscheck.DerivedFrom(w.seed, role)):
			// Admission only plans: the claim is pending, with the planned role when the
			// replica's view of the seed allowed a plan.
			pendingAtAdmission++
		case !pending && awscheck.DerivedFrom(w.seed, role):
			roleAtAdmission++
		default:
			t.Errorf("ServiceAccount %s admitted during the outage with annotations %v; want pending, or a derived role of %s", name, sa.obj.Annotations, w.seed)
		}
		j := jobsCreated[i]
		if j.err != nil {
			t.Errorf("Job %s: create failed during the outage after %s: %v", name, j.took.Round(time.Millisecond), j.err)
			continue
		}
		if !flowHeld(j.obj) {
			t.Errorf("Job %s admitted during the outage not held: suspend %v annotations %v", name, j.obj.Spec.Suspend, j.obj.Annotations)
		}
		holdReasons[j.obj.Annotations[annotations.HoldReason]]++
	}
	// The apiserver's view: our replica answered every one of these reviews itself, with 200
	// and allowed (not a failure the failure policy turned into an error or let through).
	for _, r := range cluster.Reviews() {
		if r.Namespace != w.ns || r.DryRun || r.Time.Before(cutAt) {
			continue
		}
		if r.Err != "" || r.Backend != wh.Name || r.StatusCode != http.StatusOK || !r.Allowed {
			t.Errorf("review of %s %s during the outage: backend %q err %q status %d allowed %v result %q",
				r.Kind, r.Name, r.Backend, r.Err, r.StatusCode, r.Allowed, r.Result)
		}
	}
	if !wh.Running() {
		t.Fatalf("the replica exited during the outage: %v", wh.ExitErr())
	}
	if d := outage - time.Since(cutAt); d > 0 {
		time.Sleep(d)
	}
	// Before the path comes back: the replica must have stopped acting as the sweeper, since
	// it could not renew the Lease (the metrics listener is not behind the proxy).
	leaderDuringOutage := flowMetric(t, wh, "credential_webhook_sweeper_leader", nil)
	restoredAt := time.Now()
	proxy.Restore()
	outageTook := restoredAt.Sub(cutAt)
	t.Logf("%s: API path restored after %s (%+v)", restoredAt.Format(time.StampMilli), outageTook.Round(time.Millisecond), proxy.Stats())
	iamOutage := flowCallsSince(iamBefore)
	iamRestored := cluster.IAM.Calls()
	if leaderDuringOutage != 0 {
		// The Lease was last renewed before the cut, so it expired at the latest LeaseDuration
		// after it: from then on another replica may lead, and this one must not act any more.
		t.Errorf("credential_webhook_sweeper_leader = %v after %s without reaching the apiserver (the sweeper Lease expired at the latest %s after the cut); a replica that cannot renew its Lease must stop leading (see \"sweeper stopped leading\" in the figures)",
			leaderDuringOutage, outageTook.Round(time.Second), sweeper.DefaultLeaseDuration)
	}

	// Catch-up. Leadership first: a "sweeper leading" log line after the restore.
	var leadingAgain time.Time
	flowPoll(t, catchUp, wh.Name+" leading the sweeper again", func() (bool, error) {
		for _, at := range outageLogTimes(wh, "sweeper leading") {
			if at.After(restoredAt) {
				leadingAgain = at
				return flowMetric(t, wh, "credential_webhook_sweeper_leader", nil) == 1, nil
			}
		}
		return false, nil
	})
	if h := flowLeaseHolder(); h != wh.Name {
		t.Errorf("sweeper Lease held by %q after the restore, want %s", h, wh.Name)
	}

	roles := map[string]string{} // ServiceAccount -> role ARN
	deadline := restoredAt.Add(catchUp)
	flowPoll(t, time.Until(deadline), "every ServiceAccount created during the outage finished", func() (bool, error) {
		for _, name := range names {
			if roles[name] != "" {
				continue
			}
			sa, err := cluster.Client.CoreV1().ServiceAccounts(w.ns).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			if _, pending := sa.Annotations[annotations.Pending]; pending || sa.Annotations[annotations.AWSRoleARN] == "" {
				return false, nil
			}
			roles[name] = sa.Annotations[annotations.AWSRoleARN]
		}
		return true, nil
	})
	sasFinished := time.Since(restoredAt)
	for name, role := range roles {
		if !awscheck.DerivedFrom(w.seed, role) {
			t.Errorf("ServiceAccount %s finished with role %q, not a derived role of %s", name, role, w.seed)
		}
	}

	flowPoll(t, time.Until(deadline), "every Job created during the outage released", func() (bool, error) {
		list, err := cluster.Client.BatchV1().Jobs(w.ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		released := 0
		for i := range list.Items {
			if slices.Contains(names, list.Items[i].Name) && flowReleased(&list.Items[i]) {
				released++
			}
		}
		return released == n, nil
	})
	jobsReleased := time.Since(restoredAt)

	// Exactly once each, because the credentials work.
	for _, name := range names {
		var reasons []string
		for _, l := range wh.LogLines() {
			if l.Msg() == "released held Job" && l.String("job") == w.ns+"/"+name {
				reasons = append(reasons, l.String("reason"))
			}
		}
		if len(reasons) != 1 || reasons[0] != sweeper.ReleaseReady {
			t.Errorf("Job %s: release log reasons %q, want exactly one %q", name, reasons, sweeper.ReleaseReady)
		}
	}
	if got := flowMetric(t, wh, "credential_webhook_releases_total", map[string]string{"reason": sweeper.ReleaseReady}); got != n {
		t.Errorf("releases_total{reason=ready} = %v, want %d", got, n)
	}
	for _, reason := range []string{sweeper.ReleaseMaxHold, sweeper.ReleaseResumedElse} {
		if got := flowMetric(t, wh, "credential_webhook_releases_total", map[string]string{"reason": reason}); got != 0 {
			t.Errorf("releases_total{reason=%s} = %v, want 0", reason, got)
		}
	}
	// Nothing left held, in the cluster or in the sweeper's books.
	list, err := cluster.Client.BatchV1().Jobs(w.ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for i := range list.Items {
		if j := &list.Items[i]; hold.IsHeld(j) || !flowReleased(j) {
			t.Errorf("Job %s left behind: suspend %v annotations %v", j.Name, j.Spec.Suspend, j.Annotations)
		}
	}
	if got := flowMetric(t, wh, "credential_webhook_held_jobs", nil); got != 0 {
		t.Errorf("held_jobs = %v after the catch-up, want 0", got)
	}

	// In moto: every subject in exactly one derived role of the seed, the one on its
	// ServiceAccount (a finish retried after an IAM write whose patch was lost must not leave
	// the subject in a second role).
	seedARN, err := awsp.ParseRoleARN(w.seed)
	if err != nil {
		t.Fatal(err)
	}
	listed := map[string][]string{}
	for _, r := range packRoles(t, seedARN) {
		for _, sub := range r.Subjects {
			listed[sub] = append(listed[sub], r.ARN)
		}
	}
	for _, name := range names {
		in := listed[flowSubject(w.ns, name)]
		if len(in) != 1 || in[0] != roles[name] {
			t.Errorf("subject %s is listed in derived roles %v; want exactly %s", flowSubject(w.ns, name), in, roles[name])
		}
	}

	probe.stop()
	if !wh.Running() {
		t.Errorf("the replica is not running after the catch-up: %v", wh.ExitErr())
	}
	if probe.notRunning > 0 || len(probe.readyz.failures) > 0 || len(probe.healthz.failures) > 0 {
		t.Errorf("from the cut to the end of the catch-up: process down in %d polls; /readyz failed %d of %d (%q); /healthz failed %d of %d (%q)",
			probe.notRunning, len(probe.readyz.failures), probe.readyz.polls, outageFirst(probe.readyz.failures),
			len(probe.healthz.failures), probe.healthz.polls, outageFirst(probe.healthz.failures))
	}

	// Figures.
	var lostAt time.Time
	for _, at := range outageLogTimes(wh, "sweeper stopped leading") {
		if at.After(cutAt) {
			lostAt = at
			break
		}
	}
	var saLat, jobLat []time.Duration
	for _, r := range wh.Reviews() {
		at, err := time.Parse(time.RFC3339Nano, r.Line.String("time"))
		if r.Namespace != w.ns || r.DryRun || err != nil || at.Before(cutAt) || at.After(restoredAt) {
			continue
		}
		d, _ := r.Line["duration"].(float64) // log/slog's JSON handler writes durations in nanoseconds
		switch r.Kind {
		case "ServiceAccount":
			saLat = append(saLat, time.Duration(d))
		case "Job":
			jobLat = append(jobLat, time.Duration(d))
		}
	}
	if len(saLat) != n || len(jobLat) != n {
		t.Errorf("the replica logged %d ServiceAccount and %d Job reviews during the outage, want %d each", len(saLat), len(jobLat), n)
	}
	t.Logf("figures: outage %s (creates done %s after the cut); during it: %d ServiceAccounts admitted pending and %d with a role (create latency %s), %d Jobs held %v (create latency %s); replica answered %d ServiceAccount reviews in %s and %d Job reviews in %s; /readyz %d polls, /healthz %d polls, all 200; leadership lost %s after the cut",
		outageTook.Round(time.Millisecond), createsDone.Round(time.Millisecond),
		pendingAtAdmission, roleAtAdmission, outageSpread(outageDurations(sas)), n, holdReasons, outageSpread(outageDurations(jobsCreated)),
		len(saLat), outageSpread(saLat), len(jobLat), outageSpread(jobLat), probe.readyz.polls, probe.healthz.polls,
		outageSince(lostAt, cutAt))
	t.Logf("figures: after the restore: leading again %s, all %d ServiceAccounts finished %s, all %d Jobs released %s; finishes %v ok / %v failed; IAM calls during the outage: %s; during the catch-up: %s",
		outageSince(leadingAgain, restoredAt), n, sasFinished.Round(100*time.Millisecond), n, jobsReleased.Round(100*time.Millisecond),
		flowMetric(t, wh, "credential_webhook_assignments_finished_total", map[string]string{"result": "finished"}),
		flowMetric(t, wh, "credential_webhook_assignments_finished_total", map[string]string{"result": "error"}),
		flowFormatCalls(iamOutage), flowFormatCalls(flowCallsSince(iamRestored)))
}

// outageResult is one create: the stored object, how long the call took, its error.
type outageResult[T any] struct {
	obj  T
	took time.Duration
	err  error
}

// outageParallel runs create for every name at once and returns the results in names' order.
func outageParallel[T any](names []string, create func(name string) (T, error)) []outageResult[T] {
	out := make([]outageResult[T], len(names))
	var wg sync.WaitGroup
	for i, name := range names {
		wg.Go(func() {
			start := time.Now()
			obj, err := create(name)
			out[i] = outageResult[T]{obj: obj, took: time.Since(start), err: err}
		})
	}
	wg.Wait()
	return out
}

func outageDurations[T any](rs []outageResult[T]) []time.Duration {
	out := make([]time.Duration, 0, len(rs))
	for _, r := range rs {
		out = append(out, r.took)
	}
	return out
}

// outageSpread formats durations as min/median/max.
func outageSpread(ds []time.Duration) string {
	if len(ds) == 0 {
		return "-"
	}
	s := slices.Clone(ds)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	r := func(d time.Duration) time.Duration { return d.Round(time.Millisecond) }
	return fmt.Sprintf("min %s / median %s / max %s", r(s[0]), r(s[len(s)/2]), r(s[len(s)-1]))
}

func outageSince(at, from time.Time) string {
	if at.IsZero() {
		return "(not logged)"
	}
	return at.Sub(from).Round(100 * time.Millisecond).String()
}

func outageFirst(s []string) string {
	if len(s) == 0 {
		return ""
	}
	return s[0]
}

// outageLogTimes returns the times of the replica's log lines with message msg, in order.
func outageLogTimes(w *harness.Webhook, msg string) []time.Time {
	var out []time.Time
	for _, l := range w.LogLines() {
		if l.Msg() != msg {
			continue
		}
		if at, err := time.Parse(time.RFC3339Nano, l.String("time")); err == nil {
			out = append(out, at)
		}
	}
	return out
}

// outageProbe polls a replica's /readyz and /healthz (HTTPS, trusting the harness's webhook
// CA, as the kubelet would probe them) and whether its process runs, every 250 ms.
type outageProbe struct {
	readyz, healthz outageEndpoint
	notRunning      int

	cancel context.CancelFunc
	done   chan struct{}
}

type outageEndpoint struct {
	polls    int
	failures []string
}

func outageStartProbe(t *testing.T, wh *harness.Webhook) *outageProbe {
	t.Helper()
	pool, err := cluster.WebhookCAPool()
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
	}}
	ctx, cancel := context.WithCancel(context.Background())
	p := &outageProbe{cancel: cancel, done: make(chan struct{})}
	get := func(e *outageEndpoint, path string) {
		e.polls++
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, wh.URL+path, nil)
		resp, err := client.Do(req)
		if ctx.Err() != nil {
			e.polls-- // stopped mid-poll: not an answer
			return
		}
		if err != nil {
			e.failures = append(e.failures, fmt.Sprintf("%s %s: %v", time.Now().Format(time.StampMilli), path, err))
			return
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<10))
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			e.failures = append(e.failures, fmt.Sprintf("%s %s: HTTP %d %s", time.Now().Format(time.StampMilli), path, resp.StatusCode, strings.TrimSpace(string(body))))
		}
	}
	go func() {
		defer close(p.done)
		defer client.CloseIdleConnections()
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		for {
			if !wh.Running() {
				p.notRunning++
			}
			get(&p.readyz, "/readyz")
			get(&p.healthz, "/healthz")
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	t.Cleanup(p.stop)
	return p
}

// stop ends the polling; the counts are stable afterwards.
func (p *outageProbe) stop() {
	p.cancel()
	<-p.done
}
