package e2e

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/e2e/harness"
	awsp "go.klusters.dev/credential-webhook/providers/aws"
	"go.klusters.dev/credential-webhook/sweeper"
	"go.klusters.dev/credential-webhook/sweeper/awscheck"
	"go.klusters.dev/credential-webhook/testenv/iamproxy"
)

// Issue 9's fault scenarios, through the real binary on the real control plane: IAM failing and
// slow, replicas SIGKILLed while they assign roles, the sweeper's leader killed again and again.
// Each scenario creates KubeStash's pairs (a session ServiceAccount, then its backup Job) as the
// operator does, retrying a create the apiserver refused (failurePolicy Fail while no replica
// answers), and then checks the same invariants (faultRun.check) against what the apiserver, its
// audit log and moto hold, not against what the replicas say about themselves:
//
//   - every ServiceAccount carries a role derived from the seed and is no longer pending;
//   - its subject is listed in exactly that role and in no other; no role lists a stranger;
//   - no trust policy is over the quota;
//   - every Job held at admission is running again, released by one patch of the webhook's
//     ServiceAccount (the apiserver's audit log: never two answered 200; a patch answered 5xx to a
//     replica killed while waiting counts when it is the only one), before --max-hold, and every
//     release a replica logged was for working credentials (reason ready).

// faultWebhookUser is the webhook's identity in the audit log.
const faultWebhookUser = "system:serviceaccount:" + harness.WebhookNamespace + ":" + harness.WebhookServiceAccount

// faultJob is one backup Job as its create returned.
type faultJob struct {
	sa        string
	held      bool      // stored suspended with our hold annotations
	unknown   bool      // an earlier attempt was stored although the client saw an error
	heldSince time.Time // the hold annotation, when held
}

// faultRun is one scenario's KubeStash installation and what it created.
type faultRun struct {
	w    *flowWorld
	seed awsp.RoleARN

	mu      sync.Mutex
	sas     []string
	pending int // ServiceAccounts the webhook admitted as pending
	jobs    map[string]*faultJob
	retried map[string]int // refused creates, retried, by kind of error
}

func newFaultRun(t *testing.T, seedPrefix string) *faultRun {
	t.Helper()
	w := flowSetup(t, seedPrefix)
	seed, err := awsp.ParseRoleARN(w.seed)
	if err != nil {
		t.Fatalf("seed role ARN %q: %v", w.seed, err)
	}
	return &faultRun{w: w, seed: seed, jobs: map[string]*faultJob{}, retried: map[string]int{}}
}

