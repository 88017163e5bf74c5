package e2e

import (
	"context"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iam"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/e2e/harness"
	"go.klusters.dev/credential-webhook/sweeper/awscheck"
	"go.klusters.dev/credential-webhook/testenv/iamproxy"
	"go.klusters.dev/credential-webhook/testenv/moto"
)

// BenchmarkFlowCreationToTrust measures what "plan at admission, write on persistence" costs a
// burst of backups (issue 18): 1,000 per-session ServiceAccounts created through the apiserver by
// 16 concurrent clients as fast as they go (the operator's identity, 2 replicas of the real
// binary behind the frontend, their sweepers on), every tenth followed by its KubeStash Job, with
// IAM behind the proxy at 0 and 100 ms of latency and 10% of IAM calls throttled (the SDK
// retries them). It reports, from each creation call's start:
//
//   - trust written: when the subject first shows in a derived role's trust policy, read from moto
//     directly every 50 ms (so the figure is up to 50 ms late), and
//   - Job release: when the held Job first shows spec.suspend false, read every 100 ms (the sweeper
//     proves the credentials with sts:AssumeRoleWithWebIdentity first; no propagation delay here),
//
// as p50 and p99; the last trust written after the last creation (last-trust-ms); IAM calls per
// ServiceAccount as the proxy counted them (every attempt, throttled ones included): all writes,
// trust policy writes (CreateRole, UpdateAssumeRolePolicy) and all calls; and, from the replicas'
// /metrics, lock sessions and Lease API calls per lock session. The same benchmark runs against
// any binary that knows --log-flush-interval (CREDENTIAL_WEBHOOK_BINARY; see e2e/README.md); a
// binary without the lock metrics reports 0 for them.
// Run with:
//
//	go test -run '^$' -bench FlowCreationToTrust -benchtime 1x -timeout 30m
//
// A third run, at 100 ms with one replica, separates what two replicas cost the plans: each
// replica plans a burst as if it were alone, so with two nearly every plan misses (the writer
// corrects the annotation), while one replica's plans all come true.
func BenchmarkFlowCreationToTrust(b *testing.B) {
	for _, c := range []struct {
		lat      time.Duration
		replicas int
	}{{0, 2}, {100 * time.Millisecond, 2}, {100 * time.Millisecond, 1}} {
		name := "iam-latency=" + c.lat.String()
		if c.replicas == 1 {
			name += ",replicas=1"
		}
		b.Run(name, func(b *testing.B) {
			for b.Loop() {
				creationToTrust(b, 1000, 16, c.lat, 0.1, c.replicas)
			}
		})
	}
}

// twoReplicas sets up a burst: a namespace the KubeStash operator may edit and a client acting
// as the operator, a fresh seed role in moto, and two replicas of the webhook (extra flags
// appended) allowed to use it, one of them the sweeper leader.
func twoReplicas(tb testing.TB, prefix string, extra ...string) (ns string, op kubernetes.Interface, seedName, seed string, replicas []*harness.Webhook) {
	tb.Helper()
	return someReplicas(tb, prefix, 2, extra...)
}

// someReplicas is twoReplicas with n replicas (1 or 2).
func someReplicas(tb testing.TB, prefix string, n int, extra ...string) (ns string, op kubernetes.Interface, seedName, seed string, replicas []*harness.Webhook) {
	tb.Helper()
	ns = cluster.Namespace(tb)
	cfg := rest.CopyConfig(cluster.Config)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: operatorUser, Groups: flowOperatorGroups}
	cfg.QPS, cfg.Burst = 1000, 1000
	op, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	flowBindOperator(tb, ns, op)
	seedName = fmt.Sprintf("kubestash-%s-%x", prefix, time.Now().UnixNano()&0xffffff)
	if seed, err = moto.CreateSeedRole(context.Background(), cluster.AWSConfig(), seedName, "/", cluster.Issuer); err != nil {
		tb.Fatal(err)
	}
	suffix := ns[strings.LastIndexByte(ns, '-')+1:]
	var names []string
	for _, l := range []string{"a", "b"}[:n] {
		name := prefix + "-" + suffix + "-" + l
		names = append(names, name)
		replicas = append(replicas, cluster.StartWebhook(tb, harness.WebhookOptions{Name: name, Args: append([]string{
			"--aws-seed-roles=" + seed, "--allowed-requesters=user:" + operatorUser, "--allowed-namespaces=*",
			"--lease-namespace=" + harness.WebhookNamespace, "--identity=" + name,
		}, extra...)}))
	}
	flowPoll(tb, 60*time.Second, "a sweeper leader", func() (bool, error) { return slices.Contains(names, flowLeaseHolder()), nil })
	return ns, op, seedName, seed, replicas
}

