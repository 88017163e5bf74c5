// Command democluster is `make demo-cluster`: the whole KubeStash flow on a real control plane,
// narrated. It starts the e2e harness (etcd, kube-apiserver, kube-controller-manager, moto behind
// the IAM proxy), one replica of the real credential-webhook binary registered through the
// project's own manifests, and then plays the KubeStash operator: a session ServiceAccount gets
// its derived role at admission, its backup Job is held until STS really accepts the
// ServiceAccount's token (the proxy delays trust propagation as IAM does), the sweeper releases
// it, and the Pod the job controller creates carries the injected IRSA credentials. It ends with
// `credential-webhook roles` and stops everything.
//
//	cd e2e && go run ./cmd/democluster
//
// Environment: KUBE_BINARIES and CREDENTIAL_WEBHOOK_BINARY as for the e2e tests; E2E_KEEP=1 keeps
// the temporary folder with every component's log; DEMO_PROPAGATION (a Go duration, default 6s)
// is how long trust policy changes take to reach STS.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"

	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/e2e/harness"
	"go.klusters.dev/credential-webhook/testenv/moto"
)

const (
	namespace    = "demo"
	operatorUser = "system:serviceaccount:kubestash:kubestash-kubestash-operator"
	replicaName  = "credential-webhook-0"
	sweeperLease = "credential-webhook-sweeper"
	// irsaVolume is the EKS pod-identity webhook's token volume name, which we inject too.
	irsaVolume = "aws-iam-token"
)

