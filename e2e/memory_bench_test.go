package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/e2e/harness"
)

// Sizes of the memory benchmark: a large KubeStash installation (DESIGN.md sizes the webhook
// for 10,000 per-session ServiceAccounts).
const (
	memBenchServiceAccounts = 10000
	memBenchJobs            = 2000
	memBenchNamespaces      = 10
	// memBenchTargetMiB is the resident-memory target of one replica with that many objects.
	memBenchTargetMiB = 64
)

// memSample is one reading of a replica's memory: the kernel's view of the process and the Go
// runtime's view from the replica's own /metrics.
type memSample struct {
	VmRSS, VmHWM, RssAnon uint64 // bytes, /proc/PID/status
	HeapInuse, HeapAlloc  float64
	HeapSys, MetricsRSS   float64 // go_memstats_heap_sys_bytes, process_resident_memory_bytes
	NextGC                float64 // the heap goal: about twice the live heap at GOGC=100
	Goroutines            float64
}

func mib(b float64) float64 { return b / (1 << 20) }

func (s memSample) String() string {
	return fmt.Sprintf("VmRSS %.1f MiB (peak VmHWM %.1f, RssAnon %.1f), Go heap in use %.1f MiB (alloc %.1f, sys %.1f, next GC at %.1f), process_resident_memory_bytes %.1f MiB, %v goroutines",
		mib(float64(s.VmRSS)), mib(float64(s.VmHWM)), mib(float64(s.RssAnon)), mib(s.HeapInuse), mib(s.HeapAlloc), mib(s.HeapSys), mib(s.NextGC), mib(s.MetricsRSS), s.Goroutines)
}

// BenchmarkServeMemory measures the resident memory of one `credential-webhook serve` replica
// (sweeper on, the default) in a cluster holding 10,000 ServiceAccounts (half of them KubeStash
// session ServiceAccounts with a seed role and an IRSA role ARN) and 2,000 KubeStash Jobs, once
// its informer caches have synced and its memory has settled. It then starts a replica with
// --sweeper=false for comparison: the sweeper keeps its own ServiceAccount and Job informers
// besides the admission cache. Run with:
//
//	go test -run '^$' -bench ServeMemory -benchtime 1x -timeout 30m
//
// The objects go through the webhooks registered in the cluster (ServiceAccounts with a seed
// annotation and KubeStash Jobs match failurePolicy Fail webhooks), so a loader replica with
// --sweeper=false admits them and is stopped before the measured replica starts. The Jobs are
// created suspended: nothing runs, and the Job webhook leaves a suspended Job alone.
func BenchmarkServeMemory(b *testing.B) {
	job := memBenchJobTemplate(b)

	namespaces := make([]string, memBenchNamespaces)
	for i := range namespaces {
		namespaces[i] = cluster.Namespace(b)
		operatorClient(b, namespaces[i]) // binds the operator in the namespace and waits for it
	}
	// The KubeStash operator creates the objects, as in production: the admission policy lets
	// only it set the seed annotation. Its own client, without the harness's rate limit.
	cfg := rest.CopyConfig(cluster.Config)
	cfg.QPS, cfg.Burst = 5000, 10000
	cfg.Impersonate = rest.ImpersonationConfig{UserName: operatorUser, Groups: []string{"system:serviceaccounts", "system:serviceaccounts:kubestash", "system:authenticated"}}
	operator, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		b.Fatal(err)
	}

	loader := cluster.StartWebhook(b, harness.WebhookOptions{Name: "membench-loader", Args: []string{"--sweeper=false"}})
	start := time.Now()
	created := memBenchCreate(b, operator, namespaces, job)
	took := time.Since(start)
	rate := float64(created) / took.Seconds()
	b.Logf("created %d ServiceAccounts and %d Jobs as the KubeStash operator in %s (%.0f objects/s, 32 workers, through the loader replica's admission)",
		memBenchServiceAccounts, memBenchJobs, took.Round(100*time.Millisecond), rate)
	if err := loader.Stop(); err != nil {
		b.Fatalf("stop the loader replica: %v", err)
	}

	// The measured replica: serve as the harness runs it, sweeper on.
	wh := cluster.StartWebhook(b, harness.WebhookOptions{Name: "membench"})
	pid := memBenchPID(b, wh)
	synced := memBenchWaitSweeperSync(b, wh)
	b.Logf("membench (pid %d): %s", pid, synced)
	var s memSample
	for b.Loop() {
		s = memBenchSettle(b, wh, pid)
	}
	b.ReportMetric(mib(float64(s.VmRSS)), "rss-MiB")
	b.ReportMetric(mib(float64(s.VmHWM)), "peak-rss-MiB")
	b.ReportMetric(mib(s.HeapInuse), "heap-inuse-MiB") // saws between GC cycles
	b.ReportMetric(mib(s.NextGC), "heap-goal-MiB")     // steadier: about twice the live heap
	b.ReportMetric(rate, "objects-created/s")
	b.Logf("sweeper on: %s", s)
	if err := wh.Stop(); err != nil {
		b.Fatalf("stop %s: %v", wh.Name, err)
	}

	// Comparison: the admission cache alone (no sweeper informers).
	off := cluster.StartWebhook(b, harness.WebhookOptions{Name: "membench-nosweeper", Args: []string{"--sweeper=false"}})
	offPID := memBenchPID(b, off)
	so := memBenchSettle(b, off, offPID)
	b.ReportMetric(mib(float64(so.VmRSS)), "rss-sweeper-off-MiB")
	b.ReportMetric(mib(so.HeapInuse), "heap-inuse-sweeper-off-MiB")
	b.ReportMetric(mib(so.NextGC), "heap-goal-sweeper-off-MiB")
	b.Logf("sweeper off: %s", so)
	verdict := "met"
	if mib(float64(s.VmRSS)) > memBenchTargetMiB {
		verdict = "MISSED"
	}
	b.Logf("target <= %d MiB resident with %d ServiceAccounts and %d Jobs: %s (%.1f MiB; %.1f MiB with --sweeper=false)",
		memBenchTargetMiB, memBenchServiceAccounts, memBenchJobs, verdict, mib(float64(s.VmRSS)), mib(float64(so.VmRSS)))
}

