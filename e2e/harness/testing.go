package harness

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Run is the body of a test package's TestMain: it starts the cluster, stores it in *cluster,
// runs the tests, stops everything, and returns the exit code for os.Exit.
//
//	var cluster *harness.Cluster
//
//	func TestMain(m *testing.M) { os.Exit(harness.Run(m, harness.Options{}, &cluster)) }
//
// A cluster that cannot start fails the package (exit 1) with the reason; it never skips.
// Set E2E_KEEP=1 to keep the temporary folder (logs, kubeconfigs) after the run.
func Run(m *testing.M, opts Options, cluster **Cluster) int {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	started := time.Now()
	c, err := Start(ctx, opts)
	cancel()
	if err != nil {
		fmt.Fprintf(os.Stderr, "FAIL: e2e harness could not start the test environment: %v\n", err)
		return 1
	}
	fmt.Fprintf(os.Stderr, "[harness] environment up in %s\n", time.Since(started).Round(100*time.Millisecond))
	*cluster = c

	// Ctrl-C or a SIGTERM from the caller: stop everything before dying.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		select {
		case s := <-sig:
			fmt.Fprintf(os.Stderr, "[harness] %v: stopping the test environment\n", s)
			_ = c.Close(os.Getenv("E2E_KEEP") != "")
			os.Exit(1)
		case <-done:
		}
	}()

	code := m.Run()
	close(done)
	signal.Stop(sig)
	keep := os.Getenv("E2E_KEEP") != "" || code != 0
	if err := c.Close(keep); err != nil {
		fmt.Fprintf(os.Stderr, "[harness] stopping the test environment: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	if keep {
		fmt.Fprintf(os.Stderr, "[harness] logs kept in %s\n", c.Dir)
	}
	return code
}

var nonDNS = regexp.MustCompile(`[^a-z0-9-]+`)

// Namespace creates a namespace named after the test, waits for its default ServiceAccount,
// deletes it at the end of the test, and prints the relevant apiserver log lines, audit events
// and webhook reviews for it when the test failed.
func (c *Cluster) Namespace(tb testing.TB) string {
	tb.Helper()
	base := strings.Trim(nonDNS.ReplaceAllString(strings.ToLower(tb.Name()), "-"), "-")
	if len(base) > 40 {
		base = strings.TrimRight(base[:40], "-")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ns, err := c.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		GenerateName: base + "-", Labels: map[string]string{testNamespaceLabel: "true"},
	}}, metav1.CreateOptions{})
	if err != nil {
		tb.Fatalf("create namespace: %v", err)
	}
	name := ns.Name
	tb.Cleanup(func() {
		if tb.Failed() {
			c.DumpNamespace(tb, name)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := c.Client.CoreV1().Namespaces().Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			tb.Errorf("delete namespace %s: %v", name, err)
		}
	})
	// Pods need the default ServiceAccount (ServiceAccount admission); the controller adds it.
	if err := waitUntil(ctx, 30*time.Second, c.kcm, func(ctx context.Context) (bool, error) {
		_, err := c.Client.CoreV1().ServiceAccounts(name).Get(ctx, "default", metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		return err == nil, err
	}); err != nil {
		tb.Fatalf("namespace %s: default ServiceAccount: %v", name, err)
	}
	return name
}

// testNamespaceLabel marks the namespaces Namespace creates.
const testNamespaceLabel = "e2e.credential-webhook.klusters.dev/test"

// QuietNamespaces waits until no namespace Namespace created is still being deleted, and returns
// how long that took. Namespace deletes its namespace at the end of a test without waiting: the
// namespace controller empties it afterwards (every object deleted, a watch event each to every
// informer) while the next test runs.
// A benchmark calls this before each run, so that a run does not pay for the previous one's
// cleanup (a burst leaves 1,000 ServiceAccounts, 100 Jobs and their Pods and Events behind).
func (c *Cluster) QuietNamespaces(tb testing.TB, timeout time.Duration) time.Duration {
	tb.Helper()
	start := time.Now()
	var left []string
	err := waitUntil(context.Background(), timeout, c.kcm, func(ctx context.Context) (bool, error) {
		list, err := c.Client.CoreV1().Namespaces().List(ctx, metav1.ListOptions{LabelSelector: testNamespaceLabel + "=true"})
		if err != nil {
			return false, err
		}
		left = left[:0]
		for _, ns := range list.Items {
			if ns.DeletionTimestamp != nil {
				left = append(left, ns.Name)
			}
		}
		return len(left) == 0, nil
	})
	if err != nil {
		tb.Fatalf("namespaces %v still being deleted after %s: %v", left, timeout, err)
	}
	return time.Since(start)
}

