package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/e2e/harness"
)

// Sustained load while the serving certificate rotates the way it does in a cluster: cert-manager
// renews the Secret and the kubelet's atomic writer swaps the volume's "..data" symlink to a new
// timestamped folder. Every review sent during the rotations must succeed, and new handshakes
// must get the new certificate.
const (
	rotationRate           = 500 // reviews per second, paced open-loop
	rotationDefaultSeconds = 60  // E2E_ROTATION_SECONDS overrides it for local runs
	rotationEvery          = 5 * time.Second
	rotationWorkers        = 64 // enough for the target rate even with 100 ms latency spikes
	rotationFreshEvery     = 10 // every 10th review goes on a new connection (a new handshake)
	rotationRateTolerance  = 0.10
	rotationRoleARN        = "arn:aws:iam::123456789012:role/rotation-load"
	rotationUIDPlaceholder = "@@REVIEW-UID@@"
)

// secretVolume is a folder laid out like a kubelet Secret volume: tls.crt and tls.key are
// symlinks through "..data", itself a symlink to the current "..<timestamp>" folder.
type secretVolume struct {
	dir     string // what the webhook reads: dir/tls.crt, dir/tls.key
	scratch string // ca.crt, ca.key (the harness CA) and each freshly issued pair
	seq     int
}

