package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/iam"
	"github.com/aws/smithy-go"
	authorizationv1 "k8s.io/api/authorization/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"

	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/e2e/harness"
	"go.klusters.dev/credential-webhook/hold"
	"go.klusters.dev/credential-webhook/sweeper"
	"go.klusters.dev/credential-webhook/sweeper/awscheck"
	"go.klusters.dev/credential-webhook/testenv/iamproxy"
	"go.klusters.dev/credential-webhook/testenv/moto"
)

// The whole KubeStash flow through the REAL binary: no in-process sweeper. Every replica here
// runs `credential-webhook serve` with its sweeper on (the default), so the binary itself holds
// Jobs at admission, campaigns for the sweeper Lease, proves credentials with a TokenRequest
// token and sts:AssumeRoleWithWebIdentity through the IAM proxy (which verifies the token with
// the apiserver's key and enforces the propagation delay), finishes pending ServiceAccounts and
// collects subjects of deleted ones. What the tests read back comes from the apiserver (objects,
// Events, Pods the job controller created), from moto directly (trust policies), from the proxy
// (calls, refusals) and from the replicas' own logs and /metrics.
//
// Every test starts webhook replicas, so none runs in parallel (see harness.StartWebhook). The
// proxy's settings (propagation delay, faults) are global: each test resets what it set.

// flowGCGrace is the garbage collection grace period the GC tests run with (--gc-grace): long
// enough to span an assignment and the store of its ServiceAccount, short enough for CI.
const flowGCGrace = 10 * time.Second

// flowOperatorGroups are the groups of the KubeStash operator's ServiceAccount token.
var flowOperatorGroups = []string{"system:serviceaccounts", "system:serviceaccounts:kubestash", "system:authenticated"}

// flowWorld is one test's KubeStash installation: its namespace, the operator acting in it
// (impersonated, with the edit role there, its admission warnings collected), and a seed role.
type flowWorld struct {
	ns     string
	suffix string // short, unique per test run: names replicas and IAM objects
	seed   string
	op     kubernetes.Interface
	warn   *harness.Warnings
	seq    int
}

// flowSetup creates the namespace, binds the operator and creates a seed role trusting the
// cluster's issuer (in moto directly, so the proxy neither counts nor delays it).
func flowSetup(t *testing.T, seedPrefix string) *flowWorld {
	t.Helper()
	ns := cluster.Namespace(t)
	operatorClient(t, ns) // the edit role for the operator, and the wait until RBAC sees it
	w := &flowWorld{ns: ns, suffix: ns[strings.LastIndexByte(ns, '-')+1:], warn: &harness.Warnings{}}
	cfg := rest.CopyConfig(cluster.Config)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: operatorUser, Groups: flowOperatorGroups}
	cfg.WarningHandler = w.warn
	op, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	w.op = op
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// moto lives as long as the package run (-count=N reruns every test against it): unique names.
	name := fmt.Sprintf("%s-%s-%x", seedPrefix, w.suffix, time.Now().UnixNano()&0xffffff)
	if w.seed, err = moto.CreateSeedRole(ctx, cluster.AWSConfig(), name, "/", cluster.Issuer); err != nil {
		t.Fatalf("create seed role %s: %v", name, err)
	}
	return w
}

// replica starts `credential-webhook serve` for this world's seed, with its sweeper, the Pod
// IRSA injection and the given extra flags. name is unique per package run; it is also the
// replica's identity in the sweeper Lease.
func (w *flowWorld) replica(t *testing.T, letter string, extra ...string) *harness.Webhook {
	t.Helper()
	name := "flow-" + w.suffix + "-" + letter
	args := []string{
		"--aws-seed-roles=" + w.seed,
		"--allowed-requesters=user:" + operatorUser,
		"--allowed-namespaces=*",
		"--aws-inject-pod-identity",
		"--aws-region=us-east-1",
		"--lease-namespace=" + harness.WebhookNamespace,
		"--identity=" + name,
	}
	return cluster.StartWebhook(t, harness.WebhookOptions{Name: name, Args: append(args, extra...)})
}

// serviceAccount creates a per-session ServiceAccount as the operator: KubeStash names it after
// the invoker, the session and a Unix timestamp, and copies its seed role into it.
func (w *flowWorld) serviceAccount(t *testing.T) *corev1.ServiceAccount {
	t.Helper()
	w.seq++
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{
		Name:      fmt.Sprintf("sample-backup-daemon-demo-session-%d", time.Now().Unix()+int64(w.seq)),
		Namespace: w.ns,
		Annotations: map[string]string{
			annotations.SeedRole:    w.seed,
			annotations.BucketNames: harness.BucketNames,
		},
	}}
	created, err := w.op.CoreV1().ServiceAccounts(w.ns).Create(context.Background(), sa, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("operator: create ServiceAccount %s: %v", sa.Name, err)
	}
	return created
}

// flowJob is KubeStash's backup Job for the session of serviceAccount, with a fixed name so its
// review can be found on the wire.
func flowJob(ns, name, serviceAccount string) *batchv1.Job {
	j := backupJob(ns, serviceAccount)
	j.GenerateName, j.Name = "", name
	j.Labels["kubestash.com/session-name"] = serviceAccount
	return j
}

// job creates job as the operator and returns it as stored with the warnings of that request.
func (w *flowWorld) job(t *testing.T, job *batchv1.Job) (*batchv1.Job, []string) {
	t.Helper()
	w.warn.Take()
	created, err := w.op.BatchV1().Jobs(w.ns).Create(context.Background(), job, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("operator: create Job %s: %v", job.Name, err)
	}
	return created, w.warn.Take()
}