var operatorGroups = []string{"system:serviceaccounts", "system:serviceaccounts:kubestash", "system:authenticated"}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "demo-cluster: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, out io.Writer) (err error) {
	started := time.Now()
	propagation := 6 * time.Second
	if v := os.Getenv("DEMO_PROPAGATION"); v != "" {
		if propagation, err = time.ParseDuration(v); err != nil {
			return fmt.Errorf("DEMO_PROPAGATION: %w", err)
		}
	}
	n := &narrator{out: out, t0: started}

	n.section("1. A control plane: etcd, kube-apiserver, kube-controller-manager; moto (IAM, STS) behind the IAM proxy")
	var progress bytes.Buffer
	startCtx, cancel := context.WithTimeout(ctx, 30*time.Minute)
	cluster, err := harness.Start(startCtx, harness.Options{Progress: &progress})
	cancel()
	if err != nil {
		fmt.Fprint(os.Stderr, progress.String())
		return err
	}
	tb := &demoTB{name: "demo-cluster"}
	keep := os.Getenv("E2E_KEEP") != ""
	defer func() {
		if r := recover(); r != nil {
			if !errors.Is(asError(r), errFatal) {
				panic(r)
			}
			err = errors.New(tb.failure)
		}
		tb.runCleanups()
		keepDir := keep || err != nil
		n.say("stopping everything")
		if cerr := cluster.Close(keepDir); cerr != nil && err == nil {
			err = cerr
		}
		if keepDir {
			n.say("logs of every component kept in %s", cluster.Dir)
		}
	}()
	n.say("kube-apiserver %s at %s (issuer %s)", harness.KubernetesVersion, cluster.APIServerURL, cluster.Issuer)
	n.say("moto at %s, IAM proxy at %s", cluster.Moto.Endpoint, cluster.IAM.URL)
	n.say("admin kubeconfig: %s", cluster.AdminKubeconfig)

	n.section("2. KubeStash's seed role in IAM")
	seed, err := moto.CreateSeedRole(ctx, cluster.AWSConfig(), "kubestash-selfhost", "/", cluster.Issuer)
	if err != nil {
		return fmt.Errorf("create seed role: %w", err)
	}
	n.say("seed role %s", seed)
	n.say("it trusts the cluster's OIDC issuer for the operator only; derived roles clone it per ServiceAccount")

	n.section("3. credential-webhook serve (the real binary), registered by manifests/")
	args := []string{
		"--aws-seed-roles=" + seed,
		"--allowed-requesters=user:" + operatorUser,
		"--aws-inject-pod-identity",
		"--aws-region=us-east-1",
		"--lease-namespace=" + harness.WebhookNamespace,
		"--identity=" + replicaName,
	}
	wh := cluster.StartWebhook(tb, harness.WebhookOptions{Name: replicaName, Args: args})
	n.say("%s serve %s", cluster.WebhookBinary, strings.Join(args, " "))
	n.say("serving on %s as %s (its own ServiceAccount, RBAC from manifests/)", wh.URL, "system:serviceaccount:"+harness.WebhookNamespace+":"+harness.WebhookServiceAccount)
	holder, err := waitValue(ctx, 60*time.Second, func() (string, bool) {
		l, err := cluster.Client.CoordinationV1().Leases(harness.WebhookNamespace).Get(ctx, sweeperLease, metav1.GetOptions{})
		if err != nil || l.Spec.HolderIdentity == nil {
			return "", false
		}
		return *l.Spec.HolderIdentity, *l.Spec.HolderIdentity == replicaName
	})
	if err != nil {
		return fmt.Errorf("waiting for the sweeper to lead: %w", err)
	}
	n.say("sweeper leader (Lease %s/%s): %s", harness.WebhookNamespace, sweeperLease, holder)
	cluster.IAM.SetPropagationDelay(propagation)
	n.say("the IAM proxy now makes a changed trust policy reach STS only after %s, as IAM's eventual consistency does", propagation)

	op, warnings, err := operator(ctx, cluster)
	if err != nil {
		return err
	}

	n.section("4. The KubeStash operator creates the backup session's ServiceAccount")
	session := time.Now().Unix()
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{
		Name: fmt.Sprintf("sample-backup-daemon-demo-session-%d", session), Namespace: namespace,
		Annotations: map[string]string{annotations.SeedRole: seed, annotations.BucketNames: harness.BucketNames},
	}}
	n.say("as %s:", operatorUser)
	n.say("  create ServiceAccount %s/%s with %s=%s", namespace, sa.Name, annotations.SeedRole, seed)
	createdAt := time.Now()
	sa, err = op.CoreV1().ServiceAccounts(namespace).Create(ctx, sa, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create ServiceAccount: %w", err)
	}
	role := sa.Annotations[annotations.AWSRoleARN]
	n.say("stored in %s with %s: %s", time.Since(createdAt).Round(time.Millisecond), annotations.AWSRoleARN, role)
	n.say("(admission cloned the seed into a derived role listing system:serviceaccount:%s:%s)", namespace, sa.Name)
	warnings.Take()

	n.section("5. ... and its backup Job right away")
	job := backupJob(sa.Name)
	job, err = op.BatchV1().Jobs(namespace).Create(ctx, job, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create Job: %w", err)
	}
	n.say("Job %s/%s stored with spec.suspend=%v", namespace, job.Name, ptr.Deref(job.Spec.Suspend, false))
	n.say("  %s: %s", annotations.HoldReason, job.Annotations[annotations.HoldReason])
	n.say("  %s: %s", annotations.HeldSince, job.Annotations[annotations.HeldSince])
	for _, w := range warnings.Take() {
		n.say("warning returned to the operator: %s", w)
	}
	if r, ok := review(cluster, "Job", job.Name); ok {
		n.say("the webhook's JSON patch: %s", r.Patch)
	}

	n.section("6. The sweeper proves the credentials: a TokenRequest token of the ServiceAccount, sent to sts:AssumeRoleWithWebIdentity")
	n.say("it checks at once, backs off 1 s, 2 s, 4 s, ... (at most 30 s) between checks, and releases the Job once STS accepted the token 2 times in a row (--sweeper-checks-in-a-row) and the credentials wrote, read back and deleted a test object in each bucket of " + annotations.BucketNames + " (--aws-bucket-check)")
	roleName := role[strings.LastIndexByte(role, '/')+1:]
	seen := 0
	released, err := waitValue(ctx, 3*time.Minute, func() (*batchv1.Job, bool) {
		rej := cluster.IAM.Rejections()
		for _, r := range rej[min(seen, len(rej)):] {
			if r.Action == "sts:AssumeRoleWithWebIdentity" && r.Role == roleName {
				n.say("STS refused the token (%s): %s", r.Code, r.Reason)
			}
		}
		seen = len(rej)
		j, err := cluster.Client.BatchV1().Jobs(namespace).Get(ctx, job.Name, metav1.GetOptions{})
		if err != nil {
			return nil, false
		}
		_, held := j.Annotations[annotations.HeldSince]
		return j, !held && !ptr.Deref(j.Spec.Suspend, true)
	})
	if err != nil {
		return fmt.Errorf("waiting for the Job to be released: %w", err)
	}
	n.say("Job released: spec.suspend=%v, hold annotations removed (%s after the ServiceAccount was created; trust propagation %s)",
		ptr.Deref(released.Spec.Suspend, false), time.Since(createdAt).Round(100*time.Millisecond), propagation)
	evs, err := waitValue(ctx, 30*time.Second, func() ([]corev1.Event, bool) {
		list, err := cluster.Client.CoreV1().Events(namespace).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.kind=Job,involvedObject.name=" + job.Name})
		if err != nil {
			return nil, false
		}
		return list.Items, slices.ContainsFunc(list.Items, func(e corev1.Event) bool { return e.Reason == "Released" })
	})
	if err != nil {
		return fmt.Errorf("waiting for the Released event: %w", err)
	}
	n.say("Events on the Job:")
	slices.SortFunc(evs, func(a, b corev1.Event) int { return a.LastTimestamp.Compare(b.LastTimestamp.Time) })
	for _, e := range evs {
		n.say("  %-7s %-9s %-18s %s", e.Type, e.Reason, e.Source.Component, e.Message)
	}

	n.section("7. The job controller creates the Pod; credential-webhook injected the IRSA credentials")
	pod, err := waitValue(ctx, time.Minute, func() (*corev1.Pod, bool) {
		list, err := cluster.Client.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{LabelSelector: "batch.kubernetes.io/job-name=" + job.Name})
		if err != nil || len(list.Items) == 0 {
			return nil, false
		}
		return &list.Items[0], true
	})
	if err != nil {
		return fmt.Errorf("waiting for the Pod: %w", err)
	}
	n.say("Pod %s/%s (created by the job controller; it stays Pending: no kubelet here)", namespace, pod.Name)
	for _, c := range pod.Spec.Containers {
		n.say("  container %s:", c.Name)
		for _, e := range c.Env {
			n.say("    env %s=%s", e.Name, e.Value)
		}
		for _, m := range c.VolumeMounts {
			if m.Name == irsaVolume {
				n.say("    mount %s at %s (readOnly %v)", m.Name, m.MountPath, m.ReadOnly)
			}
		}
	}
	for _, v := range pod.Spec.Volumes {
		if v.Name != irsaVolume || v.Projected == nil {
			continue
		}
		for _, s := range v.Projected.Sources {
			if t := s.ServiceAccountToken; t != nil {
				n.say("  volume %s: projected ServiceAccount token, audience %s, expirationSeconds %d, path %s",
					v.Name, t.Audience, ptr.Deref(t.ExpirationSeconds, 0), t.Path)
			}
		}
	}

	n.section("8. A retention session and a restore join the seed; credential-webhook roles")
	for _, name := range []string{fmt.Sprintf("retention-policy-sample-backup-daemon-demo-session-%d", session), "app-restore-restore"} {
		more := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace,
			Annotations: map[string]string{annotations.SeedRole: seed, annotations.BucketNames: harness.BucketNames}}}
		if more, err = op.CoreV1().ServiceAccounts(namespace).Create(ctx, more, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create ServiceAccount %s: %w", name, err)
		}
		n.say("ServiceAccount %s -> %s", more.Name, more.Annotations[annotations.AWSRoleARN])
	}
	n.say("$ credential-webhook roles --seed %s", seed)
	cmd := exec.CommandContext(ctx, cluster.WebhookBinary, "roles", "--seed", seed)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + cluster.Dir}, cluster.WebhookAWSEnv()...)
	table, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("credential-webhook roles: %w\n%s", err, table)
	}
	for _, line := range strings.Split(strings.TrimRight(string(table), "\n"), "\n") {
		n.say("  %s", line)
	}
	calls, _ := json.Marshal(cluster.IAM.Calls())
	n.say("IAM and STS calls through the proxy: %s", calls)

	if err := wh.Stop(); err != nil {
		return fmt.Errorf("stop the webhook: %w", err)
	}
	n.section(fmt.Sprintf("done in %s", time.Since(started).Round(time.Second)))
	return nil
}