func newSecretVolume(t *testing.T) *secretVolume {
	t.Helper()
	root := t.TempDir()
	v := &secretVolume{dir: filepath.Join(root, "volume"), scratch: filepath.Join(root, "scratch")}
	for _, d := range []string{v.dir, v.scratch} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// Issue from the harness's CA, so the frontend (and the apiserver behind it) trusts the
	// rotated pairs as it trusts the harness's own.
	for _, name := range []string{"ca.crt", "ca.key"} {
		b, err := os.ReadFile(filepath.Join(cluster.WebhookCertDir, name))
		if err != nil {
			t.Fatalf("read the harness CA: %v", err)
		}
		if err := os.WriteFile(filepath.Join(v.scratch, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return v
}

// rotate issues a new serving pair and publishes it as the kubelet's atomic writer does: a new
// "..<timestamp>" folder, a "..data_tmp" symlink to it renamed over "..data" (the one atomic
// step), the user-visible symlinks created once, and the previous folder removed. It returns
// the new certificate's serial number.
func (v *secretVolume) rotate() (string, error) {
	// `credential-webhook certs --reuse-ca` is certs.WriteDev with ReuseCA. The e2e module does
	// not import the certs package itself: it would pull fsnotify into this module's go.sum.
	cmd := exec.Command(cluster.WebhookBinary, "certs", "--dir", v.scratch, "--hosts", "127.0.0.1,localhost", "--reuse-ca", "--validity", "24h")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("issue a serving pair: %w\n%s", err, out)
	}
	crt, err := os.ReadFile(filepath.Join(v.scratch, "tls.crt"))
	if err != nil {
		return "", err
	}
	key, err := os.ReadFile(filepath.Join(v.scratch, "tls.key"))
	if err != nil {
		return "", err
	}
	serial, err := pemSerial(crt)
	if err != nil {
		return "", err
	}
	v.seq++
	ts := fmt.Sprintf("..%s.%04d", time.Now().UTC().Format("2006_01_02_15_04_05"), v.seq)
	if err := os.Mkdir(filepath.Join(v.dir, ts), 0o755); err != nil {
		return "", fmt.Errorf("create %s: %w", ts, err)
	}
	if err := os.WriteFile(filepath.Join(v.dir, ts, "tls.crt"), crt, 0o644); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(v.dir, ts, "tls.key"), key, 0o600); err != nil {
		return "", err
	}
	dataLink, tmpLink := filepath.Join(v.dir, "..data"), filepath.Join(v.dir, "..data_tmp")
	old, err := os.Readlink(dataLink)
	if err != nil && !os.IsNotExist(err) {
		return "", fmt.Errorf("read ..data: %w", err)
	}
	if err := os.Symlink(ts, tmpLink); err != nil {
		return "", fmt.Errorf("create ..data_tmp: %w", err)
	}
	if err := os.Rename(tmpLink, dataLink); err != nil {
		return "", fmt.Errorf("swap ..data: %w", err)
	}
	for _, name := range []string{"tls.crt", "tls.key"} {
		link := filepath.Join(v.dir, name)
		if _, err := os.Lstat(link); os.IsNotExist(err) {
			if err := os.Symlink(filepath.Join("..data", name), link); err != nil {
				return "", fmt.Errorf("create %s: %w", name, err)
			}
		}
	}
	if old != "" {
		if err := os.RemoveAll(filepath.Join(v.dir, old)); err != nil {
			return "", fmt.Errorf("remove the previous %s: %w", old, err)
		}
	}
	return serial, nil
}

func pemSerial(certPEM []byte) (string, error) {
	b, _ := pem.Decode(certPEM)
	if b == nil {
		return "", fmt.Errorf("certificate is not PEM")
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return "", fmt.Errorf("parse certificate: %w", err)
	}
	return c.SerialNumber.String(), nil
}

// loadResult is the outcome of one review; fail is empty when it succeeded.
type loadResult struct {
	done    bool
	start   time.Duration // since the load started
	latency time.Duration
	serial  string // leaf serial the server presented
	newConn bool   // the request went on a new connection (a handshake)
	fail    string // failure kind
	detail  string
}

// rotationClient sends Pod reviews to one replica. keep reuses connections (its idle ones are
// closed every second by the test); fresh opens a new connection per request.
type rotationClient struct {
	url          string
	keep, fresh  *http.Client
	prefix, tail []byte // the review body around the uid
	patch        []byte // the expected JSON patch, once known
}

func newRotationClient(t *testing.T, url string, review []byte) *rotationClient {
	t.Helper()
	pool, err := cluster.WebhookCAPool()
	if err != nil {
		t.Fatal(err)
	}
	// No ClientSessionCache: no TLS resumption, so every new connection is a full handshake
	// that asks the server's GetCertificate for the current pair.
	tlsConf := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	keep := &http.Transport{TLSClientConfig: tlsConf, MaxIdleConns: 2 * rotationWorkers, MaxIdleConnsPerHost: 2 * rotationWorkers, IdleConnTimeout: 90 * time.Second}
	fresh := &http.Transport{TLSClientConfig: tlsConf, DisableKeepAlives: true}
	t.Cleanup(keep.CloseIdleConnections)
	before, after, ok := bytes.Cut(review, []byte(rotationUIDPlaceholder))
	if !ok {
		t.Fatal("review template has no uid placeholder")
	}
	return &rotationClient{url: url + "/mutate/pods?timeout=10s",
		keep: &http.Client{Transport: keep, Timeout: 10 * time.Second}, fresh: &http.Client{Transport: fresh, Timeout: 10 * time.Second},
		prefix: before, tail: after}
}

// review sends one review and checks the answer; it returns the response's patch as well.
func (c *rotationClient) review(uid string, fresh bool) (res loadResult, patch []byte) {
	body := make([]byte, 0, len(c.prefix)+len(uid)+len(c.tail))
	body = append(append(append(body, c.prefix...), uid...), c.tail...)
	var newConn bool
	ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
		GotConn: func(i httptrace.GotConnInfo) { newConn = !i.Reused },
	})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.url, bytes.NewReader(body))
	if err != nil {
		return loadResult{fail: "request", detail: err.Error()}, nil
	}
	req.Header.Set("Content-Type", "application/json")
	client := c.keep
	if fresh {
		client = c.fresh
	}
	start := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		return loadResult{latency: time.Since(start), newConn: newConn, fail: "transport", detail: err.Error()}, nil
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	res = loadResult{latency: time.Since(start), newConn: newConn}
	if resp.TLS != nil && len(resp.TLS.PeerCertificates) > 0 {
		res.serial = resp.TLS.PeerCertificates[0].SerialNumber.String()
	}
	if err != nil {
		res.fail, res.detail = "read-body", err.Error()
		return res, nil
	}
	if resp.StatusCode != http.StatusOK {
		res.fail, res.detail = "http-"+strconv.Itoa(resp.StatusCode), string(b)
		return res, nil
	}
	var out admissionv1.AdmissionReview
	if err := json.Unmarshal(b, &out); err != nil {
		res.fail, res.detail = "decode", err.Error()
		return res, nil
	}
	switch r := out.Response; {
	case out.APIVersion != "admission.k8s.io/v1" || out.Kind != "AdmissionReview" || r == nil:
		res.fail, res.detail = "not-a-review", string(b)
	case string(r.UID) != uid:
		res.fail, res.detail = "uid", fmt.Sprintf("answered uid %q to %q", r.UID, uid)
	case !r.Allowed:
		res.fail, res.detail = "denied", string(b)
	case r.PatchType == nil || *r.PatchType != admissionv1.PatchTypeJSONPatch:
		res.fail, res.detail = "patch-type", string(b)
	case c.patch != nil && !bytes.Equal(r.Patch, c.patch):
		res.fail, res.detail = "patch", string(r.Patch)
	}
	if out.Response == nil {
		return res, nil
	}
	return res, out.Response.Patch
}