// DumpNamespace logs what the apiserver and the webhook frontend saw for namespace: the
// apiserver's log lines naming it or a webhook, its audit events, and the reviews on the wire.
func (c *Cluster) DumpNamespace(tb testing.TB, namespace string) {
	tb.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "----- kube-apiserver log lines about %q or our webhooks -----\n", namespace)
	for _, l := range lastN(c.APIServerLog(namespace, "calling webhook", "credential-webhook.klusters.dev"), 200) {
		b.WriteString(l + "\n")
	}
	fmt.Fprintf(&b, "----- audit events in %q -----\n", namespace)
	for _, e := range lastN(c.AuditEvents(namespace), 200) {
		b.WriteString(e.Summary() + "\n")
	}
	fmt.Fprintf(&b, "----- AdmissionReviews on the wire for %q -----\n", namespace)
	for _, r := range c.Reviews() {
		if r.Namespace == namespace {
			fmt.Fprintf(&b, "%s %s %s %s/%s uid=%s dryRun=%v user=%s backend=%s allowed=%v patchOps=%d result=%q warnings=%q err=%q\n",
				r.Time.Format("15:04:05.000"), r.Path, r.Operation, r.Namespace, r.Name, r.UID, r.DryRun, r.User,
				r.Backend, r.Allowed, r.PatchOps, r.Result, r.Warnings, r.Err)
		}
	}
	tb.Log(b.String())
}

// APIServerLog returns the kube-apiserver log lines (klog, --v=2) containing any of substrs.
func (c *Cluster) APIServerLog(substrs ...string) []string {
	lines, _ := readLines(filepath.Join(c.Dir, "kube-apiserver.log"), substrs...)
	return lines
}

// AuditEvent is one apiserver audit event (level Metadata; leases and events are not audited).
type AuditEvent struct {
	AuditID string `json:"auditID"`
	Stage   string `json:"stage"`
	Verb    string `json:"verb"`
	User    struct {
		Username string   `json:"username"`
		Groups   []string `json:"groups"`
	} `json:"user"`
	ObjectRef *struct {
		Resource    string `json:"resource"`
		Namespace   string `json:"namespace"`
		Name        string `json:"name"`
		Subresource string `json:"subresource"`
		APIGroup    string `json:"apiGroup"`
	} `json:"objectRef"`
	ResponseStatus *struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
		Reason  string `json:"reason"`
	} `json:"responseStatus"`
	RequestURI  string            `json:"requestURI"`
	Annotations map[string]string `json:"annotations"`
	// StageTimestamp is when the event's stage ended (for ResponseComplete: when the answer
	// left the apiserver), microsecond precision.
	StageTimestamp time.Time `json:"stageTimestamp"`
}

// Summary is a one-line rendering for logs.
func (e AuditEvent) Summary() string {
	var obj, status string
	if e.ObjectRef != nil {
		obj = e.ObjectRef.Resource
		if e.ObjectRef.Subresource != "" {
			obj += "/" + e.ObjectRef.Subresource
		}
		obj += " " + e.ObjectRef.Namespace + "/" + e.ObjectRef.Name
	}
	if e.ResponseStatus != nil {
		status = fmt.Sprintf("%d %s %s", e.ResponseStatus.Code, e.ResponseStatus.Reason, e.ResponseStatus.Message)
	}
	var notes []string
	for k, v := range e.Annotations {
		if strings.Contains(k, "webhook") {
			notes = append(notes, k+"="+v)
		}
	}
	return fmt.Sprintf("%s %s %s by %s -> %s %s", e.Stage, e.Verb, obj, e.User.Username, status, strings.Join(notes, " "))
}

// AuditEvents returns the audit events about objects in namespace ("" for all), oldest first.
func (c *Cluster) AuditEvents(namespace string) []AuditEvent {
	var filter []string
	if namespace != "" {
		filter = []string{`"namespace":"` + namespace + `"`}
	}
	lines, _ := readLines(filepath.Join(c.Dir, "audit.log"), filter...)
	out := make([]AuditEvent, 0, len(lines))
	for _, l := range lines {
		var e AuditEvent
		if json.Unmarshal([]byte(l), &e) != nil {
			continue
		}
		if namespace != "" && (e.ObjectRef == nil || e.ObjectRef.Namespace != namespace) {
			continue
		}
		out = append(out, e)
	}
	return out
}

// Reviews returns every AdmissionReview the apiserver sent to the webhook frontend, oldest
// first, with the answer (if any replica gave one).
func (c *Cluster) Reviews() []WireReview {
	all, _ := c.front.snapshot()
	return all
}

// WaitForReview waits (up to timeout) for an AdmissionReview on the wire matching match.
func (c *Cluster) WaitForReview(timeout time.Duration, match func(WireReview) bool) (WireReview, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return c.front.waitReview(ctx, match)
}

// Webhooks returns every replica started so far (running or not).
func (c *Cluster) Webhooks() []*Webhook {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*Webhook(nil), c.webhooks...)
}

func lastN[T any](s []T, n int) []T {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