// flowWaitLeader waits until one of names holds the sweeper Lease and returns it. A replica
// SIGKILLed by an earlier test keeps the Lease until it expires (15 s).
func flowWaitLeader(t *testing.T, names ...string) string {
	t.Helper()
	var holder string
	flowPoll(t, 60*time.Second, "one of "+strings.Join(names, ", ")+" leading the sweeper", func() (bool, error) {
		holder = flowLeaseHolder()
		return slices.Contains(names, holder), nil
	})
	return holder
}

func flowLeaseHolder() string {
	l, err := cluster.Client.CoordinationV1().Leases(harness.WebhookNamespace).Get(context.Background(), sweeper.DefaultLeaseName, metav1.GetOptions{})
	if err != nil || l.Spec.HolderIdentity == nil {
		return ""
	}
	return *l.Spec.HolderIdentity
}

// flowPoll polls cond every 200 ms until it holds, fails the test on an error or after timeout.
func flowPoll(t testing.TB, timeout time.Duration, what string, cond func() (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, err := cond()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func flowGetJob(t *testing.T, ns, name string) *batchv1.Job {
	t.Helper()
	j, err := cluster.Client.BatchV1().Jobs(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get Job %s: %v", name, err)
	}
	return j
}

// flowHeld reports whether j is held the way our admission holds: suspended with both of our
// annotations.
func flowHeld(j *batchv1.Job) bool {
	return j.Spec.Suspend != nil && *j.Spec.Suspend &&
		j.Annotations[annotations.HeldSince] != "" && j.Annotations[annotations.HoldReason] != ""
}

// flowReleased reports whether j runs and carries none of our annotations.
func flowReleased(j *batchv1.Job) bool {
	_, since := j.Annotations[annotations.HeldSince]
	_, reason := j.Annotations[annotations.HoldReason]
	return j.Spec.Suspend != nil && !*j.Spec.Suspend && !since && !reason
}

// flowEvents returns "Type/Reason: message" of credential-webhook's Events about an object.
func flowEvents(t *testing.T, ns, kind, name string) []string {
	t.Helper()
	evs, err := cluster.Client.CoreV1().Events(ns).List(context.Background(), metav1.ListOptions{
		FieldSelector: "involvedObject.kind=" + kind + ",involvedObject.name=" + name,
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

func flowWaitEvent(t *testing.T, ns, kind, name, prefix string) string {
	t.Helper()
	var found string
	flowPoll(t, 30*time.Second, "Event "+prefix+" on "+kind+" "+name, func() (bool, error) {
		for _, e := range flowEvents(t, ns, kind, name) {
			if strings.HasPrefix(e, prefix) {
				found = e
				return true, nil
			}
		}
		return false, nil
	})
	return found
}

func flowWaitPod(t *testing.T, ns, job string) *corev1.Pod {
	t.Helper()
	var pod *corev1.Pod
	flowPoll(t, 60*time.Second, "the job controller's Pod for "+job, func() (bool, error) {
		list, err := cluster.Client.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: "batch.kubernetes.io/job-name=" + job})
		if err != nil || len(list.Items) == 0 {
			return false, err
		}
		pod = &list.Items[0]
		return true, nil
	})
	return pod
}

// flowReleaseTime is when the replica logged the release of Job ns/name (slog's time field,
// nanosecond precision); ok=false while it has not.
func flowReleaseTime(w *harness.Webhook, ns, name string) (time.Time, string, bool) {
	for _, l := range w.LogLines() {
		if l.Msg() == "released held Job" && l.String("job") == ns+"/"+name {
			at, err := time.Parse(time.RFC3339Nano, l.String("time"))
			return at, l.String("reason"), err == nil
		}
	}
	return time.Time{}, "", false
}

// flowMetric reads one sample of the replica's /metrics (Prometheus text format): the first
// series named name whose labels include want; 0 when there is none.
func flowMetric(t testing.TB, w *harness.Webhook, name string, want map[string]string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + w.MetricsAddr + "/metrics")
	if err != nil {
		t.Fatalf("scrape %s: %v", w.Name, err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		series, value, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		metricName, labels, _ := strings.Cut(series, "{")
		if metricName != name {
			continue
		}
		match := true
		for k, v := range want {
			if !strings.Contains(labels, k+`="`+v+`"`) {
				match = false
			}
		}
		if !match {
			continue
		}
		f, err := strconv.ParseFloat(strings.TrimSpace(value), 64)
		if err != nil {
			t.Fatalf("metric %s: %v", line, err)
		}
		return f
	}
	return 0
}

// flowTrustedSubjects reads a derived role's subjects from moto directly (the proxy neither
// counts nor delays it). A role that does not exist (deleted empty) lists nobody.
func flowTrustedSubjects(ctx context.Context, client *iam.Client, roleARN string) ([]string, error) {
	name := roleARN[strings.LastIndexByte(roleARN, '/')+1:]
	out, err := client.GetRole(ctx, &iam.GetRoleInput{RoleName: aws.String(name)})
	var ae smithy.APIError
	if errors.As(err, &ae) && ae.ErrorCode() == "NoSuchEntity" {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("GetRole %s: %w", name, err)
	}
	doc, err := url.QueryUnescape(aws.ToString(out.Role.AssumeRolePolicyDocument))
	if err != nil {
		return nil, err
	}
	return awscheck.TrustedSubjects(doc)
}

func flowSubject(ns, name string) string { return "system:serviceaccount:" + ns + ":" + name }

// flowCallsSince is the per-action difference between the proxy's counts now and before.
func flowCallsSince(before map[string]int) map[string]int {
	out := map[string]int{}
	for k, v := range cluster.IAM.Calls() {
		if d := v - before[k]; d > 0 {
			out[k] = d
		}
	}
	return out
}

func flowFormatCalls(calls map[string]int) string {
	keys := make([]string, 0, len(calls))
	total := 0
	for k, v := range calls {
		keys = append(keys, k)
		total += v
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s=%d ", k, calls[k])
	}
	fmt.Fprintf(&b, "(total %d)", total)
	return b.String()
}

func flowEnv(c corev1.Container, name string) (string, bool) {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value, true
		}
	}
	return "", false
}

// The IRSA contract, as the EKS pod-identity webhook writes it and AWS SDKs read it (DESIGN.md,
// "Outputs"). Spelled out here rather than taken from package pods, so a renamed constant there
// fails this test instead of silently changing what Pods get.
const (
	flowIRSAVolume     = "aws-iam-token"
	flowIRSAMountPath  = "/var/run/secrets/eks.amazonaws.com/serviceaccount"
	flowIRSATokenFile  = flowIRSAMountPath + "/token"
	flowIRSAAudience   = "sts.amazonaws.com"
	flowIRSAExpiration = 86400 // the EKS webhook's default token lifetime, seconds
	// flowIRSAJitter: the default lifetime loses up to 10 % at random per Pod
	// (--aws-token-expiration-jitter), so Pods started together do not refresh together.
	flowIRSAJitter = flowIRSAExpiration / 10
)

// flowCheckIRSA asserts the Pod carries what the EKS pod-identity webhook would have injected
// for roleARN, in every container.
func flowCheckIRSA(t *testing.T, pod *corev1.Pod, roleARN string) {
	t.Helper()
	for _, c := range pod.Spec.Containers {
		for k, want := range map[string]string{
			"AWS_ROLE_ARN": roleARN, "AWS_WEB_IDENTITY_TOKEN_FILE": flowIRSATokenFile,
			"AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1", "AWS_STS_REGIONAL_ENDPOINTS": "regional",
		} {
			if got, ok := flowEnv(c, k); !ok || got != want {
				t.Errorf("Pod %s container %s: env %s = %q (present %v), want %q", pod.Name, c.Name, k, got, ok, want)
			}
		}
		mounted := false
		for _, m := range c.VolumeMounts {
			if m.Name == flowIRSAVolume {
				mounted = m.MountPath == flowIRSAMountPath && m.ReadOnly
			}
		}
		if !mounted {
			t.Errorf("Pod %s container %s: no read-only mount of %s at %s: %+v", pod.Name, c.Name, flowIRSAVolume, flowIRSAMountPath, c.VolumeMounts)
		}
	}
	var vol *corev1.Volume
	for i := range pod.Spec.Volumes {
		if pod.Spec.Volumes[i].Name == flowIRSAVolume {
			vol = &pod.Spec.Volumes[i]
		}
	}
	if vol == nil || vol.Projected == nil || len(vol.Projected.Sources) != 1 || vol.Projected.Sources[0].ServiceAccountToken == nil {
		t.Fatalf("Pod %s: no projected ServiceAccount token volume %s: %+v", pod.Name, flowIRSAVolume, pod.Spec.Volumes)
	}
	tok := vol.Projected.Sources[0].ServiceAccountToken
	if exp := ptr.Deref(tok.ExpirationSeconds, 0); tok.Audience != flowIRSAAudience || tok.Path != "token" || exp > flowIRSAExpiration || exp < flowIRSAExpiration-flowIRSAJitter {
		t.Errorf("Pod %s: token projection = audience %q path %q expiration %v; want %q, \"token\", %d less at most %d",
			pod.Name, tok.Audience, tok.Path, exp, flowIRSAAudience, flowIRSAExpiration, flowIRSAJitter)
	}
}

// 1. The whole story. The operator creates the session ServiceAccount (admission assigns a
// derived role, whose fresh trust policy takes 5 s to reach STS) and the Job right away: the
// Job is stored suspended with our hold annotations and the operator gets a warning. The
// binary's sweeper keeps checking with a real token of that ServiceAccount and releases the Job
// only once STS accepted it N times in a row (Events Held, then Released); the job controller
// then creates the Pod, which the binary injects with the derived role's IRSA credentials.
func TestFlowJobHeldUntilTrustPropagatesThenRuns(t *testing.T) {
	const propagation = 5 * time.Second
	const checks = 3
	w := flowSetup(t, "kubestash-story")
	wh := w.replica(t, "a", "--sweeper-checks-in-a-row="+strconv.Itoa(checks))
	flowWaitLeader(t, wh.Name)
	cluster.IAM.SetPropagationDelay(propagation)
	t.Cleanup(func() { cluster.IAM.SetPropagationDelay(0) })
	cluster.IAM.ResetCalls()

	createStart := time.Now()
	sa := w.serviceAccount(t)
	createdAt := time.Now()
	role := sa.Annotations[annotations.AWSRoleARN]
	if !awscheck.DerivedFrom(w.seed, role) {
		t.Fatalf("ServiceAccount %s has role %q, want a derived role of %s (annotations %v)", sa.Name, role, w.seed, sa.Annotations)
	}
	// Admission planned the role and recorded the claim; the writer adds the trust once the
	// ServiceAccount is persisted.
	if p := sa.Annotations[annotations.Pending]; !strings.HasPrefix(p, "aws:") {
		t.Fatalf("ServiceAccount admitted without the AWS claim: %v", sa.Annotations)
	}

	job, warnings := w.job(t, flowJob(w.ns, sa.Name, sa.Name))
	jobCreatedAt := time.Now()
	// Held either way: the trust is not written yet (IdentityPending) or written but not proven
	// (CredentialsUnverified), depending on how fast the writer was.
	reason := job.Annotations[annotations.HoldReason]
	if !flowHeld(job) || (reason != hold.ReasonCredentialsUnverified && reason != hold.ReasonIdentityPending) {
		t.Fatalf("Job as stored: suspend %v annotations %v; want held with reason %s or %s", ptr.Deref(job.Spec.Suspend, false), job.Annotations,
			hold.ReasonIdentityPending, hold.ReasonCredentialsUnverified)
	}
	heldSince, err := time.Parse(time.RFC3339, job.Annotations[annotations.HeldSince])
	if err != nil || heldSince.Before(createStart.Add(-2*time.Second)) || heldSince.After(jobCreatedAt.Add(time.Second)) {
		t.Errorf("held-since %q (%v) is not the admission time (between %s and %s)", job.Annotations[annotations.HeldSince], err, createStart, jobCreatedAt)
	}
	if !slices.ContainsFunc(warnings, func(s string) bool {
		return strings.Contains(s, "suspended this Job") && strings.Contains(s, reason)
	}) {
		t.Errorf("the operator got no hold warning; warnings %q", warnings)
	}
	if ev := flowWaitEvent(t, w.ns, "Job", job.Name, "Normal/Held"); !strings.Contains(ev, sa.Name) || !strings.Contains(ev, reason) {
		t.Errorf("Held event does not name the ServiceAccount and reason: %s", ev)
	}

	var releasedAt time.Time
	flowPoll(t, 90*time.Second, "the Job released", func() (bool, error) {
		at, reason, ok := flowReleaseTime(wh, w.ns, job.Name)
		if ok && reason != sweeper.ReleaseReady {
			return false, fmt.Errorf("released with reason %q, want %q", reason, sweeper.ReleaseReady)
		}
		releasedAt = at
		return ok && flowReleased(flowGetJob(t, w.ns, job.Name)), nil
	})
	// The trust policy changed during the ServiceAccount create, so STS accepts the token from
	// some moment in [createStart, createdAt] + propagation on.
	if earliest := createStart.Add(propagation); releasedAt.Before(earliest) {
		t.Errorf("Job released at %s, before the trust policy could have propagated (%s)", releasedAt.Format(time.StampMilli), earliest.Format(time.StampMilli))
	}
	ev := flowWaitEvent(t, w.ns, "Job", job.Name, "Normal/Released")
	if !strings.Contains(ev, role) || !strings.Contains(ev, fmt.Sprintf("%d times in a row", checks)) {
		t.Errorf("Released event = %q; want the role and %d STS successes in a row", ev, checks)
	}
	refused := 0
	for _, r := range cluster.IAM.Rejections() {
		if r.Action == "sts:AssumeRoleWithWebIdentity" && strings.Contains(r.Reason, "propagation delay") {
			refused++
		}
	}
	// The sweeper sees the Job within moments of its creation; when that was well inside the
	// propagation window, STS must have refused it at least once.
	if jobCreatedAt.Before(createStart.Add(propagation-2*time.Second)) && refused == 0 {
		t.Errorf("STS never refused the sweeper during propagation; rejections %+v", cluster.IAM.Rejections())
	}
	calls := cluster.IAM.Calls()
	if got := calls["sts:AssumeRoleWithWebIdentity"]; got < refused+checks {
		t.Errorf("sts:AssumeRoleWithWebIdentity calls = %d; want at least %d refused + %d accepted", got, refused, checks)
	}
	if got := flowMetric(t, wh, "credential_webhook_releases_total", map[string]string{"reason": sweeper.ReleaseReady}); got != 1 {
		t.Errorf("releases_total{reason=ready} = %v, want 1", got)
	}
	if got := flowMetric(t, wh, "credential_webhook_held_jobs", nil); got != 0 {
		t.Errorf("held_jobs = %v after the release, want 0", got)
	}

	pod := flowWaitPod(t, w.ns, job.Name)
	flowCheckIRSA(t, pod, role)
	if pod.Spec.ServiceAccountName != sa.Name {
		t.Errorf("Pod runs as %q, want %s", pod.Spec.ServiceAccountName, sa.Name)
	}
	t.Logf("figures: propagation delay %s, %d checks in a row; SA create %s; Job held at %s; released %s after the SA create returned, i.e. %s after the propagation delay ended (upper bound of its end: create return + delay; lower bound of the delay: %s); STS refused %d times during propagation; proxy calls %s",
		propagation, checks, createdAt.Sub(createStart).Round(time.Millisecond), heldSince.Format(time.TimeOnly),
		releasedAt.Sub(createdAt).Round(time.Millisecond), releasedAt.Sub(createdAt.Add(propagation)).Round(time.Millisecond),
		releasedAt.Sub(createStart.Add(propagation)).Round(time.Millisecond), refused, flowFormatCalls(calls))
}

// 2. A Job whose credentials never work (the seed is allowed and the role assigned, but its
// trust policy never reaches STS) is released after --max-hold anyway, with a Warning Event
// naming what was missing, so the backup fails visibly instead of hanging.
func TestFlowMaxHoldReleasesWithoutCredentials(t *testing.T) {
	const maxHold = 10 * time.Second
	w := flowSetup(t, "kubestash-maxhold")
	wh := w.replica(t, "a", "--max-hold="+maxHold.String())
	flowWaitLeader(t, wh.Name)
	cluster.IAM.SetPropagationDelay(time.Hour)
	t.Cleanup(func() { cluster.IAM.SetPropagationDelay(0) })

	sa := w.serviceAccount(t)
	role := sa.Annotations[annotations.AWSRoleARN]
	if !awscheck.DerivedFrom(w.seed, role) {
		t.Fatalf("ServiceAccount has role %q, want a derived role of %s", role, w.seed)
	}
	job, _ := w.job(t, flowJob(w.ns, sa.Name, sa.Name))
	if !flowHeld(job) {
		t.Fatalf("Job not held at admission: suspend %v annotations %v", ptr.Deref(job.Spec.Suspend, false), job.Annotations)
	}
	heldSince, err := time.Parse(time.RFC3339, job.Annotations[annotations.HeldSince])
	if err != nil {
		t.Fatal(err)
	}

	var releasedAt time.Time
	flowPoll(t, 90*time.Second, "the Job released after max hold", func() (bool, error) {
		at, reason, ok := flowReleaseTime(wh, w.ns, job.Name)
		if ok && reason != sweeper.ReleaseMaxHold {
			return false, fmt.Errorf("released with reason %q, want %q", reason, sweeper.ReleaseMaxHold)
		}
		releasedAt = at
		return ok && flowReleased(flowGetJob(t, w.ns, job.Name)), nil
	})
	if releasedAt.Before(heldSince.Add(maxHold)) {
		t.Errorf("released at %s, before max hold %s after %s", releasedAt.Format(time.StampMilli), maxHold, heldSince.Format(time.StampMilli))
	}
	ev := flowWaitEvent(t, w.ns, "Job", job.Name, "Warning/ReleasedWithoutCredentials")
	for _, want := range []string{"max hold " + maxHold.String(), "sts:AssumeRoleWithWebIdentity on " + role + " refused", "AccessDenied"} {
		if !strings.Contains(ev, want) {
			t.Errorf("warning %q does not say %q", ev, want)
		}
	}
	if slices.ContainsFunc(flowEvents(t, w.ns, "Job", job.Name), func(e string) bool { return strings.HasPrefix(e, "Normal/Released") }) {
		t.Error("a Job released without credentials also got a Normal Released event")
	}
	if got := flowMetric(t, wh, "credential_webhook_releases_total", map[string]string{"reason": sweeper.ReleaseMaxHold}); got != 1 {
		t.Errorf("releases_total{reason=max-hold} = %v, want 1", got)
	}
	flowWaitPod(t, w.ns, job.Name) // it runs, and fails visibly at the cloud
	t.Logf("figures: held since %s, released %s later (max hold %s)", heldSince.Format(time.TimeOnly), releasedAt.Sub(heldSince).Round(time.Millisecond), maxHold)
}

// 3. Jobs that are not ours to hold are left exactly as they are: a KubeStash Job suspended by
// someone else (Kueue), one that arrives suspended with a forged hold annotation (the guard
// strips it, so the sweeper never resumes it), and a Job that is not KubeStash's at all, even
// for a ServiceAccount whose credentials are not proven yet. A control Job held and released
// meanwhile shows the sweeper was at work on the same namespace.
func TestFlowLeavesOtherJobsAlone(t *testing.T) {
	w := flowSetup(t, "kubestash-others")
	wh := w.replica(t, "a")
	flowWaitLeader(t, wh.Name)
	sa := w.serviceAccount(t)

	kueue := flowJob(w.ns, "kueue-"+sa.Name, sa.Name)
	kueue.Labels["kueue.x-k8s.io/queue-name"] = "backup-queue"
	kueue.Spec.Suspend = ptr.To(true)
	kueue, kueueWarn := w.job(t, kueue)

	forged := flowJob(w.ns, "forged-"+sa.Name, sa.Name)
	forged.Spec.Suspend = ptr.To(true)
	forged.Annotations = map[string]string{
		annotations.HeldSince:  time.Now().UTC().Format(time.RFC3339),
		annotations.HoldReason: hold.ReasonIdentityPending,
	}
	forged, forgedWarn := w.job(t, forged)

	foreign := flowJob(w.ns, "report-"+sa.Name, sa.Name)
	foreign.Labels = map[string]string{"app.kubernetes.io/name": "nightly-report"}
	foreign, _ = w.job(t, foreign)

	control, _ := w.job(t, flowJob(w.ns, sa.Name, sa.Name))
	if !flowHeld(control) {
		t.Fatalf("control Job not held: suspend %v annotations %v", ptr.Deref(control.Spec.Suspend, false), control.Annotations)
	}

	if len(kueueWarn) != 0 {
		t.Errorf("a Job suspended by someone else got warnings: %q", kueueWarn)
	}
	if _, ok := forged.Annotations[annotations.HeldSince]; ok || forged.Annotations[annotations.HoldReason] != "" {
		t.Errorf("forged hold annotations survived admission: %v", forged.Annotations)
	}
	if !slices.ContainsFunc(forgedWarn, func(s string) bool { return strings.Contains(s, annotations.HeldSince) }) {
		t.Errorf("no warning about the stripped %s; warnings %q", annotations.HeldSince, forgedWarn)
	}
	for _, r := range cluster.Reviews() {
		if r.Namespace != w.ns || r.Kind != "Job" {
			continue
		}
		switch r.Name {
		case kueue.Name:
			if !r.Allowed || r.PatchOps != 0 {
				t.Errorf("review of the Kueue Job: allowed %v, patch %s; want allowed, no patch", r.Allowed, r.Patch)
			}
		case forged.Name:
			if !r.Allowed || strings.Contains(string(r.Patch), "/spec/suspend") {
				t.Errorf("review of the forged Job: allowed %v, patch %s; want allowed, spec.suspend untouched", r.Allowed, r.Patch)
			}
		case foreign.Name:
			if r.PatchOps != 0 {
				t.Errorf("review of the non-KubeStash Job patched it: %s", r.Patch)
			}
		}
	}

	flowPoll(t, 90*time.Second, "the control Job released", func() (bool, error) { return flowReleased(flowGetJob(t, w.ns, control.Name)), nil })
	flowWaitPod(t, w.ns, foreign.Name)

	for _, before := range []*batchv1.Job{kueue, forged} {
		now := flowGetJob(t, w.ns, before.Name)
		if now.Spec.Suspend == nil || !*now.Spec.Suspend {
			t.Errorf("Job %s was resumed", now.Name)
		}
		if !maps.Equal(now.Annotations, before.Annotations) {
			t.Errorf("Job %s annotations changed: %v -> %v", now.Name, before.Annotations, now.Annotations)
		}
		if evs := flowEvents(t, w.ns, "Job", now.Name); len(evs) != 0 {
			t.Errorf("Job %s got Events from credential-webhook: %q", now.Name, evs)
		}
	}
	now := flowGetJob(t, w.ns, foreign.Name)
	if ptr.Deref(now.Spec.Suspend, false) || now.Annotations[annotations.HeldSince] != "" {
		t.Errorf("non-KubeStash Job touched: suspend %v annotations %v", ptr.Deref(now.Spec.Suspend, false), now.Annotations)
	}
	if evs := flowEvents(t, w.ns, "Job", foreign.Name); len(evs) != 0 {
		t.Errorf("non-KubeStash Job got Events from credential-webhook: %q", evs)
	}
}

// 4. Garbage collection through the binary: 50 session ServiceAccounts are assigned at
// admission (several derived roles), then deleted; the sweeper sees the deletions, waits out its
// grace period (admission assigns before the ServiceAccount is stored) and removes their
// subjects from the trust policies, as moto shows.
func TestFlowGarbageCollectsDeletedServiceAccounts(t *testing.T) {
	const n = 50
	ctx := context.Background()
	w := flowSetup(t, "kubestash-gc")
	wh := w.replica(t, "a", "--gc-grace="+flowGCGrace.String())
	flowWaitLeader(t, wh.Name)

	createStart := time.Now()
	createCalls := cluster.IAM.Calls()
	roles := map[string][]string{} // role ARN -> ServiceAccount names
	var names []string
	for range n {
		names = append(names, w.serviceAccount(t).Name)
	}
	for name, sa := range waitGranted(t, w.ns, names, time.Minute) {
		role := sa.Annotations[annotations.AWSRoleARN]
		if !awscheck.DerivedFrom(w.seed, role) {
			t.Fatalf("ServiceAccount %s: role %q, want a derived role of %s (annotations %v)", name, role, w.seed, sa.Annotations)
		}
		roles[role] = append(roles[role], name)
	}
	createTook, createIAM := time.Since(createStart), flowCallsSince(createCalls)
	motoIAM := iam.NewFromConfig(cluster.AWSConfig())
	listed := func() (int, error) {
		total := 0
		for role := range roles {
			subs, err := flowTrustedSubjects(ctx, motoIAM, role)
			if err != nil {
				return 0, err
			}
			for _, s := range subs {
				if strings.HasPrefix(s, "system:serviceaccount:"+w.ns+":") {
					total++
				}
			}
		}
		return total, nil
	}
	if got, err := listed(); err != nil || got != n {
		t.Fatalf("derived roles list %d of the %d ServiceAccounts (err %v)", got, n, err)
	}

	before := cluster.IAM.Calls()
	collectedBefore := flowMetric(t, wh, "credential_webhook_subjects_collected_total", nil)
	start := time.Now()
	for _, name := range names {
		if err := w.op.CoreV1().ServiceAccounts(w.ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
			t.Fatalf("delete %s: %v", name, err)
		}
	}
	deleted := time.Since(start)
	// The grace period is flowGCGrace, the debounce 2 s.
	var left int
	flowPoll(t, flowGCGrace+2*time.Minute, "the deleted ServiceAccounts' subjects gone from moto", func() (bool, error) {
		var err error
		left, err = listed()
		return left == 0, err
	})
	took := time.Since(start)
	if took < flowGCGrace {
		t.Errorf("subjects collected %s after the first delete, before the grace period %s", took, flowGCGrace)
	}
	calls := flowCallsSince(before)
	if got := flowMetric(t, wh, "credential_webhook_subjects_collected_total", nil) - collectedBefore; got != n {
		t.Errorf("subjects_collected_total grew by %v, want %d", got, n)
	}
	if calls["iam:UpdateAssumeRolePolicy"]+calls["iam:DeleteRole"] == 0 {
		t.Errorf("subjects left moto without a trust policy write or role deletion through the proxy: %s", flowFormatCalls(calls))
	}
	t.Logf("figures: %d ServiceAccounts in %d derived roles, assigned in %s (IAM %s); deleted in %s; subjects gone from moto %s after the first delete (grace %s, debounce 2s); IAM calls for the collection: %s",
		n, len(roles), createTook.Round(time.Millisecond), flowFormatCalls(createIAM), deleted.Round(time.Millisecond),
		took.Round(time.Second), flowGCGrace, flowFormatCalls(calls))
}

// 5. Leader handover through real processes: two replicas; the one holding the sweeper Lease
// is SIGKILLed while Jobs are held (it neither renews nor releases the Lease); the other takes
// the Lease once it expires and releases every Job, and admission keeps working meanwhile.
func TestFlowSweeperLeaderKilledWhileJobsHeld(t *testing.T) {
	const propagation = 12 * time.Second
	w := flowSetup(t, "kubestash-handover")
	a := w.replica(t, "a")
	b := w.replica(t, "b")
	leaderName := flowWaitLeader(t, a.Name, b.Name)
	leader, survivor := a, b
	if leaderName == b.Name {
		leader, survivor = b, a
	}
	cluster.IAM.SetPropagationDelay(propagation)
	t.Cleanup(func() { cluster.IAM.SetPropagationDelay(0) })

	sas := []*corev1.ServiceAccount{w.serviceAccount(t), w.serviceAccount(t)}
	var held []*batchv1.Job
	for i, sa := range []*corev1.ServiceAccount{sas[0], sas[0], sas[1]} {
		j, _ := w.job(t, flowJob(w.ns, fmt.Sprintf("%s-%d", sa.Name, i), sa.Name))
		if !flowHeld(j) {
			t.Fatalf("Job %s not held at admission: %v", j.Name, j.Annotations)
		}
		held = append(held, j)
	}
	// The leader is working on them.
	for _, j := range held {
		flowWaitEvent(t, w.ns, "Job", j.Name, "Normal/Held")
	}
	for _, j := range held {
		if now := flowGetJob(t, w.ns, j.Name); !flowHeld(now) {
			t.Fatalf("Job %s no longer held before the kill (propagation %s): %v", j.Name, propagation, now.Annotations)
		}
	}
	killedAt := time.Now()
	if err := leader.Kill(); err != nil {
		t.Fatal(err)
	}
	<-leader.Exited()
	if err := leader.ExitErr(); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Errorf("leader %s exit = %v, want killed", leader.Name, err)
	}

	// Admission keeps working on the survivor while the Lease is orphaned.
	late, _ := w.job(t, flowJob(w.ns, sas[1].Name+"-late", sas[1].Name))
	if !flowHeld(late) {
		t.Errorf("Job created after the kill not held: %v", late.Annotations)
	}
	held = append(held, late)

	flowPoll(t, 60*time.Second, survivor.Name+" taking the sweeper Lease", func() (bool, error) { return flowLeaseHolder() == survivor.Name, nil })
	tookOver := time.Since(killedAt)
	flowPoll(t, 90*time.Second, "every held Job released", func() (bool, error) {
		for _, j := range held {
			if !flowReleased(flowGetJob(t, w.ns, j.Name)) {
				return false, nil
			}
		}
		return true, nil
	})
	allReleased := time.Since(killedAt)
	for _, j := range held {
		if _, reason, ok := flowReleaseTime(survivor, w.ns, j.Name); !ok || reason != sweeper.ReleaseReady {
			t.Errorf("Job %s: survivor %s logged no ready release (logged %v, reason %q)", j.Name, survivor.Name, ok, reason)
		}
		if _, _, ok := flowReleaseTime(leader, w.ns, j.Name); ok {
			t.Errorf("Job %s released by the killed leader", j.Name)
		}
	}
	if got := flowMetric(t, survivor, "credential_webhook_releases_total", map[string]string{"reason": sweeper.ReleaseReady}); got != float64(len(held)) {
		t.Errorf("survivor releases_total{reason=ready} = %v, want %d", got, len(held))
	}
	if got := flowMetric(t, survivor, "credential_webhook_held_jobs", nil); got != 0 {
		t.Errorf("survivor held_jobs = %v, want 0", got)
	}
	t.Logf("figures: leader %s killed; %s took the Lease %s later (lease duration %s) and all %d Jobs were released %s after the kill (propagation %s)",
		leader.Name, survivor.Name, tookOver.Round(100*time.Millisecond), sweeper.DefaultLeaseDuration, len(held), allReleased.Round(100*time.Millisecond), propagation)
}