// rotationPatchInjects reports whether a JSON patch sets AWS_ROLE_ARN to the role and
// AWS_WEB_IDENTITY_TOKEN_FILE, wherever in the patch they are (a whole env array or appends).
func rotationPatchInjects(patch []byte) bool {
	var ops []any
	if json.Unmarshal(patch, &ops) != nil {
		return false
	}
	env := map[string]string{}
	var walk func(any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			if name, ok := v["name"].(string); ok {
				if value, ok := v["value"].(string); ok {
					env[name] = value
				}
			}
			for _, x := range v {
				walk(x)
			}
		case []any:
			for _, x := range v {
				walk(x)
			}
		}
	}
	walk(ops)
	return env["AWS_ROLE_ARN"] == rotationRoleARN && env["AWS_WEB_IDENTITY_TOKEN_FILE"] != ""
}

// rotationReview is an AdmissionReview v1 of a Pod CREATE as the job controller sends it, with
// a placeholder where each request's uid goes.
func rotationReview(t *testing.T, ns, serviceAccount string) []byte {
	t.Helper()
	pod := plainPod(ns)
	pod.TypeMeta = metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"}
	pod.GenerateName, pod.Name = "", "rotation-load"
	pod.Spec.ServiceAccountName = serviceAccount
	raw, err := json.Marshal(pod)
	if err != nil {
		t.Fatal(err)
	}
	gvk := metav1.GroupVersionKind{Version: "v1", Kind: "Pod"}
	gvr := metav1.GroupVersionResource{Version: "v1", Resource: "pods"}
	b, err := json.Marshal(admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{
			UID: types.UID(rotationUIDPlaceholder), Kind: gvk, Resource: gvr, RequestKind: &gvk, RequestResource: &gvr,
			Namespace: ns, Name: pod.Name, Operation: admissionv1.Create,
			UserInfo: authenticationv1.UserInfo{Username: "system:serviceaccount:kube-system:job-controller",
				Groups: []string{"system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"}},
			Object:  runtime.RawExtension{Raw: raw},
			DryRun:  ptr.To(false),
			Options: runtime.RawExtension{Raw: []byte(`{"kind":"CreateOptions","apiVersion":"meta.k8s.io/v1"}`)},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown (" + err.Error() + ")"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return strings.TrimSpace(string(b))
	}
	return strings.Join(f[:3], " ")
}

// TestRotationLoadZeroFailedReviews sends 500 Pod reviews/s for a minute straight to one
// replica while its serving pair is rotated every 5 s through a kubelet-style Secret volume:
// no review may fail, new handshakes must present each new certificate, and the load must
// really have been sustained (a generator that fell behind proves nothing).
func TestRotationLoadZeroFailedReviews(t *testing.T) {
	seconds := rotationDefaultSeconds
	if s := os.Getenv("E2E_ROTATION_SECONDS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 {
			t.Fatalf("E2E_ROTATION_SECONDS=%q: want a positive number of seconds", s)
		}
		seconds = n
	}
	duration := time.Duration(seconds) * time.Second
	total := rotationRate * seconds

	vol := newSecretVolume(t)
	first, err := vol.rotate()
	if err != nil {
		t.Fatalf("initial serving pair: %v", err)
	}
	written := []string{first}

	ns := cluster.Namespace(t)
	ctx := context.Background()
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "rotation-load", Namespace: ns,
		Annotations: map[string]string{annotations.AWSRoleARN: rotationRoleARN}}}
	if _, err := cluster.Client.CoreV1().ServiceAccounts(ns).Create(ctx, sa, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create ServiceAccount: %v", err)
	}

	wh := cluster.StartWebhook(t, harness.WebhookOptions{Name: "rotation-" + ns[strings.LastIndexByte(ns, '-')+1:], Args: []string{
		"--tls-cert-file=" + filepath.Join(vol.dir, "tls.crt"),
		"--tls-key-file=" + filepath.Join(vol.dir, "tls.key"),
		"--allowed-namespaces=*",
		"--aws-inject-pod-identity",
		"--aws-region=us-east-1",
		// Every review must get the identical patch (a wrong answer during a rotation shows as a
		// different one), so no random jitter on the token lifetime.
		"--aws-token-expiration-jitter=0",
		"--sweeper=false",
	}})
	client := newRotationClient(t, wh.URL, rotationReview(t, ns, sa.Name))

	// The replica's informer must have seen the ServiceAccount before the load: until then it
	// admits the Pod unpatched (with a warning).
	var warmupPatched int
	deadline := time.Now().Add(30 * time.Second)
	for i := 0; ; i++ {
		res, patch := client.review(fmt.Sprintf("rotation-warmup-%d", i), false)
		if res.fail == "" && len(patch) > 0 {
			warmupPatched++
			if !rotationPatchInjects(patch) {
				t.Fatalf("the Pod's patch does not inject AWS_ROLE_ARN=%s and a token file: %s", rotationRoleARN, patch)
			}
			client.patch = patch
			break
		}
		if res.fail != "" && res.fail != "patch-type" {
			t.Fatalf("warm-up review: %s: %s", res.fail, res.detail)
		}
		if time.Now().After(deadline) {
			t.Fatalf("the replica never patched the Pod within 30s (its informer never saw ServiceAccount %s/%s)", ns, sa.Name)
		}
		time.Sleep(100 * time.Millisecond)
	}

	loadStart := loadAverage()
	results := make([]loadResult, total)
	jobs := make(chan int, 1024)
	loadDone := make(chan struct{})
	var pacerMaxLag atomic.Int64
	start := time.Now()

	// Open-loop pacing: request i is due at start + i/rate, whatever the previous ones took.
	go func() {
		defer close(jobs)
		for i := range total {
			due := start.Add(time.Duration(i) * time.Second / rotationRate)
			if d := time.Until(due); d > 0 {
				time.Sleep(d)
			} else if lag := int64(-d); lag > pacerMaxLag.Load() {
				pacerMaxLag.Store(lag)
			}
			jobs <- i
		}
	}()
	var workers sync.WaitGroup
	for range rotationWorkers {
		workers.Go(func() {
			for i := range jobs {
				s := time.Since(start)
				r, _ := client.review(fmt.Sprintf("rotation-%s-%d", ns, i), i%rotationFreshEvery == 0)
				r.done, r.start = true, s
				results[i] = r
			}
		})
	}
	// Idle keep-alive connections are closed every second, so the next requests handshake anew.
	var side sync.WaitGroup
	side.Go(func() {
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-loadDone:
				return
			case <-tick.C:
				client.keep.CloseIdleConnections()
			}
		}
	})
	var rotationsAt []time.Duration
	var rotateErr error
	side.Go(func() {
		tick := time.NewTicker(rotationEvery)
		defer tick.Stop()
		for {
			select {
			case <-loadDone:
				return
			case <-tick.C:
			}
			// Leave the last rotation time to reach new handshakes before the load ends.
			if time.Since(start) > duration-time.Second {
				continue
			}
			at := time.Since(start)
			serial, err := vol.rotate()
			if err != nil {
				rotateErr = err
				return
			}
			rotationsAt = append(rotationsAt, at)
			written = append(written, serial)
		}
	})
	workers.Wait()
	wall := time.Since(start)
	close(loadDone)
	side.Wait()
	loadEnd := loadAverage()
	if rotateErr != nil {
		t.Fatalf("rotate the serving pair: %v", rotateErr)
	}

	// Figures.
	var latencies []time.Duration
	byKind := map[string]int{}
	seen := map[string]int{}
	var handshakes, ok int
	var lastDone time.Duration
	for _, r := range results {
		if !r.done {
			byKind["not-sent"]++
			continue
		}
		latencies = append(latencies, r.latency)
		lastDone = max(lastDone, r.start+r.latency)
		if r.newConn {
			handshakes++
		}
		if r.serial != "" {
			seen[r.serial]++
		}
		if r.fail != "" {
			byKind[r.fail]++
		} else {
			ok++
		}
	}
	sort.Slice(latencies, func(i, j int) bool { return latencies[i] < latencies[j] })
	achieved := float64(len(latencies)) / lastDone.Seconds()
	rotations := len(written) - 1
	t.Logf("figures: %d reviews (%d ok) in %s wall (%s until the last answer), target %d/s for %s, achieved %.1f/s, pacer max lag %s; %d rotations at %v; %d distinct serials seen (%d new connections); failures by kind %v; latency p50 %s p99 %s max %s; load average start %s, end %s",
		len(latencies), ok, wall.Round(time.Millisecond), lastDone.Round(time.Millisecond), rotationRate, duration, achieved,
		time.Duration(pacerMaxLag.Load()).Round(time.Millisecond), rotations, rotationsAt, len(seen), handshakes, byKind,
		packPercentile(latencies, .50), packPercentile(latencies, .99), packPercentile(latencies, 1), loadStart, loadEnd)

	// 1. Zero failed reviews; a failure is reported with where it fell relative to the rotations.
	if failed := len(results) - ok; failed > 0 {
		shown := 0
		for i, r := range results {
			if r.fail == "" && r.done {
				continue
			}
			if shown++; shown > 20 {
				break
			}
			since := "before the first rotation"
			for k := len(rotationsAt) - 1; k >= 0; k-- {
				if r.start >= rotationsAt[k] {
					since = fmt.Sprintf("%s after rotation %d", (r.start - rotationsAt[k]).Round(time.Millisecond), k+1)
					break
				}
			}
			t.Errorf("review %d sent at +%s (%s), new connection %v, served by serial %s: %s: %s",
				i, r.start.Round(time.Millisecond), since, r.newConn, r.serial, r.fail, r.detail)
		}
		t.Errorf("%d of %d reviews failed during certificate rotation: %v", failed, total, byKind)
	}

	// 2. The replica served each new certificate, and only ours.
	if len(seen) < rotations+1 {
		t.Errorf("clients saw %d distinct serving certificates, want at least %d (initial + %d rotations); seen %v, written %v", len(seen), rotations+1, rotations, seen, written)
	}
	if last := written[len(written)-1]; seen[last] == 0 {
		t.Errorf("the last rotated certificate (serial %s) was never served; seen %v", last, seen)
	}
	for s := range seen {
		if !slices.Contains(written, s) {
			t.Errorf("served a certificate this test never wrote (serial %s); written %v", s, written)
		}
	}
	var loaded []string
	var notReloaded int
	for _, l := range wh.LogLines() {
		switch l.Msg() {
		case "serving certificate loaded":
			loaded = append(loaded, l.String("serial"))
		case "serving certificate not reloaded; keeping the previous one":
			notReloaded++
		}
	}
	for _, s := range written {
		if !slices.Contains(loaded, s) {
			t.Errorf("the replica never logged loading serial %s; it logged %v", s, loaded)
		}
	}
	t.Logf("the replica logged %d certificate loads and %d kept-previous warnings (a reload that read a half-swapped pair)", len(loaded), notReloaded)

	// 3. The load was really sustained.
	if achieved < rotationRate*(1-rotationRateTolerance) || achieved > rotationRate*(1+rotationRateTolerance) {
		t.Errorf("achieved %.1f reviews/s, want %d/s within %.0f%% (%d reviews answered in %s, pacer max lag %s, load average %s -> %s): the generator fell behind, the run proves nothing",
			achieved, rotationRate, rotationRateTolerance*100, len(latencies), lastDone, time.Duration(pacerMaxLag.Load()), loadStart, loadEnd)
	}

	// 4. Still serving.
	if !wh.Running() {
		t.Errorf("replica %s is no longer running: %v", wh.Name, wh.ExitErr())
	}

	// 5. The server counted every review it answered (the counter is incremented just after the
	// answer is written, hence the short wait).
	if len(results) == ok {
		want := float64(warmupPatched + ok)
		labels := map[string]string{"route": "pods", "kind": "Pod", "operation": "CREATE", "decision": "patched", "code": "200"}
		var got float64
		for end := time.Now().Add(5 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			if got = flowMetric(t, wh, "credential_webhook_requests_total", labels); got == want || time.Now().After(end) {
				break
			}
		}
		if got != want {
			t.Errorf("credential_webhook_requests_total%v = %v, want %v (%d warm-up + %d load reviews)", labels, got, want, warmupPatched, ok)
		}
	}
	// 6. The replica's own account of the rotations: every pair the test wrote was swapped in
	// (the first included) and no reload read a half-swapped volume.
	if got := flowMetric(t, wh, "credential_webhook_certificate_reloads_total", map[string]string{"result": "loaded"}); got != float64(len(written)) {
		t.Errorf("credential_webhook_certificate_reloads_total{result=loaded} = %v, want %d (the first pair and %d rotations)", got, len(written), rotations)
	}
	if got := flowMetric(t, wh, "credential_webhook_certificate_reloads_total", map[string]string{"result": "failed"}); got != float64(notReloaded) {
		t.Errorf("credential_webhook_certificate_reloads_total{result=failed} = %v, but the replica logged %d failed reloads", got, notReloaded)
	}
}