// creationToTrust creates n ServiceAccounts from clients concurrent creators (each as fast as
// the apiserver answers), with IAM latency and a throttled fraction of IAM calls.
func creationToTrust(b *testing.B, n, clients int, iamLatency time.Duration, throttle float64, nReplicas int) {
	ctx := context.Background()
	// The previous run's namespace is still being emptied (its burst left 1,000 ServiceAccounts,
	// 100 Jobs, their Pods and Events): that cleanup ran during the next run and was part of its
	// figures (p99 creation -> trust 2.1 s in the second run against 1.6 s run alone).
	if waited := cluster.QuietNamespaces(b, 5*time.Minute); waited > time.Second {
		b.Logf("waited %s for the previous runs' namespaces to be deleted", waited.Round(100*time.Millisecond))
	}
	ns, op, seedName, seed, replicas := someReplicas(b, "lat", nReplicas)
	if iamLatency > 0 || throttle > 0 {
		cluster.IAM.SetFaults(iamproxy.Faults{Latency: iamLatency, ThrottleRate: throttle, Actions: []string{"iam:*"}, Seed: 18})
		b.Cleanup(func() { cluster.IAM.SetFaults(iamproxy.Faults{}) })
	}
	lockStats := func() (sessions, calls float64) {
		for _, w := range replicas {
			sessions += flowMetric(b, w, "credential_webhook_lock_sessions_total", nil)
			calls += flowMetric(b, w, "credential_webhook_lock_api_calls_total", nil)
		}
		return sessions, calls
	}

	var mu sync.Mutex
	started := map[string]time.Time{} // ServiceAccount name -> creation call start
	trusted := map[string]time.Time{} // subject -> first seen in a trust policy
	released := map[string]time.Time{}
	planned := map[string]string{}  // ServiceAccount name -> the role ARN admission answered with
	var createCalls []time.Duration // how long each ServiceAccount's CREATE took (admission included)
	roles := 0                      // derived roles of the seed, as last polled
	var jobNames []string
	stop := make(chan struct{})
	var watchers sync.WaitGroup
	direct := iam.NewFromConfig(cluster.AWSConfig()) // moto itself: neither counted nor delayed
	watchers.Go(func() {
		every(stop, 50*time.Millisecond, func() {
			subs, n, err := listTrustedSubjects(ctx, direct, seedName+"-")
			if err != nil {
				return
			}
			now := time.Now()
			mu.Lock()
			roles = n
			for _, s := range subs {
				if _, seen := trusted[s]; !seen {
					trusted[s] = now
				}
			}
			mu.Unlock()
		})
	})
	watchers.Go(func() {
		every(stop, 100*time.Millisecond, func() {
			list, err := cluster.Client.BatchV1().Jobs(ns).List(ctx, metav1.ListOptions{})
			if err != nil {
				return
			}
			now := time.Now()
			mu.Lock()
			for _, j := range list.Items {
				if _, seen := released[j.Name]; !seen && (j.Spec.Suspend == nil || !*j.Spec.Suspend) {
					released[j.Name] = now
				}
			}
			mu.Unlock()
		})
	})
	defer func() {
		close(stop)
		watchers.Wait()
	}()

	iamBefore := cluster.IAM.Calls()
	throttledBefore := cluster.IAM.Faults().Throttled
	sessionsBefore, lockCallsBefore := lockStats()
	base := time.Now().Unix()
	errs := make(chan error, n)
	var creators sync.WaitGroup
	var next atomic.Int64
	for range clients {
		creators.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				name := fmt.Sprintf("sample-backup-daemon-demo-session-%d", base+int64(i))
				withJob := i%10 == 0
				sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name,
					Annotations: map[string]string{annotations.SeedRole: seed, annotations.BucketNames: harness.BucketNames}}}
				t0 := time.Now()
				mu.Lock()
				started[name] = t0
				mu.Unlock()
				got, err := op.CoreV1().ServiceAccounts(ns).Create(ctx, sa, metav1.CreateOptions{})
				if err == nil && got.Annotations[annotations.AWSRoleARN] == "" {
					err = fmt.Errorf("%s admitted without a role ARN: %v", name, got.Annotations)
				}
				if err == nil {
					mu.Lock()
					planned[name] = got.Annotations[annotations.AWSRoleARN]
					createCalls = append(createCalls, time.Since(t0))
					mu.Unlock()
				}
				if err == nil && withJob {
					_, err = op.BatchV1().Jobs(ns).Create(ctx, flowJob(ns, name, name), metav1.CreateOptions{})
					mu.Lock()
					jobNames = append(jobNames, name)
					mu.Unlock()
				}
				if err != nil {
					errs <- err
				}
			}
		})
	}
	creators.Wait()
	lastCreated := time.Now()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	flowPoll(b, 3*time.Minute, "every subject trusted", func() (bool, error) {
		mu.Lock()
		defer mu.Unlock()
		for name := range started {
			if _, ok := trusted[flowSubject(ns, name)]; !ok {
				return false, nil
			}
		}
		return true, nil
	})
	flowPoll(b, 5*time.Minute, "every Job released", func() (bool, error) {
		mu.Lock()
		defer mu.Unlock()
		for _, j := range jobNames {
			if _, ok := released[j]; !ok {
				return false, nil
			}
		}
		return true, nil
	})
	calls := flowCallsSince(iamBefore)
	throttled := cluster.IAM.Faults().Throttled
	// Plans that did not come true: the role ARN admission answered with is not the one the
	// writer recorded (it corrects the annotation).
	final, err := cluster.Client.CoreV1().ServiceAccounts(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		b.Fatal(err)
	}
	missed := 0
	var misses []string
	for _, sa := range final.Items {
		if p, ok := planned[sa.Name]; ok && p != sa.Annotations[annotations.AWSRoleARN] {
			missed++
			if len(misses) < 3 {
				misses = append(misses, fmt.Sprintf("%s planned %s, got %s", sa.Name, p[strings.LastIndexByte(p, '/')+1:], sa.Annotations[annotations.AWSRoleARN]))
			}
		}
	}
	if len(misses) > 0 {
		b.Logf("plans that did not come true, for example: %s", strings.Join(misses, "; "))
	}
	sessionsAfter, lockCallsAfter := lockStats()
	sessions, lockCalls := sessionsAfter-sessionsBefore, lockCallsAfter-lockCallsBefore

	mu.Lock()
	defer mu.Unlock()
	var toTrust, toRelease []time.Duration
	var lastTrusted, firstCreated time.Time
	for name, t0 := range started {
		at := trusted[flowSubject(ns, name)]
		toTrust = append(toTrust, at.Sub(t0))
		if at.After(lastTrusted) {
			lastTrusted = at
		}
		if firstCreated.IsZero() || t0.Before(firstCreated) {
			firstCreated = t0
		}
	}
	for _, j := range jobNames {
		toRelease = append(toRelease, released[j].Sub(started[j]))
	}
	// Where the slow ones are: creation -> trust per tenth of the burst, in creation order (a
	// slow start, a stall in the middle or a backlog at the end read differently).
	type created struct {
		t0 time.Time
		d  time.Duration
	}
	var order []created
	for name, t0 := range started {
		order = append(order, created{t0, trusted[flowSubject(ns, name)].Sub(t0)})
	}
	slices.SortFunc(order, func(a, b created) int { return a.t0.Compare(b.t0) })
	var tenths []string
	for i := range 10 {
		part := order[i*len(order)/10 : (i+1)*len(order)/10]
		ds := make([]time.Duration, len(part))
		for j, c := range part {
			ds[j] = c.d
		}
		tenths = append(tenths, fmt.Sprintf("%s/%s", packPercentile(ds, 0.5).Round(10*time.Millisecond), slices.Max(ds).Round(10*time.Millisecond)))
	}
	b.Logf("creation -> trust, p50/max per tenth of the burst in creation order: %s; the CREATE calls themselves took p50 %s, p99 %s",
		strings.Join(tenths, " "), packPercentile(createCalls, 0.5).Round(time.Millisecond), packPercentile(createCalls, 0.99).Round(time.Millisecond))
	writes, trustWrites, all, throttledTrust := 0, 0, 0, 0
	for action, c := range calls {
		if !strings.HasPrefix(action, "iam:") {
			continue
		}
		all += c
		if !strings.HasPrefix(action, "iam:Get") && !strings.HasPrefix(action, "iam:List") {
			writes += c
		}
		if action == "iam:CreateRole" || action == "iam:UpdateAssumeRolePolicy" {
			trustWrites += c
			throttledTrust += throttled[action] - throttledBefore[action]
		}
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ReportMetric(ms(packPercentile(toTrust, 0.50)), "p50-trust-ms")
	b.ReportMetric(ms(packPercentile(toTrust, 0.99)), "p99-trust-ms")
	b.ReportMetric(ms(lastTrusted.Sub(lastCreated)), "last-trust-ms")
	b.ReportMetric(ms(packPercentile(toRelease, 0.50)), "p50-release-ms")
	b.ReportMetric(ms(packPercentile(toRelease, 0.99)), "p99-release-ms")
	b.ReportMetric(float64(writes)/float64(n), "iam-writes/sa")
	b.ReportMetric(float64(trustWrites)/float64(n), "trust-writes/sa")
	// What IAM carried out: a throttled call is refused before it writes anything, and how many
	// there are follows the proxy's throttling share, not the writer.
	b.ReportMetric(float64(trustWrites-throttledTrust)/float64(n), "landed-trust-writes/sa")
	b.ReportMetric(float64(all)/float64(n), "iam-calls/sa")
	if roles > 0 {
		// The goal's "one trust write per role touched": every role of this fresh seed was
		// touched by the burst. Throttled attempts count in trust-writes/sa (IAM saw them); this
		// one counts the writes that landed.
		b.ReportMetric(float64(trustWrites-throttledTrust)/float64(roles), "landed-trust-writes/role")
	}
	b.ReportMetric(float64(missed)/float64(n), "plan-misses/sa")
	b.ReportMetric(sessions, "lock-sessions")
	if sessions > 0 {
		b.ReportMetric(lockCalls/sessions, "lease-calls/session")
	}
	b.Logf("%d ServiceAccounts from %d clients in %s (%d Jobs), %d replica(s), IAM latency %s, throttled %.0f%%: last trusted %s after the last creation; %d roles; %d plans missed; %.0f lock sessions, %.0f Lease calls; IAM %s; throttled (cumulative) %v",
		n, clients, lastCreated.Sub(firstCreated).Round(time.Millisecond), len(jobNames), nReplicas, iamLatency, throttle*100,
		lastTrusted.Sub(lastCreated).Round(time.Millisecond), roles, missed, sessions, lockCalls, flowFormatCalls(calls), throttled)
}

