package e2e

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iam"
	iamtypes "github.com/aws/aws-sdk-go-v2/service/iam/types"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"

	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/e2e/harness"
	"go.klusters.dev/credential-webhook/kube/kubeadapter"
	"go.klusters.dev/credential-webhook/markers"
	awsp "go.klusters.dev/credential-webhook/providers/aws"
	"go.klusters.dev/credential-webhook/sweeper"
	"go.klusters.dev/credential-webhook/sweeper/awscheck"
	"go.klusters.dev/credential-webhook/testenv/moto"
)

// These tests run the sweeper in-process against the real apiserver and job controller, as the
// webhook's own ServiceAccount (its RBAC from manifests/ applies), with the AWS readiness check
// going to the IAM proxy, which verifies the cluster's real ServiceAccount tokens against the
// trust policies in moto like STS does.
//
// A held Job is made the way admission leaves it (suspended, our two annotations) without the
// Job admission plugin: created without the managed-by label, so no webhook is called (the Job
// webhook selects on that label and sees CREATE only), then labelled. The result is the same
// object admission produces.

// webhookConfig is the rest config of the webhook's own ServiceAccount.
func webhookClient(t *testing.T, cut *atomic.Bool) kubernetes.Interface {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", cluster.WebhookKubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	if cut != nil {
		// A replica whose network is cut behaves, towards the apiserver, like one that was
		// killed: it renews nothing and releases nothing.
		cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper {
			return roundTripFunc(func(r *http.Request) (*http.Response, error) {
				if cut.Load() {
					return nil, errors.New("network cut by the test")
				}
				return rt.RoundTrip(r)
			})
		})
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

type runningSweeper struct {
	s      *sweeper.Sweeper
	reg    *prometheus.Registry
	cancel context.CancelFunc
	done   chan struct{}
}

// stop cancels the sweeper and waits until Run returned (its Lease released).
func (r *runningSweeper) stop() {
	r.cancel()
	<-r.done
}

// fastConfig keeps the tests short: a few seconds of Lease, short backoff.
func fastConfig(lease, identity string) sweeper.Config {
	return sweeper.Config{
		Namespace: harness.WebhookNamespace, LeaseName: lease, Identity: identity,
		LeaseDuration: 4 * time.Second, RenewDeadline: 3 * time.Second, RetryPeriod: 500 * time.Millisecond,
		BackoffInitial: 200 * time.Millisecond, BackoffMax: time.Second,
		MaxHold: 2 * time.Minute, ChecksInARow: 2,
	}
}