// createAll creates n pairs with workers goroutines, each pair at least every apart per worker
// (0: as fast as the apiserver takes them). It returns the pairs that could not be created
// before ctx ended.
func (r *faultRun) createAll(ctx context.Context, n, workers int, every time.Duration) []error {
	next := make(chan int)
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	for range workers {
		wg.Go(func() {
			for i := range next {
				t0 := time.Now()
				if err := r.createPair(ctx, i); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
				if wait := every - time.Since(t0); wait > 0 {
					time.Sleep(wait)
				}
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	return errs
}

// createPair creates session i's ServiceAccount and then its Job, as KubeStash does.
func (r *faultRun) createPair(ctx context.Context, i int) error {
	ns := r.w.ns
	name := fmt.Sprintf("sample-backup-daemon-demo-session-%d", packSessionBase+int64(i))
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Annotations: map[string]string{
		annotations.SeedRole: r.seed.String(), annotations.BucketNames: harness.BucketNames,
	}}}
	var pending bool
	if err := r.retry(ctx, "ServiceAccount", func() error {
		got, err := r.w.op.CoreV1().ServiceAccounts(ns).Create(ctx, sa.DeepCopy(), metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			return nil // an earlier attempt was stored after all
		}
		if err == nil {
			_, pending = got.Annotations[annotations.Pending]
		}
		return err
	}); err != nil {
		return fmt.Errorf("ServiceAccount %s: %w", name, err)
	}
	r.mu.Lock()
	r.sas = append(r.sas, name)
	if pending {
		r.pending++
	}
	r.mu.Unlock()

	job := flowJob(ns, name, name)
	fj := &faultJob{sa: name}
	if err := r.retry(ctx, "Job", func() error {
		got, err := r.w.op.BatchV1().Jobs(ns).Create(ctx, job.DeepCopy(), metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			fj.unknown = true
			return nil
		}
		if err == nil {
			fj.held = flowHeld(got)
			fj.heldSince, _ = time.Parse(time.RFC3339, got.Annotations[annotations.HeldSince])
		}
		return err
	}); err != nil {
		return fmt.Errorf("Job %s: %w", name, err)
	}
	if fj.held && fj.heldSince.IsZero() {
		return fmt.Errorf("Job %s: held with an unreadable %s", name, annotations.HeldSince)
	}
	r.mu.Lock()
	r.jobs[name] = fj
	r.mu.Unlock()
	return nil
}

// retry calls create until it succeeds, backing off like a controller's work queue.
func (r *faultRun) retry(ctx context.Context, kind string, create func() error) error {
	for attempt := 0; ; attempt++ {
		err := create()
		if err == nil {
			return nil
		}
		r.mu.Lock()
		r.retried[kind+": "+faultErrorClass(err)]++
		r.mu.Unlock()
		select {
		case <-ctx.Done():
			return fmt.Errorf("gave up after %d attempts: %w", attempt+1, err)
		case <-time.After(min(50*time.Millisecond<<attempt, 2*time.Second)):
		}
	}
}

// faultErrorClass names an apiserver refusal briefly, for the figures.
func faultErrorClass(err error) string {
	msg := err.Error()
	if strings.Contains(msg, "failed calling webhook") {
		for _, cause := range []string{"connection refused", "EOF", "connection reset", "context deadline exceeded", "no replica"} {
			if strings.Contains(msg, cause) {
				return "webhook call failed (" + cause + ")"
			}
		}
		return "webhook call failed"
	}
	if reason := apierrors.ReasonForError(err); reason != metav1.StatusReasonUnknown {
		return string(reason)
	}
	return msg
}

// settle waits until every ServiceAccount has its role and every Job runs; it returns how long
// that took.
func (r *faultRun) settle(t *testing.T, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	ctx := context.Background()
	var pendingSAs, heldJobs []string
	deadline := start.Add(timeout)
	for {
		pendingSAs, heldJobs = pendingSAs[:0], heldJobs[:0]
		sas, err := cluster.Client.CoreV1().ServiceAccounts(r.w.ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		byName := map[string]corev1.ServiceAccount{}
		for _, sa := range sas.Items {
			byName[sa.Name] = sa
		}
		for _, name := range r.sas {
			sa := byName[name]
			if _, p := sa.Annotations[annotations.Pending]; p || sa.Annotations[annotations.AWSRoleARN] == "" {
				pendingSAs = append(pendingSAs, name)
			}
		}
		jobs, err := cluster.Client.BatchV1().Jobs(r.w.ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, j := range jobs.Items {
			if _, ours := r.jobs[j.Name]; ours && !flowReleased(&j) {
				heldJobs = append(heldJobs, j.Name)
			}
		}
		if len(pendingSAs) == 0 && len(heldJobs) == 0 {
			return time.Since(start)
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %d of %d ServiceAccounts still without their role (%s), %d of %d Jobs still held (%s)",
				timeout, len(pendingSAs), len(r.sas), faultSample(pendingSAs), len(heldJobs), len(r.jobs), faultSample(heldJobs))
		}
		time.Sleep(time.Second)
	}
}

func faultSample(names []string) string {
	if len(names) > 5 {
		return strings.Join(names[:5], ", ") + ", ..."
	}
	return strings.Join(names, ", ")
}

// faultFigures are what check measured.
type faultFigures struct {
	roles, subjects, maxPolicy int
	releases                   int
	waits                      []time.Duration // release (audit) minus held-since
	unlogged                   int             // releases no replica logged (killed in between)
	staleReleases              int             // release patches the apiserver refused (a test op failed)
	lostAnswers                int             // release patches answered 5xx: the replica died while it waited
}

// check asserts the scenario's invariants (see the top of the file).
func (r *faultRun) check(t *testing.T, maxHold time.Duration, quota int, replicas ...*harness.Webhook) faultFigures {
	t.Helper()
	ctx := context.Background()
	var fig faultFigures
	ns := r.w.ns

	// ServiceAccounts against IAM, as moto has it.
	sas, err := cluster.Client.CoreV1().ServiceAccounts(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	annotated := map[string]string{} // subject -> role ARN annotated
	for _, sa := range sas.Items {
		if slices.Contains(r.sas, sa.Name) {
			annotated[flowSubject(ns, sa.Name)] = sa.Annotations[annotations.AWSRoleARN]
		}
	}
	if len(annotated) != len(r.sas) {
		t.Errorf("%d of the %d ServiceAccounts created are stored", len(annotated), len(r.sas))
	}
	roles := packRoles(t, r.seed)
	fig.roles = len(roles)
	listedIn := map[string][]string{}
	for _, role := range roles {
		fig.maxPolicy = max(fig.maxPolicy, role.Size)
		if role.Size > quota {
			t.Errorf("trust policy of %s is %d characters, over the quota %d", role.Name, role.Size, quota)
		}
		for _, s := range role.Subjects {
			listedIn[s] = append(listedIn[s], role.ARN)
		}
	}
	for subject, arn := range annotated {
		switch {
		case !awscheck.DerivedFrom(r.seed.String(), arn):
			t.Errorf("%s is annotated with %q, not a role derived from %s", subject, arn, r.seed)
		case len(listedIn[subject]) != 1 || listedIn[subject][0] != arn:
			t.Errorf("%s is annotated with %s but listed in %v (want exactly that role)", subject, arn, listedIn[subject])
		}
	}
	for subject, in := range listedIn {
		if _, ours := annotated[subject]; !ours {
			t.Errorf("%v list %s, which is no ServiceAccount this test created", in, subject)
		}
		fig.subjects++
	}

	// Jobs: what runs, and who released it, from the apiserver's audit log.
	jobs, err := cluster.Client.BatchV1().Jobs(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, j := range jobs.Items {
		if _, ours := r.jobs[j.Name]; ours && !flowReleased(&j) {
			t.Errorf("Job %s is not running free: suspend %v annotations %v", j.Name, j.Spec.Suspend, j.Annotations)
		}
	}
	// A release patch answered 200 released the Job. One answered 5xx may have too: a replica
	// SIGKILLed while its patch was in flight leaves the apiserver writing to etcd for a client
	// that is gone, and the audit log says 504. 4xx is a refused stale release (the patch's test
	// op failed): nothing was written.
	released, lost := map[string][]time.Time{}, map[string][]time.Time{}
	for _, e := range cluster.AuditEvents(ns) {
		if e.Stage != "ResponseComplete" || e.Verb != "patch" || e.User.Username != faultWebhookUser ||
			e.ObjectRef == nil || e.ObjectRef.Resource != "jobs" || e.ObjectRef.Subresource != "" || e.ResponseStatus == nil {
			continue
		}
		switch code := e.ResponseStatus.Code; {
		case code == 200:
			released[e.ObjectRef.Name] = append(released[e.ObjectRef.Name], e.StageTimestamp)
		case code >= 500:
			lost[e.ObjectRef.Name] = append(lost[e.ObjectRef.Name], e.StageTimestamp)
			fig.lostAnswers++
		default:
			fig.staleReleases++
		}
	}
	logged := map[string][]string{} // Job -> reasons of the releases replicas logged
	for _, w := range replicas {
		for _, l := range w.LogLines() {
			if l.Msg() == "released held Job" {
				if _, name, ok := strings.Cut(l.String("job"), "/"); ok && strings.HasPrefix(l.String("job"), ns+"/") {
					logged[name] = append(logged[name], l.String("reason"))
				}
			}
		}
	}
	for name, j := range r.jobs {
		at := released[name]
		if len(at) == 0 && len(lost[name]) > 0 {
			// Released (settle saw it running free) by a patch whose answer was lost.
			at = lost[name][:1]
		}
		switch {
		case len(released[name]) > 1:
			t.Errorf("Job %s was released %d times (audit: %v)", name, len(released[name]), released[name])
		case !j.unknown && !j.held && len(at) != 0:
			t.Errorf("Job %s was admitted unheld but the webhook patched it (audit: %v, answers lost: %v)", name, released[name], lost[name])
		case j.held && len(at) != 1:
			t.Errorf("Job %s is running but no release patch of the webhook shows in the audit log", name)
		case j.held:
			fig.releases++
			wait := at[0].Sub(j.heldSince)
			fig.waits = append(fig.waits, wait)
			if wait > maxHold {
				t.Errorf("Job %s was held %s, past --max-hold %s", name, wait, maxHold)
			}
		}
		if len(logged[name]) > 1 {
			t.Errorf("Job %s: replicas logged %d releases %v", name, len(logged[name]), logged[name])
		}
		for _, reason := range logged[name] {
			if reason != sweeper.ReleaseReady {
				t.Errorf("Job %s released with reason %q, want %q (working credentials)", name, reason, sweeper.ReleaseReady)
			}
		}
		if len(at) == 1 && len(logged[name]) == 0 {
			fig.unlogged++
		}
	}
	return fig
}

// faultFormat renders the figures shared by every scenario.
func (r *faultRun) faultFormat(fig faultFigures) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	held := 0
	for _, j := range r.jobs {
		if j.held {
			held++
		}
	}
	retried := make([]string, 0, len(r.retried))
	total := 0
	for k, v := range r.retried {
		retried = append(retried, fmt.Sprintf("%s=%d", k, v))
		total += v
	}
	sort.Strings(retried)
	waits := slices.Clone(fig.waits)
	return fmt.Sprintf("%d ServiceAccounts (%d admitted pending) and %d Jobs (%d held); creates refused and retried: %d %v; "+
		"%d roles hold %d subjects, largest trust policy %d chars; %d releases (%d not logged: killed between patch and log; %d release patches refused as stale, %d answered 5xx to a replica that died); "+
		"hold p50 %s p99 %s max %s",
		len(r.sas), r.pending, len(r.jobs), held, total, retried,
		fig.roles, fig.subjects, fig.maxPolicy, fig.releases, fig.unlogged, fig.staleReleases, fig.lostAnswers,
		packPercentile(waits, 0.5).Round(100*time.Millisecond), packPercentile(waits, 0.99).Round(100*time.Millisecond),
		packPercentile(waits, 1).Round(100*time.Millisecond))
}

// faultInjected renders the proxy's injected faults.
func faultInjected(f iamproxy.FaultCounts) (throttled, serverErrors, delayed int, s string) {
	throttled, serverErrors, delayed = packTotal(f.Throttled), packTotal(f.ServerErrors), packTotal(f.Delayed)
	return throttled, serverErrors, delayed, fmt.Sprintf("throttled %d %v, 5xx %d %v, delayed %d %v",
		throttled, f.Throttled, serverErrors, f.ServerErrors, delayed, f.Delayed)
}

// 1. IAM and STS throttle 30 % of calls and fail 10 % with HTTP 500, and 2 % answer only after
// 9 s (the write lands, the answer is late: beyond the ServiceAccount webhook's 8 s budget),
// while 300 ServiceAccounts and their Jobs are created through two replicas. Admission gives up
// on what does not fit its budget (pending, finished by the sweeper); the sweeper's checks see
// the same faults.
func TestFaultsIAMThrottlingErrorsAndLatency(t *testing.T) {
	const (
		pairs   = 300
		workers = 16
		maxHold = 5 * time.Minute
	)
	packEnforceQuota(t)
	r := newFaultRun(t, "kubestash-faults")
	extra := []string{fmt.Sprintf("--aws-trust-policy-quota=%d", packQuota), "--max-hold=" + maxHold.String()}
	a := r.w.replica(t, "a", extra...)
	b := r.w.replica(t, "b", extra...)
	flowWaitLeader(t, a.Name, b.Name)
	cluster.IAM.SetPropagationDelay(2 * time.Second)
	t.Cleanup(func() { cluster.IAM.SetPropagationDelay(0) })
	cluster.IAM.ResetCalls()
	cluster.IAM.SetFaults(iamproxy.Faults{ThrottleRate: 0.3, ServerErrorRate: 0.1,
		Latency: 9 * time.Second, SlowRate: 0.02, LateAnswer: true, Seed: 9})
	t.Cleanup(func() { cluster.IAM.SetFaults(iamproxy.Faults{}) })

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	start := time.Now()
	if errs := r.createAll(ctx, pairs, workers, 0); len(errs) > 0 {
		t.Fatalf("%d pairs could not be created: %v", len(errs), errors.Join(errs...))
	}
	created := time.Since(start)
	settled := r.settle(t, 6*time.Minute)
	calls := cluster.IAM.Calls()
	throttled, serverErrors, delayed, injected := faultInjected(cluster.IAM.Faults())
	cluster.IAM.SetFaults(iamproxy.Faults{})

	fig := r.check(t, maxHold, packQuota, a, b)
	if throttled == 0 || serverErrors == 0 || delayed == 0 {
		t.Errorf("the faults did not all happen: %s", injected)
	}
	if r.pending == 0 {
		t.Errorf("no ServiceAccount was admitted pending: the late answers never exceeded the admission budget")
	}
	t.Logf("figures: %s", r.faultFormat(fig))
	t.Logf("figures: created in %s, settled %s later; IAM/STS calls %s; injected: %s",
		created.Round(100*time.Millisecond), settled.Round(100*time.Millisecond), flowFormatCalls(calls), injected)
}

// 2. Replicas are SIGKILLed at random moments while 200 pairs are created: mid-review,
// mid-write (holding the seed's lock Lease), mid-release. A killed replica comes back on the
// same ports (a Deployment's restart); the apiserver refuses creates while no replica answers
// (failurePolicy Fail) and the client retries them.
func TestFaultsWebhookKilledDuringAssignments(t *testing.T) {
	const (
		pairs    = 200
		workers  = 8
		maxHold  = 5 * time.Minute
		minKills = 6
	)
	packEnforceQuota(t)
	r := newFaultRun(t, "kubestash-sigkill")
	extra := []string{fmt.Sprintf("--aws-trust-policy-quota=%d", packQuota), "--max-hold=" + maxHold.String(),
		"--lease-duration=5s", "--sweeper-lease-duration=5s"}
	replicas := []*harness.Webhook{r.w.replica(t, "a", extra...), r.w.replica(t, "b", extra...)}
	flowWaitLeader(t, replicas[0].Name, replicas[1].Name)
	cluster.IAM.SetPropagationDelay(2 * time.Second)
	t.Cleanup(func() { cluster.IAM.SetPropagationDelay(0) })
	cluster.IAM.ResetCalls()

	seed := time.Now().UnixNano()
	rng := rand.New(rand.NewPCG(uint64(seed), 9))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	start := time.Now()
	done := make(chan []error, 1)
	go func() { done <- r.createAll(ctx, pairs, workers, 0) }()
	var kills []string
	var errs []error
	for finished := false; !finished || len(kills) < minKills; {
		select {
		case errs = <-done:
			finished = true
			continue
		case <-time.After(time.Duration(300+rng.IntN(1700)) * time.Millisecond):
		}
		victim := replicas[rng.IntN(len(replicas))]
		if err := victim.Kill(); err != nil {
			t.Fatal(err)
		}
		kills = append(kills, fmt.Sprintf("%s@%s", victim.Name[len(victim.Name)-1:], time.Since(start).Round(100*time.Millisecond)))
		time.Sleep(time.Duration(rng.IntN(500)) * time.Millisecond)
		victim.Restart(t)
	}
	if len(errs) > 0 {
		t.Fatalf("%d pairs could not be created: %v", len(errs), errors.Join(errs...))
	}
	created := time.Since(start)
	settled := r.settle(t, 5*time.Minute)
	fig := r.check(t, maxHold, packQuota, replicas...)
	t.Logf("figures: %s", r.faultFormat(fig))
	t.Logf("figures: %d SIGKILLs (rng seed %d) at %v; created in %s, settled %s later; IAM/STS calls %s",
		len(kills), seed, kills, created.Round(100*time.Millisecond), settled.Round(100*time.Millisecond), flowFormatCalls(cluster.IAM.Calls()))
}

// 3. Three replicas; the sweeper's leader is SIGKILLed again and again while Jobs keep arriving
// and being released. Each time one of the other two must take over, and the killed one comes
// back as a follower. No Job may stay held, none may be released twice.
func TestFaultsSweeperLeaderKilledRepeatedly(t *testing.T) {
	const (
		pairs   = 60
		kills   = 4
		maxHold = 5 * time.Minute
		lease   = 4 * time.Second
	)
	r := newFaultRun(t, "kubestash-leaders")
	extra := []string{"--max-hold=" + maxHold.String(), "--sweeper-lease-duration=" + lease.String(), "--lease-duration=5s"}
	replicas := []*harness.Webhook{r.w.replica(t, "a", extra...), r.w.replica(t, "b", extra...), r.w.replica(t, "c", extra...)}
	names := func(except string) []string {
		var out []string
		for _, w := range replicas {
			if w.Name != except {
				out = append(out, w.Name)
			}
		}
		return out
	}
	flowWaitLeader(t, names("")...)
	cluster.IAM.SetPropagationDelay(3 * time.Second)
	t.Cleanup(func() { cluster.IAM.SetPropagationDelay(0) })

	seed := time.Now().UnixNano()
	rng := rand.New(rand.NewPCG(uint64(seed), 3))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	start := time.Now()
	done := make(chan []error, 1)
	// One pair every 400 ms: Jobs are held and released all through the kills.
	go func() { done <- r.createAll(ctx, pairs, 1, 400*time.Millisecond) }()
	var log []string
	for range kills {
		leader := flowWaitLeader(t, names("")...)
		time.Sleep(time.Duration(1000+rng.IntN(2000)) * time.Millisecond)
		var victim *harness.Webhook
		for _, w := range replicas {
			if w.Name == leader {
				victim = w
			}
		}
		if err := victim.Kill(); err != nil {
			t.Fatal(err)
		}
		killed := time.Now()
		next := flowWaitLeader(t, names(leader)...)
		log = append(log, fmt.Sprintf("killed %s@%s -> %s after %s", leader[len(leader)-1:], killed.Sub(start).Round(100*time.Millisecond),
			next[len(next)-1:], time.Since(killed).Round(100*time.Millisecond)))
		victim.Restart(t)
	}
	if errs := <-done; len(errs) > 0 {
		t.Fatalf("%d pairs could not be created: %v", len(errs), errors.Join(errs...))
	}
	created := time.Since(start)
	settled := r.settle(t, 3*time.Minute)
	fig := r.check(t, maxHold, 1<<20, replicas...)
	if fig.releases == 0 {
		t.Error("no Job was held and released: the scenario did not exercise the sweeper")
	}
	t.Logf("figures: %s", r.faultFormat(fig))
	t.Logf("figures: sweeper lease %s, rng seed %d, %v; created in %s, settled %s later",
		lease, seed, log, created.Round(100*time.Millisecond), settled.Round(100*time.Millisecond))
}