// memBenchJobTemplate is the KubeStash backup Job of bench/testdata/job-review.json (5.2 KB as
// KubeStash sends it), without its managedFields and its owner (a BackupSession that does not
// exist here: the garbage collector would delete the Job), suspended.
func memBenchJobTemplate(tb testing.TB) *batchv1.Job {
	tb.Helper()
	raw, err := os.ReadFile(filepath.Join(cluster.RepoRoot, "bench", "testdata", "job-review.json"))
	if err != nil {
		tb.Fatalf("read the Job template: %v", err)
	}
	var review struct {
		Request struct {
			Object batchv1.Job `json:"object"`
		} `json:"request"`
	}
	if err := json.Unmarshal(raw, &review); err != nil {
		tb.Fatalf("decode the Job template: %v", err)
	}
	job := review.Request.Object
	if job.Labels[annotations.ManagedByLabel] != annotations.ManagedByValue || len(job.Spec.Template.Spec.Containers) == 0 {
		tb.Fatalf("bench/testdata/job-review.json no longer holds a KubeStash Job: labels %v", job.Labels)
	}
	job.ManagedFields, job.OwnerReferences = nil, nil
	job.ResourceVersion, job.UID = "", ""
	job.Spec.Suspend = new(true)
	return &job
}

// memBenchCreate creates the ServiceAccounts and Jobs with 32 workers, spread evenly over
// namespaces, and returns how many objects it created. Every Job runs as one of the annotated
// ServiceAccounts, as a KubeStash backup Job does.
func memBenchCreate(tb testing.TB, cs kubernetes.Interface, namespaces []string, tmpl *batchv1.Job) int {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	base := time.Now().Unix()
	saName := func(i int) string { return fmt.Sprintf("sample-backup-daemon-demo-session-%d", base+int64(i)) }
	work := make(chan func() error)
	var done atomic.Int64
	var firstErr error
	var errOnce sync.Once
	var wg sync.WaitGroup
	for range 32 {
		wg.Go(func() {
			for f := range work {
				if err := f(); err != nil {
					errOnce.Do(func() { firstErr = err; cancel() })
					continue
				}
				done.Add(1)
			}
		})
	}
	progress := time.NewTicker(15 * time.Second)
	defer progress.Stop()
	started := time.Now()
	send := func(f func() error) bool {
		for {
			select {
			case work <- f:
				return true
			case <-ctx.Done():
				return false
			case <-progress.C:
				n := done.Load()
				tb.Logf("  %d objects created (%.0f/s)", n, float64(n)/time.Since(started).Seconds())
			}
		}
	}
	for i := 0; i < memBenchServiceAccounts; i++ {
		ns := namespaces[i%len(namespaces)]
		sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{
			Name: saName(i), Namespace: ns,
			Labels: map[string]string{annotations.ManagedByLabel: annotations.ManagedByValue},
		}}
		if memBenchAnnotated(i, len(namespaces)) {
			sa.Annotations = map[string]string{
				annotations.SeedRole:   "arn:aws:iam::123456789012:role/kubestash-selfhost",
				annotations.AWSRoleARN: fmt.Sprintf("arn:aws:iam::123456789012:role/kubestash-selfhost-%d", i%7),
			}
		}
		if !send(func() error {
			if _, err := cs.CoreV1().ServiceAccounts(ns).Create(ctx, sa, metav1.CreateOptions{}); err != nil {
				return fmt.Errorf("create ServiceAccount %s/%s: %w", ns, sa.Name, err)
			}
			return nil
		}) {
			break
		}
	}
	for j := 0; j < memBenchJobs; j++ {
		// The j-th annotated ServiceAccount: every namespace in turn.
		n := len(namespaces)
		i := 2*n*(j/n) + j%n
		ns, name := namespaces[i%len(namespaces)], saName(i)
		job := tmpl.DeepCopy()
		job.Namespace, job.Name = ns, fmt.Sprintf("trigger-%s-%d", name, j)
		job.Annotations["kubestash.com/backup-session"] = name
		job.Spec.Template.Spec.ServiceAccountName = name
		if !send(func() error {
			if _, err := cs.BatchV1().Jobs(ns).Create(ctx, job, metav1.CreateOptions{}); err != nil {
				return fmt.Errorf("create Job %s/%s: %w", ns, job.Name, err)
			}
			return nil
		}) {
			break
		}
	}
	close(work)
	wg.Wait()
	if firstErr != nil {
		tb.Fatalf("after %d objects: %v", done.Load(), firstErr)
	}
	return int(done.Load())
}