// 6. Admission within its budget: IAM slower than the budget makes admission accept the
// ServiceAccount with our pending marker and a warning, and hold its Job; once IAM answers
// again the binary's sweeper finishes the assignment (role ARN set, marker removed in one
// patch), the subject appears in the trust policy, and the Job is released.
func TestFlowPendingServiceAccountFinishedBySweeper(t *testing.T) {
	const latency = 9 * time.Second // the ServiceAccount webhook's timeout is 10 s, its budget 8 s
	ctx := context.Background()
	w := flowSetup(t, "kubestash-pending")
	wh := w.replica(t, "a")
	flowWaitLeader(t, wh.Name)
	cluster.IAM.SetFaults(iamproxy.Faults{Latency: latency, Actions: []string{"iam:*"}})
	faulty := true
	t.Cleanup(func() {
		if faulty {
			cluster.IAM.SetFaults(iamproxy.Faults{})
		}
	})

	w.warn.Take()
	start := time.Now()
	sa := w.serviceAccount(t)
	admitted := time.Since(start)
	warnings := w.warn.Take()
	if _, pending := sa.Annotations[annotations.Pending]; !pending || sa.Annotations[annotations.AWSRoleARN] != "" {
		t.Fatalf("ServiceAccount admitted with annotations %v; want the pending marker and no role", sa.Annotations)
	}
	if !slices.ContainsFunc(warnings, func(s string) bool { return strings.Contains(s, "did not finish in time") }) {
		t.Errorf("no deferred-assignment warning; warnings %q", warnings)
	}
	job, _ := w.job(t, flowJob(w.ns, sa.Name, sa.Name))
	if !flowHeld(job) || job.Annotations[annotations.HoldReason] != hold.ReasonIdentityPending {
		t.Errorf("Job of a pending ServiceAccount: annotations %v; want held with %s", job.Annotations, hold.ReasonIdentityPending)
	}

	cluster.IAM.SetFaults(iamproxy.Faults{})
	faulty = false
	healed := time.Now()
	var finished *corev1.ServiceAccount
	flowPoll(t, 2*time.Minute, "the sweeper finishing the pending ServiceAccount", func() (bool, error) {
		got, err := cluster.Client.CoreV1().ServiceAccounts(w.ns).Get(ctx, sa.Name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		_, still := got.Annotations[annotations.Pending]
		finished = got
		return !still && got.Annotations[annotations.AWSRoleARN] != "", nil
	})
	finishTook := time.Since(healed)
	role := finished.Annotations[annotations.AWSRoleARN]
	if !awscheck.DerivedFrom(w.seed, role) {
		t.Errorf("finished role %q is not a derived role of %s", role, w.seed)
	}
	subs, err := flowTrustedSubjects(ctx, iam.NewFromConfig(cluster.AWSConfig()), role)
	if err != nil || !slices.Contains(subs, flowSubject(w.ns, sa.Name)) {
		t.Errorf("trust policy of %s lists %v (err %v); want %s", role, subs, err, flowSubject(w.ns, sa.Name))
	}
	flowWaitEvent(t, w.ns, "ServiceAccount", sa.Name, "Normal/Assigned")
	if got := flowMetric(t, wh, "credential_webhook_assignments_finished_total", map[string]string{"result": "finished"}); got != 1 {
		t.Errorf("assignments_finished_total{result=finished} = %v, want 1", got)
	}
	flowPoll(t, 90*time.Second, "the Job of the finished ServiceAccount released", func() (bool, error) {
		return flowReleased(flowGetJob(t, w.ns, job.Name)), nil
	})
	flowWaitEvent(t, w.ns, "Job", job.Name, "Normal/Released")
	t.Logf("figures: IAM latency %s: ServiceAccount admitted pending after %s; finished by the sweeper %s after the faults were removed (%v finish errors before); proxy delayed %v",
		latency, admitted.Round(time.Millisecond), finishTook.Round(time.Millisecond),
		flowMetric(t, wh, "credential_webhook_assignments_finished_total", map[string]string{"result": "error"}), cluster.IAM.Faults().Delayed)
}

// BenchmarkFlowGCSweep measures what one full garbage collection sweep of the binary costs with
// 1,000 live session ServiceAccounts of one seed (nothing to collect: the steady state): IAM
// calls through the proxy and Kubernetes API requests by the webhook's identity (from the audit
// log, which does not record Leases and Events). Each iteration waits for one more sweep
// (--gc-interval 3s). The audit log has no Lease requests: the collector lists the per-seed lock
// Leases once per sweep on top of what is counted. Run with:
//
//	go test -run '^$' -bench FlowGCSweep -benchtime 3x -timeout 30m
func BenchmarkFlowGCSweep(b *testing.B) {
	const n = 1000
	ctx := context.Background()
	ns := cluster.Namespace(b)
	cfg := rest.CopyConfig(cluster.Config)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: operatorUser, Groups: flowOperatorGroups}
	cfg.QPS, cfg.Burst = 200, 400
	op, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		b.Fatal(err)
	}
	flowBindOperator(b, ns, op)
	seed, err := moto.CreateSeedRole(ctx, cluster.AWSConfig(), fmt.Sprintf("kubestash-sweep-%x", time.Now().UnixNano()&0xffffff), "/", cluster.Issuer)
	if err != nil {
		b.Fatal(err)
	}
	name := "flow-bench-" + ns[strings.LastIndexByte(ns, '-')+1:]
	wh := cluster.StartWebhook(b, harness.WebhookOptions{Name: name, Args: []string{
		"--aws-seed-roles=" + seed, "--allowed-requesters=user:" + operatorUser, "--lease-namespace=" + harness.WebhookNamespace,
		"--identity=" + name, "--gc-interval=3s",
	}})
	flowPoll(b, 60*time.Second, name+" leading", func() (bool, error) { return flowLeaseHolder() == name, nil })

	start := time.Now()
	base := time.Now().Unix()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	sem := make(chan struct{}, 8)
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{
				Name:        fmt.Sprintf("sample-backup-daemon-demo-session-%d", base+int64(i)),
				Annotations: map[string]string{annotations.SeedRole: seed, annotations.BucketNames: harness.BucketNames},
			}}
			got, err := op.CoreV1().ServiceAccounts(ns).Create(ctx, sa, metav1.CreateOptions{})
			if err == nil && got.Annotations[annotations.AWSRoleARN] == "" {
				err = fmt.Errorf("%s admitted without a role: %v", sa.Name, got.Annotations)
			}
			if err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	b.Logf("%d ServiceAccounts assigned in %s", n, time.Since(start).Round(time.Second))

	runs := func() float64 {
		return flowMetric(b, wh, "credential_webhook_gc_runs_total", map[string]string{"result": "ok"})
	}
	apiRequests := func() int {
		total := 0
		for _, e := range cluster.AuditEvents("") {
			if e.User.Username == "system:serviceaccount:"+harness.WebhookNamespace+":"+harness.WebhookServiceAccount && e.Stage == "ResponseComplete" {
				total++
			}
		}
		return total
	}
	// Start counting right after a sweep.
	r0 := runs()
	flowPoll(b, time.Minute, "a garbage collection", func() (bool, error) { return runs() > r0, nil })
	iamBefore, apiBefore, runsBefore := cluster.IAM.Calls(), apiRequests(), runs()
	// b.Loop runs this function once, so the 1,000 ServiceAccounts are created once.
	for b.Loop() {
		r := runs()
		flowPoll(b, time.Minute, "the next garbage collection", func() (bool, error) { return runs() > r, nil })
	}
	sweeps := runs() - runsBefore
	iamCalls := flowCallsSince(iamBefore)
	total := 0
	for _, v := range iamCalls {
		total += v
	}
	b.ReportMetric(float64(total)/sweeps, "iam-calls/sweep")
	b.ReportMetric(float64(apiRequests()-apiBefore)/sweeps, "api-requests/sweep")
	b.Logf("%v sweeps over %d ServiceAccounts: IAM %s", sweeps, n, flowFormatCalls(iamCalls))
}

// flowBindOperator gives the KubeStash operator the edit role in ns and waits until the authoriser
// sees it (the shared operatorClient fixture takes a *testing.T; benchmarks need this too).
func flowBindOperator(tb testing.TB, ns string, op kubernetes.Interface) {
	tb.Helper()
	ctx := context.Background()
	_, err := cluster.Client.RbacV1().RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "kubestash-operator"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "edit"},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: "kubestash", Name: "kubestash-kubestash-operator"}},
	}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		tb.Fatalf("bind the operator: %v", err)
	}
	flowPoll(tb, 10*time.Second, "the operator allowed to create ServiceAccounts in "+ns, func() (bool, error) {
		r, err := op.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authorizationv1.SelfSubjectAccessReview{
			Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authorizationv1.ResourceAttributes{
				Namespace: ns, Verb: "create", Resource: "serviceaccounts"}},
		}, metav1.CreateOptions{})
		return err == nil && r.Status.Allowed, nil
	})
}