// narrator prints the story: numbered sections and lines stamped with the time since start.
type narrator struct {
	out io.Writer
	t0  time.Time
}

func (n *narrator) section(title string) { fmt.Fprintf(n.out, "\n== %s\n", title) }

func (n *narrator) say(format string, args ...any) {
	fmt.Fprintf(n.out, "[%5.1fs] %s\n", time.Since(n.t0).Seconds(), fmt.Sprintf(format, args...))
}

// waitValue polls f every 100 ms until it reports done, ctx ends, or timeout passes.
func waitValue[T any](ctx context.Context, timeout time.Duration, f func() (T, bool)) (T, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		v, ok := f()
		if ok {
			return v, nil
		}
		select {
		case <-ctx.Done():
			return v, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// operator returns a client acting as the KubeStash operator (impersonated, with the edit role
// in the demo namespace) and the warnings the apiserver returns to it.
func operator(ctx context.Context, cluster *harness.Cluster) (kubernetes.Interface, *harness.Warnings, error) {
	if _, err := cluster.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}, metav1.CreateOptions{}); err != nil {
		return nil, nil, fmt.Errorf("create namespace: %w", err)
	}
	if _, err := cluster.Client.RbacV1().RoleBindings(namespace).Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "kubestash-operator"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "edit"},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: "kubestash", Name: "kubestash-kubestash-operator"}},
	}, metav1.CreateOptions{}); err != nil {
		return nil, nil, fmt.Errorf("bind the operator: %w", err)
	}
	w := &harness.Warnings{}
	cfg := rest.CopyConfig(cluster.Config)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: operatorUser, Groups: operatorGroups}
	cfg.WarningHandler = w
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, nil, err
	}
	// Pods need the namespace's default ServiceAccount, and the authoriser must see the binding
	// (and the aggregated edit role) before the operator acts.
	_, err = waitValue(ctx, 60*time.Second, func() (bool, bool) {
		if _, err := cluster.Client.CoreV1().ServiceAccounts(namespace).Get(ctx, "default", metav1.GetOptions{}); err != nil {
			return false, false
		}
		r, err := cs.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authorizationv1.SelfSubjectAccessReview{
			Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authorizationv1.ResourceAttributes{
				Namespace: namespace, Verb: "create", Group: "batch", Resource: "jobs"}},
		}, metav1.CreateOptions{})
		return true, err == nil && r.Status.Allowed
	})
	if err != nil {
		return nil, nil, fmt.Errorf("waiting for the operator's RBAC: %w", err)
	}
	return cs, w, nil
}