// memBenchAnnotated says whether the i-th ServiceAccount (in namespace i%n) carries the seed and
// role ARN annotations: every other one in each namespace.
func memBenchAnnotated(i, n int) bool { return (i/n)%2 == 0 }

// memBenchPID finds the replica's process: the harness does not expose it, but the replica is
// our child and its command line names its own --metrics-listen port.
func memBenchPID(tb testing.TB, w *harness.Webhook) int {
	tb.Helper()
	want := "\x00--metrics-listen\x00" + w.MetricsAddr + "\x00"
	entries, err := os.ReadDir("/proc")
	if err != nil {
		tb.Fatal(err)
	}
	self := os.Getpid()
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !strings.Contains(string(cmdline), want) {
			continue
		}
		if ppid, _ := memBenchStatus(pid, "PPid"); ppid != uint64(self) {
			continue
		}
		return pid
	}
	tb.Fatalf("no child process serving metrics on %s", w.MetricsAddr)
	return 0
}

// memBenchStatus reads one field of /proc/PID/status; sizes ("kB") are returned in bytes.
func memBenchStatus(pid int, field string) (uint64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || k != field {
			continue
		}
		fs := strings.Fields(v)
		if len(fs) == 0 {
			break
		}
		n, err := strconv.ParseUint(fs[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/%d/status %s: %w", pid, field, err)
		}
		if len(fs) > 1 && fs[1] == "kB" {
			n <<= 10
		}
		return n, nil
	}
	return 0, fmt.Errorf("/proc/%d/status has no %s", pid, field)
}