// listTrustedSubjects returns the subjects trusted by every role whose name starts with prefix,
// from moto's ListRoles, which carries each role's trust policy: one paginated call per poll. One
// GetRole per role instead kept moto busy with the benchmark's own reads (70 roles every 50 ms),
// slowing the very IAM calls it measures, and a pass over all roles took longer than the period.
func listTrustedSubjects(ctx context.Context, client *iam.Client, prefix string) (subjects []string, roles int, err error) {
	pages := iam.NewListRolesPaginator(client, &iam.ListRolesInput{MaxItems: aws.Int32(1000)})
	for pages.HasMorePages() {
		page, err := pages.NextPage(ctx)
		if err != nil {
			return nil, 0, err
		}
		for _, r := range page.Roles {
			if !strings.HasPrefix(aws.ToString(r.RoleName), prefix) {
				continue
			}
			doc := aws.ToString(r.AssumeRolePolicyDocument)
			if !strings.HasPrefix(doc, "{") { // real IAM URL-encodes it
				if doc, err = url.QueryUnescape(doc); err != nil {
					return nil, 0, err
				}
			}
			subs, err := awscheck.TrustedSubjects(doc)
			if err != nil {
				return nil, 0, fmt.Errorf("trust policy of %s: %w", aws.ToString(r.RoleName), err)
			}
			subjects = append(subjects, subs...)
			roles++
		}
	}
	return subjects, roles, nil
}

// every runs fn every d until stop is closed.
func every(stop <-chan struct{}, d time.Duration, fn func()) {
	tick := time.NewTicker(d)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return
		case <-tick.C:
			fn()
		}
	}
}