// review is the AdmissionReview of kind/name on the wire, as the webhook answered it.
func review(cluster *harness.Cluster, kind, name string) (harness.WireReview, bool) {
	for _, r := range cluster.Reviews() {
		if r.Namespace == namespace && r.Kind == kind && r.Name == name && r.Operation == "CREATE" {
			return r, true
		}
	}
	return harness.WireReview{}, false
}

// backupJob is KubeStash's backup Job for the session whose ServiceAccount is serviceAccount.
func backupJob(serviceAccount string) *batchv1.Job {
	labels := map[string]string{
		annotations.ManagedByLabel:        annotations.ManagedByValue,
		"app.kubernetes.io/component":     "kubestash-backup",
		"kubestash.com/invoker-name":      "sample-backup",
		"kubestash.com/invoker-namespace": namespace,
		"kubestash.com/invoker-kind":      "BackupConfiguration",
		"kubestash.com/session-name":      serviceAccount,
	}
	return &batchv1.Job{
		ObjectMeta: metav1.ObjectMeta{Name: serviceAccount, Namespace: namespace, Labels: labels},
		Spec: batchv1.JobSpec{
			BackoffLimit: ptr.To(int32(0)),
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app.kubernetes.io/component": "kubestash-backup"}},
				Spec: corev1.PodSpec{
					ServiceAccountName: serviceAccount,
					RestartPolicy:      corev1.RestartPolicyNever,
					Containers: []corev1.Container{{Name: "backup", Image: "ghcr.io/kubestash/restic:0.14",
						Args: []string{"backup", "--repo", "s3:https://s3.us-east-1.amazonaws.com/backup-b1/demo"}}},
				},
			},
		},
	}
}