// startSweeper runs a sweeper with the AWS checker until the end of the test.
func startSweeper(t *testing.T, cfg sweeper.Config, cs kubernetes.Interface, deps sweeper.Deps) *runningSweeper {
	t.Helper()
	awsCfg := moto.ConfigFor(cluster.IAM.URL)
	deps.AWS = awscheck.New(awscheck.IAMRoleLister{IAM: iam.NewFromConfig(awsCfg)}, awscheck.KubeTokens{Client: kubeadapter.Wrap(cs)},
		sts.NewFromConfig(awsCfg), cfg.ChecksInARow)
	reg := prometheus.NewRegistry()
	deps.Registerer = reg
	log := slog.New(slog.NewTextHandler(&testWriter{t: t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	s := sweeper.New(kubeadapter.Wrap(cs), cfg, deps, log.With("sweeper", cfg.Identity))
	ctx, cancel := context.WithCancel(context.Background())
	r := &runningSweeper{s: s, reg: reg, cancel: cancel, done: make(chan struct{})}
	go func() { defer close(r.done); s.Run(ctx) }()
	t.Cleanup(r.stop)
	return r
}

// testWriter sends the sweeper's log to the test log (shown for failing tests and with -v).
type testWriter struct{ t *testing.T }

func (w *testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// createHeldJob creates a KubeStash backup Job as cluster admin and returns it as admission
// left it: held (suspended, our hold annotations). Only admission may write a hold: the guard
// strips forged ones on CREATE, and on UPDATE the admission policy refuses them from anyone
// but the server, whose own token the self policy lets only remove them. So the Job must be
// one admission holds: its ServiceAccount is missing, pending, or not yet proven to work.
func createHeldJob(t *testing.T, ns, serviceAccount string) *batchv1.Job {
	t.Helper()
	job := backupJob(ns, serviceAccount)
	created, err := cluster.Client.BatchV1().Jobs(ns).Create(context.Background(), job, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create held Job: %v", err)
	}
	if created.Spec.Suspend == nil || !*created.Spec.Suspend || created.Annotations[annotations.HeldSince] == "" {
		t.Fatalf("admission did not hold Job %s (ServiceAccount %s): suspend %v, annotations %v",
			created.Name, serviceAccount, created.Spec.Suspend, created.Annotations)
	}
	return created
}

// createHeldJobWithoutIdentity creates a held Job whose ServiceAccount did not exist at
// admission and is then created asking for no cloud identity: nothing to wait for, so the
// sweeper releases it at once.
func createHeldJobWithoutIdentity(t *testing.T, ns string) *batchv1.Job {
	t.Helper()
	name := fmt.Sprintf("no-identity-%x", time.Now().UnixNano()&0xffffffff)
	job := createHeldJob(t, ns, name)
	if _, err := cluster.Client.CoreV1().ServiceAccounts(ns).Create(context.Background(),
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return job
}

func released(j *batchv1.Job) bool {
	_, held := j.Annotations[annotations.HeldSince]
	return j.Spec.Suspend != nil && !*j.Spec.Suspend && !held
}

// jobEvents returns "Type/Reason: message" of the Events about a Job.
func jobEvents(t *testing.T, ns, name string) []string {
	t.Helper()
	evs, err := cluster.Client.CoreV1().Events(ns).List(context.Background(), metav1.ListOptions{
		FieldSelector: "involvedObject.kind=Job,involvedObject.name=" + name,
	})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range evs.Items {
		if e.Source.Component == "credential-webhook" || e.ReportingController == "credential-webhook" {
			out = append(out, e.Type+"/"+e.Reason+": "+e.Message)
		}
	}
	return out
}

func waitForEvent(t *testing.T, ns, name, prefix string) string {
	t.Helper()
	var found string
	flowPoll(t, 30*time.Second, "event "+prefix+" on Job "+name, func() (bool, error) {
		for _, e := range jobEvents(t, ns, name) {
			if strings.HasPrefix(e, prefix) {
				found = e
				return true, nil
			}
		}
		return false, nil
	})
	return found
}

func waitForPod(t *testing.T, ns, job string) {
	t.Helper()
	flowPoll(t, 30*time.Second, "the job controller's Pod for "+job, func() (bool, error) {
		pods, err := cluster.Client.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: "batch.kubernetes.io/job-name=" + job})
		return err == nil && len(pods.Items) > 0, err
	})
}

// metric returns the value of a counter or gauge in reg whose labels include want.
func metric(t *testing.T, reg *prometheus.Registry, name string, want map[string]string) float64 {
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
			if labelsMatch(m, want) {
				switch {
				case m.Counter != nil:
					return m.Counter.GetValue()
				case m.Gauge != nil:
					return m.Gauge.GetValue()
				case m.Histogram != nil:
					return float64(m.Histogram.GetSampleCount())
				}
			}
		}
	}
	return 0
}

func labelsMatch(m *dto.Metric, want map[string]string) bool {
	n := 0
	for _, lp := range m.GetLabel() {
		if v, ok := want[lp.GetName()]; ok && v == lp.GetValue() {
			n++
		}
	}
	return n == len(want)
}

// derivedRole creates "<seed>-<i>" as the AWS provider would: the seed's trust statement
// listing subjects, tagged with the seed. Through the proxy, so its propagation delay applies.
func derivedRole(t *testing.T, seedARN string, i int, subjects ...string) string {
	t.Helper()
	arn, err := createDerivedRole(seedARN, i, subjects...)
	if err != nil {
		t.Fatal(err)
	}
	return arn
}

func createDerivedRole(seedARN string, i int, subjects ...string) (string, error) {
	parts := strings.Split(seedARN, ":")
	providerARN := "arn:aws:iam::" + parts[4] + ":oidc-provider/" + moto.IssuerHost(cluster.Issuer)
	name := seedARN[strings.LastIndexByte(seedARN, '/')+1:] + "-" + fmt.Sprint(i)
	out, err := iam.NewFromConfig(moto.ConfigFor(cluster.IAM.URL)).CreateRole(context.Background(), &iam.CreateRoleInput{
		RoleName:                 aws.String(name),
		AssumeRolePolicyDocument: aws.String(moto.TrustPolicy(providerARN, cluster.Issuer, subjects...)),
		Tags:                     []iamtypes.Tag{{Key: aws.String(annotations.SeedTag), Value: aws.String(seedARN)}},
	})
	if err != nil {
		return "", fmt.Errorf("create derived role %s: %w", name, err)
	}
	return aws.ToString(out.Role.Arn), nil
}

// shortName is a per-test suffix for IAM names (moto is shared by the package's tests).
func shortName(ns string) string {
	if i := strings.LastIndexByte(ns, '-'); i >= 0 {
		return ns[i+1:]
	}
	return ns
}

// A held Job waits while its ServiceAccount has no role, and while the role's fresh trust
// policy has not reached STS; it is released once a real token of the ServiceAccount is
// accepted twice in a row, and the job controller then creates its Pod.
func TestSweeperReleasesHeldJobOnceCredentialsWork(t *testing.T) {
	ns := cluster.Namespace(t)
	cluster.StartWebhook(t, harness.WebhookOptions{Args: []string{"--sweeper=false"}}) // this test runs its own sweeper
	ctx := context.Background()
	op := operatorClient(t, ns)
	seed := seedRole(t, "kubestash-rel-"+shortName(ns))
	sa, err := op.CoreV1().ServiceAccounts(ns).Create(ctx, sessionServiceAccount(ns, seed), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	r := startSweeper(t, fastConfig("sweeper-"+ns, "replica-a"), webhookClient(t, nil), sweeper.Deps{})
	job := createHeldJob(t, ns, sa.Name)

	// First sight: a Held event, and the Job stays suspended while the role is missing.
	if ev := waitForEvent(t, ns, job.Name, "Normal/Held"); !strings.Contains(ev, sa.Name) {
		t.Errorf("Held event does not name the ServiceAccount: %s", ev)
	}
	if j := flowGetJob(t, ns, job.Name); released(j) {
		t.Fatal("Job released while its ServiceAccount has no role")
	}

	// The AWS provider's part: a derived role listing the ServiceAccount (its trust policy
	// takes 8 s to reach STS), then the role ARN on the ServiceAccount.
	cluster.IAM.SetPropagationDelay(8 * time.Second)
	t.Cleanup(func() { cluster.IAM.SetPropagationDelay(0) })
	cluster.IAM.ResetCalls()
	role := derivedRole(t, seed, 0, "system:serviceaccount:"+ns+":"+sa.Name)
	patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:%q}}}`, annotations.AWSRoleARN, role)
	if _, err := op.CoreV1().ServiceAccounts(ns).Patch(ctx, sa.Name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}

	flowPoll(t, 60*time.Second, "the Job released", func() (bool, error) { return released(flowGetJob(t, ns, job.Name)), nil })
	ev := waitForEvent(t, ns, job.Name, "Normal/Released")
	if !strings.Contains(ev, "2 times in a row") || !strings.Contains(ev, role) {
		t.Errorf("Released event = %q; want the role and the two STS successes", ev)
	}
	// The sweeper was woken by the role ARN at once, so it met the propagation delay first.
	refused := 0
	for _, rej := range cluster.IAM.Rejections() {
		if rej.Action == "sts:AssumeRoleWithWebIdentity" && strings.Contains(rej.Reason, "propagation delay") {
			refused++
		}
	}
	if refused == 0 {
		t.Errorf("STS never refused during propagation: rejections %+v", cluster.IAM.Rejections())
	}
	if j := flowGetJob(t, ns, job.Name); j.Annotations[annotations.HoldReason] != "" {
		t.Errorf("hold reason left on the released Job: %v", j.Annotations)
	}
	waitForPod(t, ns, job.Name)
	if got := metric(t, r.reg, "credential_webhook_releases_total", map[string]string{"reason": "ready"}); got != 1 {
		t.Errorf("releases_total{reason=ready} = %v, want 1", got)
	}
	if got := metric(t, r.reg, "credential_webhook_hold_duration_seconds", nil); got != 1 {
		t.Errorf("hold_duration_seconds count = %v, want 1", got)
	}
	if got := metric(t, r.reg, "credential_webhook_held_jobs", nil); got != 0 {
		t.Errorf("held_jobs = %v after the release, want 0", got)
	}
	if !r.s.Ready().Ready(ns, sa.Name) {
		t.Error("the proven ServiceAccount is not known ready for admission")
	}
}

// A Job whose credentials never work is released after max hold anyway, with a Warning saying
// what was missing, so the backup fails visibly instead of hanging.
func TestSweeperReleasesAfterMaxHold(t *testing.T) {
	ns := cluster.Namespace(t)
	cluster.StartWebhook(t, harness.WebhookOptions{Args: []string{"--sweeper=false"}}) // this test runs its own sweeper
	ctx := context.Background()
	sa, err := operatorClient(t, ns).CoreV1().ServiceAccounts(ns).Create(ctx,
		sessionServiceAccount(ns, seedRole(t, "kubestash-max-"+shortName(ns))), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cfg := fastConfig("sweeper-"+ns, "replica-a")
	cfg.MaxHold = 5 * time.Second
	r := startSweeper(t, cfg, webhookClient(t, nil), sweeper.Deps{})
	job := createHeldJob(t, ns, sa.Name)

	flowPoll(t, 60*time.Second, "the Job released", func() (bool, error) { return released(flowGetJob(t, ns, job.Name)), nil })
	ev := waitForEvent(t, ns, job.Name, "Warning/ReleasedWithoutCredentials")
	if !strings.Contains(ev, "no eks.amazonaws.com/role-arn yet") {
		t.Errorf("warning does not say what was missing: %s", ev)
	}
	waitForPod(t, ns, job.Name)
	if got := metric(t, r.reg, "credential_webhook_releases_total", map[string]string{"reason": "max-hold"}); got != 1 {
		t.Errorf("releases_total{reason=max-hold} = %v, want 1", got)
	}
}

// The sweeper releases only KubeStash Jobs carrying our hold annotation: a Job Kueue suspended
// and a held-looking Job without KubeStash's label stay exactly as they are.
func TestSweeperLeavesOtherSuspendedJobsAlone(t *testing.T) {
	ns := cluster.Namespace(t)
	cluster.StartWebhook(t, harness.WebhookOptions{Args: []string{"--sweeper=false"}}) // this test runs its own sweeper // KubeStash Jobs pass the Job webhook
	ctx := context.Background()

	kueue := backupJob(ns, "default")
	kueue.Labels["kueue.x-k8s.io/queue-name"] = "backup-queue"
	kueue.Spec.Suspend = ptr.To(true)
	kueue, err := cluster.Client.BatchV1().Jobs(ns).Create(ctx, kueue, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	foreign := backupJob(ns, "default")
	foreign.Labels = map[string]string{"app": "not-kubestash"}
	foreign.Annotations = map[string]string{annotations.HeldSince: time.Now().UTC().Format(time.RFC3339)}
	foreign.Spec.Suspend = ptr.To(true)
	foreign, err = cluster.Client.BatchV1().Jobs(ns).Create(ctx, foreign, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	startSweeper(t, fastConfig("sweeper-"+ns, "replica-a"), webhookClient(t, nil), sweeper.Deps{})
	// Control: a held Job of a ServiceAccount without cloud identity is released at once, so
	// by then the sweeper has seen the others.
	control := createHeldJobWithoutIdentity(t, ns)
	flowPoll(t, 30*time.Second, "the control Job released", func() (bool, error) { return released(flowGetJob(t, ns, control.Name)), nil })

	for _, j := range []*batchv1.Job{kueue, foreign} {
		// The job controller updates their status (Suspended condition); we must change
		// nothing of what we could write: spec.suspend and annotations.
		now := flowGetJob(t, ns, j.Name)
		if now.Spec.Suspend == nil || !*now.Spec.Suspend {
			t.Errorf("Job %s was resumed", j.Name)
		}
		if !maps.Equal(now.Annotations, j.Annotations) {
			t.Errorf("Job %s annotations changed: %v -> %v", j.Name, j.Annotations, now.Annotations)
		}
		if evs := jobEvents(t, ns, j.Name); len(evs) != 0 {
			t.Errorf("Job %s got events from the sweeper: %v", j.Name, evs)
		}
	}
}

// One sweeper leads. When the leader dies (its connection cut: it neither renews nor
// releases), the other takes over once the Lease expires and releases the Jobs; a replica that
// stops cleanly releases the Lease on the way out.
func TestSweeperLeaderHandover(t *testing.T) {
	ns := cluster.Namespace(t)
	// The Jobs webhook (failurePolicy Fail) reviews writes of our hold annotations: a replica
	// must answer them; this test runs its own sweepers.
	cluster.StartWebhook(t, harness.WebhookOptions{Args: []string{"--sweeper=false"}})
	lease := "sweeper-" + ns
	var cut atomic.Bool
	a := startSweeper(t, fastConfig(lease, "replica-a"), webhookClient(t, &cut), sweeper.Deps{})
	holder := func() string {
		l, err := cluster.Client.CoordinationV1().Leases(harness.WebhookNamespace).Get(context.Background(), lease, metav1.GetOptions{})
		if err != nil || l.Spec.HolderIdentity == nil {
			return ""
		}
		return *l.Spec.HolderIdentity
	}
	flowPoll(t, 30*time.Second, "replica-a leading", func() (bool, error) { return holder() == "replica-a", nil })
	flowPoll(t, 10*time.Second, "replica-a's leader metric", func() (bool, error) {
		return metric(t, a.reg, "credential_webhook_sweeper_leader", nil) == 1, nil
	})
	b := startSweeper(t, fastConfig(lease, "replica-b"), webhookClient(t, nil), sweeper.Deps{})

	first := createHeldJobWithoutIdentity(t, ns)
	flowPoll(t, 30*time.Second, "the leader releasing a Job", func() (bool, error) { return released(flowGetJob(t, ns, first.Name)), nil })
	if got := metric(t, b.reg, "credential_webhook_releases_total", map[string]string{"reason": "ready"}); got != 0 {
		t.Errorf("the follower released %v Jobs", got)
	}

	cut.Store(true) // replica-a "dies"
	second := createHeldJobWithoutIdentity(t, ns)
	flowPoll(t, 60*time.Second, "replica-b taking over", func() (bool, error) { return holder() == "replica-b", nil })
	flowPoll(t, 30*time.Second, "the new leader releasing the Job", func() (bool, error) { return released(flowGetJob(t, ns, second.Name)), nil })
	// The sweeper counts a release once its patch has returned, a moment after the Job shows it.
	releases := func() float64 {
		return metric(t, b.reg, "credential_webhook_releases_total", map[string]string{"reason": "ready"})
	}
	flowPoll(t, 10*time.Second, "replica-b counting the release", func() (bool, error) { return releases() >= 1, nil })
	if got := releases(); got != 1 {
		t.Errorf("replica-b releases = %v, want 1", got)
	}
	flowPoll(t, 30*time.Second, "replica-a noticing it lost the Lease", func() (bool, error) {
		return metric(t, a.reg, "credential_webhook_sweeper_leader", nil) == 0, nil
	})

	b.stop()
	if h := holder(); h != "" {
		t.Errorf("Lease held by %q after the leader stopped; want it released", h)
	}
}

// Garbage collection asks its Collectors about ServiceAccounts: a deleted one counts as gone
// only after the grace period (admission assigns roles before the ServiceAccount is stored),
// a deletion triggers a collection without waiting for the interval, and a live one always
// exists.
func TestSweeperGarbageCollectionGrace(t *testing.T) {
	ns := cluster.Namespace(t)
	ctx := context.Background()
	for _, name := range []string{"live", "doomed"} {
		if _, err := cluster.Client.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{
			ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	col := &askingCollector{names: []string{"live", "doomed"}, ns: ns}
	cfg := fastConfig("sweeper-"+ns, "replica-a")
	cfg.GCInterval = time.Hour // only the start and deletions trigger collections here
	cfg.GCGrace = 3 * time.Second
	r := startSweeper(t, cfg, webhookClient(t, nil), sweeper.Deps{Collectors: []sweeper.Collector{col}})
	flowPoll(t, 30*time.Second, "the first collection", func() (bool, error) { return len(col.runs()) > 0, nil })
	if err := cluster.Client.CoreV1().ServiceAccounts(ns).Delete(ctx, "doomed", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	collected := func(runs []map[string]bool) int {
		for i, run := range runs {
			if v, asked := run["doomed"]; asked && !v {
				return i
			}
		}
		return -1
	}
	flowPoll(t, 60*time.Second, "doomed collected", func() (bool, error) { return collected(col.runs()) >= 0, nil })
	runs := col.runs()
	i := collected(runs)
	// Runs: at the start (doomed exists), on its deletion (first seen missing: still within
	// grace), after the grace period (gone).
	if i < 2 || !runs[i-1]["doomed"] {
		t.Fatalf("collections %v; want doomed reported existing on the collection its deletion triggered, gone only on a later one", runs)
	}
	for i, run := range runs {
		if !run["live"] {
			t.Errorf("collection %d: live ServiceAccount reported gone", i)
		}
	}
	if got := metric(t, r.reg, "credential_webhook_subjects_collected_total", nil); got != 1 {
		t.Errorf("subjects_collected_total = %v, want 1", got)
	}
}

// askingCollector records what existing answers for its names on each run, and "removes" the
// ones reported gone (once).
type askingCollector struct {
	ns    string
	names []string
	mu    sync.Mutex
	seen  []map[string]bool
	gone  map[string]bool
}

func (c *askingCollector) Collect(_ context.Context, lookup markers.Lookup) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gone == nil {
		c.gone = map[string]bool{}
	}
	run := map[string]bool{}
	removed := 0
	for _, n := range c.names {
		if c.gone[n] {
			continue
		}
		_, run[n] = lookup(c.ns, n)
		if !run[n] {
			c.gone[n] = true
			removed++
		}
	}
	c.seen = append(c.seen, run)
	return removed, nil
}

func (c *askingCollector) runs() []map[string]bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]map[string]bool, len(c.seen))
	copy(out, c.seen)
	return out
}

// The sweeper leader finishes only ServiceAccounts carrying our pending marker (set by admission,
// which checked the requester) whose claim they still make: it writes what the cloud returns,
// records the grant with the object's UID and removes the marker in one patch, after which the
// Job held for that ServiceAccount is released. A ServiceAccount with the same seed but no marker
// is never assigned; one whose marker claims another seed than it asks for is dropped with a
// Warning Event and never reaches the cloud.
func TestSweeperFinishesOnlyPendingServiceAccounts(t *testing.T) {
	ns := cluster.Namespace(t)
	// This webhook has no AWS seeds (admission plans nothing) and no sweeper: the test runs its own.
	cluster.StartWebhook(t, harness.WebhookOptions{Args: []string{"--sweeper=false"}})
	ctx := context.Background()
	seed := seedRole(t, "kubestash-fin-"+shortName(ns))
	other := seedRole(t, "kubestash-fin2-"+shortName(ns))
	op := operatorClient(t, ns)
	create := func() *corev1.ServiceAccount {
		sa, err := op.CoreV1().ServiceAccounts(ns).Create(ctx, sessionServiceAccount(ns, seed), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return sa
	}
	unmarked, pending, changed := create(), create(), create()
	// Admission's marker, written as the webhook itself (the admission policy and the guard let
	// only the webhook's own identity, or an allowed requester, set it).
	wh := webhookClient(t, nil)
	mark := func(name, seedARN string) {
		claim, _ := awsp.ClaimOf(map[string]string{annotations.SeedRole: seedARN})
		patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:%q}}}`, annotations.Pending, claim.String())
		if _, err := wh.CoreV1().ServiceAccounts(ns).Patch(ctx, name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	mark(pending.Name, seed)
	mark(changed.Name, other) // accepted for another seed than the one it asks for now
	asg := &roleAssigner{seed: seed}
	startSweeper(t, fastConfig("sweeper-"+ns, "replica-a"), wh, sweeper.Deps{Clouds: []sweeper.Cloud{asg}})
	job := createHeldJob(t, ns, pending.Name)

	var finished *corev1.ServiceAccount
	flowPoll(t, 60*time.Second, "the pending ServiceAccount finished", func() (bool, error) {
		sa, err := cluster.Client.CoreV1().ServiceAccounts(ns).Get(ctx, pending.Name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		finished = sa
		_, still := sa.Annotations[annotations.Pending]
		return !still && sa.Annotations[annotations.AWSRoleARN] != "", nil
	})
	if g := finished.Annotations[annotations.Granted]; !strings.HasPrefix(g, string(finished.UID)+" aws:") {
		t.Errorf("granted marker %q does not name the object's UID %s", g, finished.UID)
	}
	flowPoll(t, 60*time.Second, "its Job released", func() (bool, error) { return released(flowGetJob(t, ns, job.Name)), nil })
	if ev := waitForEvent(t, ns, job.Name, "Normal/Released"); !strings.Contains(ev, "in a row") {
		t.Errorf("Released event = %q; want the STS proof", ev)
	}
	if ev := flowWaitEvent(t, ns, "ServiceAccount", changed.Name, "Warning/ClaimDropped"); !strings.Contains(ev, "no longer asks") {
		t.Errorf("ClaimDropped event = %q", ev)
	}
	flowPoll(t, 30*time.Second, "the changed claim's marker removed", func() (bool, error) {
		sa, err := cluster.Client.CoreV1().ServiceAccounts(ns).Get(ctx, changed.Name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		_, still := sa.Annotations[annotations.Pending]
		return !still && sa.Annotations[annotations.Granted] == "" && sa.Annotations[annotations.AWSRoleARN] == "", nil
	})
	sa, err := cluster.Client.CoreV1().ServiceAccounts(ns).Get(ctx, unmarked.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := asg.calls(); len(got) != 1 || got[0] != pending.Name {
		t.Errorf("cloud called for %v; want only %s", got, pending.Name)
	}
	if sa.Annotations[annotations.AWSRoleARN] != "" {
		t.Errorf("unmarked ServiceAccount got a role: %v", sa.Annotations)
	}
}

// roleAssigner stands in for the AWS provider (sweeper.Cloud): it creates a derived role listing
// the ServiceAccount in moto and returns its ARN.
type roleAssigner struct {
	seed string
	mu   sync.Mutex
	seen []string
}

func (*roleAssigner) Name() string { return markers.AWS }

func (*roleAssigner) Claim(ann map[string]string) (markers.Claim, bool) { return awsp.ClaimOf(ann) }

func (*roleAssigner) Outputs() []string { return []string{annotations.AWSRoleARN} }

func (a *roleAssigner) Finish(_ context.Context, sa *corev1.ServiceAccount) (map[string]string, error) {
	a.mu.Lock()
	a.seen = append(a.seen, sa.Name)
	i := len(a.seen) - 1
	a.mu.Unlock()
	role, err := createDerivedRole(a.seed, i, "system:serviceaccount:"+sa.Namespace+":"+sa.Name)
	if err != nil {
		return nil, err
	}
	return map[string]string{annotations.AWSRoleARN: role}, nil
}

func (a *roleAssigner) calls() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.seen...)
}