// memBenchWaitSweeperSync waits for the sweeper's "sweeper caches synced" line and checks that
// its caches hold every object created (the admission cache starts earlier, at process start,
// and lists the same ServiceAccounts; its sync is not logged, so memBenchSettle waits for the
// memory to stop growing as well).
func memBenchWaitSweeperSync(tb testing.TB, w *harness.Webhook) string {
	tb.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	for time.Now().Before(deadline) {
		for _, l := range w.LogLines() {
			if l.Msg() != "sweeper caches synced" {
				continue
			}
			sas, _ := strconv.Atoi(l.String("serviceaccounts"))
			jobs, _ := strconv.Atoi(l.String("jobs"))
			if sas < memBenchServiceAccounts || jobs < memBenchJobs {
				tb.Fatalf("sweeper caches synced with %d ServiceAccounts and %d Jobs, want at least %d and %d", sas, jobs, memBenchServiceAccounts, memBenchJobs)
			}
			return fmt.Sprintf("sweeper caches synced with %d ServiceAccounts and %d KubeStash Jobs", sas, jobs)
		}
		if !w.Running() {
			tb.Fatalf("%s exited: %v", w.Name, w.ExitErr())
		}
		time.Sleep(500 * time.Millisecond)
	}
	tb.Fatalf("%s logged no \"sweeper caches synced\" within 3 minutes", w.Name)
	return ""
}

// memBenchSettle samples the replica every second until its resident memory has moved by less
// than 1 MiB and its Go heap in use by less than 5 % over 10 s (the heap saws between GC cycles),
// at least 15 s after the call (the informers' initial lists are decoded in the first seconds)
// and at most 2 minutes, and returns the last sample. The trend is logged every 10 s.
func memBenchSettle(tb testing.TB, w *harness.Webhook, pid int) memSample {
	tb.Helper()
	const window = 10
	start := time.Now()
	var hist []memSample
	var trend []string
	for {
		s := memBenchSample(tb, w, pid)
		hist = append(hist, s)
		if len(hist)%window == 1 {
			trend = append(trend, fmt.Sprintf("%ds %.1f/%.1f", int(time.Since(start).Seconds()), mib(float64(s.VmRSS)), mib(s.HeapInuse)))
		}
		if len(hist) > window && time.Since(start) >= 15*time.Second {
			first := hist[len(hist)-1-window]
			if absDiff(float64(s.VmRSS), float64(first.VmRSS)) < 1<<20 && absDiff(s.HeapInuse, first.HeapInuse) < 0.05*first.HeapInuse {
				tb.Logf("%s settled after %s; RSS/heap-inuse MiB: %s", w.Name, time.Since(start).Round(time.Second), strings.Join(trend, ", "))
				return s
			}
		}
		if time.Since(start) > 2*time.Minute {
			tb.Logf("%s: memory still moving after 2 minutes; last sample taken; RSS/heap-inuse MiB: %s", w.Name, strings.Join(trend, ", "))
			return s
		}
		time.Sleep(time.Second)
	}
}

func absDiff(a, b float64) float64 {
	if a > b {
		return a - b
	}
	return b - a
}

func memBenchSample(tb testing.TB, w *harness.Webhook, pid int) memSample {
	tb.Helper()
	var s memSample
	for field, dst := range map[string]*uint64{"VmRSS": &s.VmRSS, "VmHWM": &s.VmHWM, "RssAnon": &s.RssAnon} {
		v, err := memBenchStatus(pid, field)
		if err != nil {
			tb.Fatalf("%s: %v", w.Name, err)
		}
		*dst = v
	}
	m, err := memBenchScrape(w.MetricsAddr)
	if err != nil {
		tb.Fatalf("%s: %v", w.Name, err)
	}
	for name, dst := range map[string]*float64{
		"go_memstats_heap_inuse_bytes": &s.HeapInuse, "go_memstats_heap_alloc_bytes": &s.HeapAlloc,
		"go_memstats_heap_sys_bytes": &s.HeapSys, "process_resident_memory_bytes": &s.MetricsRSS,
		"go_memstats_next_gc_bytes": &s.NextGC, "go_goroutines": &s.Goroutines,
	} {
		v, ok := m[name]
		if !ok {
			tb.Fatalf("%s: /metrics has no %s", w.Name, name)
		}
		*dst = v
	}
	return s
}

// memBenchScrape returns the replica's unlabelled metrics by name.
func memBenchScrape(addr string) (map[string]float64, error) {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return nil, fmt.Errorf("scrape metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scrape metrics: %s", resp.Status)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") || strings.Contains(line, "{") {
			continue
		}
		name, value, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		if f, err := strconv.ParseFloat(strings.TrimSpace(value), 64); err == nil {
			out[name] = f
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("scrape metrics: %w", err)
	}
	return out, nil
}