// demoTB lets this program use the harness API made for tests (StartWebhook takes a
// testing.TB). testing.TB cannot be implemented outside package testing (it has an unexported
// method), so the nil interface is embedded for that method alone and every exported method is
// implemented here: logs go to stderr, Cleanup functions run at the end, and a fatal error
// unwinds to run() as a panic of errFatal, which recovers it.
type demoTB struct {
	testing.TB
	name     string
	mu       sync.Mutex
	cleanups []func()
	failed   bool
	failure  string
}

var errFatal = errors.New("demo-cluster: fatal")

func asError(r any) error {
	if err, ok := r.(error); ok {
		return err
	}
	return nil
}

func (d *demoTB) Helper()      {}
func (d *demoTB) Name() string { return d.name }
func (d *demoTB) Cleanup(f func()) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.cleanups = append(d.cleanups, f)
}
func (d *demoTB) Log(args ...any)                 { fmt.Fprintln(os.Stderr, args...) }
func (d *demoTB) Logf(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) }
func (d *demoTB) Error(args ...any)               { d.fail(fmt.Sprint(args...)) }
func (d *demoTB) Errorf(format string, args ...any) {
	d.fail(fmt.Sprintf(format, args...))
}
func (d *demoTB) Fail() { d.fail("failed") }
func (d *demoTB) FailNow() {
	d.Fail()
	panic(errFatal)
}
func (d *demoTB) Fatal(args ...any) {
	d.fail(fmt.Sprint(args...))
	panic(errFatal)
}
func (d *demoTB) Fatalf(format string, args ...any) {
	d.fail(fmt.Sprintf(format, args...))
	panic(errFatal)
}
func (d *demoTB) Failed() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.failed
}
func (d *demoTB) Skip(args ...any)                 { d.Fatal(args...) }
func (d *demoTB) SkipNow()                         { d.FailNow() }
func (d *demoTB) Skipf(format string, args ...any) { d.Fatalf(format, args...) }
func (d *demoTB) Skipped() bool                    { return false }
func (d *demoTB) Setenv(key, value string) {
	if err := os.Setenv(key, value); err != nil {
		d.Fatal(err)
	}
}
func (d *demoTB) Chdir(dir string) {
	if err := os.Chdir(dir); err != nil {
		d.Fatal(err)
	}
}
func (d *demoTB) TempDir() string {
	dir, err := os.MkdirTemp("", "demo-cluster-")
	if err != nil {
		d.Fatal(err)
	}
	d.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}
func (d *demoTB) ArtifactDir() string      { return d.TempDir() }
func (d *demoTB) Attr(key, value string)   {}
func (d *demoTB) Context() context.Context { return context.Background() }
func (d *demoTB) Output() io.Writer        { return os.Stderr }

func (d *demoTB) fail(msg string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.failed = true
	if d.failure == "" {
		d.failure = msg
	}
	fmt.Fprintln(os.Stderr, msg)
}

// runCleanups runs the Cleanup functions, last registered first, as testing does.
func (d *demoTB) runCleanups() {
	d.mu.Lock()
	fs := d.cleanups
	d.cleanups = nil
	d.mu.Unlock()
	for i := len(fs) - 1; i >= 0; i-- {
		fs[i]()
	}
}
