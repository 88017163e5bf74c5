package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"go.klusters.dev/credential-webhook/e2e/harness"
	"go.klusters.dev/credential-webhook/testenv/moto"
)

// Issue 17, with the real client: restic 0.14 (Debian's, whose minio-go cannot do web identity)
// backs up to moto's S3 with nothing but the file the aws-credentials sidecar keeps fresh.
//
// The webhook injects a tenant's Pod (its ServiceAccount names a derived role and opts into the
// sidecar); the test then plays the kubelet from that Pod spec: the volumes become folders, the
// projected token is a TokenRequest bound to the Pod with the volume's audience and lifetime, and
// the containers run as processes with the env the webhook wrote. The sidecar is the real binary
// (`credential-webhook aws-credentials`), started the moment the derived role is created, so STS
// (the IAM proxy's propagation delay) refuses it at first; the startup probe
// (`aws-credentials --check`) gates restic as it gates the Pod's next containers. restic then runs
// init, backup, snapshots, check and dump against S3 through a recording proxy, and every request
// it made must be signed with the access key STS issued to the sidecar and carry its session
// token; none with the static test key. A fence stands in for every non-local address (HTTP(S)_PROXY):
// neither process may reach anything but 127.0.0.1, instance metadata included.
func TestResticBacksUpWithSidecarCredentials(t *testing.T) {
	start := time.Now()
	resticBin, err := exec.LookPath("restic")
	if err != nil {
		t.Fatalf("restic not found on PATH (%v): this test proves the sidecar with the real client; install it with `apt-get install restic` (Debian 12: restic 0.14.0), as .ci/run does", err)
	}
	version, err := exec.Command(resticBin, "version").Output()
	if err != nil {
		t.Fatalf("restic version: %v", err)
	}
	const propagation = 3 * time.Second
	ctx := context.Background()
	ns := cluster.Namespace(t)
	wh := cluster.StartWebhook(t, harness.WebhookOptions{Args: []string{
		"--aws-inject-pod-identity", "--aws-region=" + moto.Region,
		"--sidecar-image=registry.example/credential-webhook:e2e",
		// deny: a Pod created before the cache has the ServiceAccount is refused, and retried below.
		"--pod-missing-serviceaccount=deny",
		"--sweeper=false",
	}})
	tenant := tenantClient(t, ns)

	// The derived role's ARN is known before the role exists (the AWS provider writes it on the
	// ServiceAccount when it plans); the role itself is created right before the sidecar starts.
	seed := seedRole(t, "kubestash-restic-"+shortName(ns))
	roleName := seed[strings.LastIndexByte(seed, '/')+1:] + "-0"
	roleARN := "arn:aws:iam::" + moto.AccountID + ":role/" + roleName
	sa, err := tenant.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{
		Name: "restic", Namespace: ns,
		Annotations: map[string]string{"eks.amazonaws.com/role-arn": roleARN, "go.klusters.dev/restic-credentials": "true"},
	}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("tenant creates a ServiceAccount opting into the sidecar: %v", err)
	}
	var pod *corev1.Pod
	flowPoll(t, 30*time.Second, "the Pod admitted once the cache has its ServiceAccount", func() (bool, error) {
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "backup", Namespace: ns},
			Spec: corev1.PodSpec{
				ServiceAccountName: sa.Name, RestartPolicy: corev1.RestartPolicyNever,
				Containers: []corev1.Container{{Name: "restic", Image: "restic/restic:0.14.0"}},
			},
		}
		created, err := tenant.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
		if err != nil {
			return false, nil // refused until the ServiceAccount cache has it
		}
		pod = created
		return true, nil
	})
	if len(pod.Spec.InitContainers) != 1 || pod.Spec.InitContainers[0].Name != "aws-credentials" {
		t.Fatalf("Pod not injected with the aws-credentials sidecar: init containers %+v\n%s", pod.Spec.InitContainers, wh.Logs())
	}
	node := newFakeKubelet(t, pod)
	node.mintTokens(t)

	stsRec := newAWSRecorder(t, cluster.IAM.URL)
	s3Rec := newAWSRecorder(t, cluster.Moto.Endpoint)
	fence := newFence(t)
	bucket := "restic-" + shortName(ns)
	createBucket(t, cluster.Moto.Endpoint, bucket)

	// The sidecar's environment is the container's, plus what stands in for AWS: STS at the
	// recorder in front of the IAM proxy, and nothing inherited from this process.
	sidecarEnv := append(node.env(t, pod.Spec.InitContainers[0]),
		"AWS_ENDPOINT_URL="+stsRec.url, "AWS_EC2_METADATA_DISABLED=true",
		"AWS_CONFIG_FILE="+filepath.Join(node.dir, "no-aws-config"),
		"HTTP_PROXY="+fence.url, "HTTPS_PROXY="+fence.url, "NO_PROXY=",
		"HOME="+node.dir, "PATH=/usr/bin:/bin")
	credFile := envValue(sidecarEnv, "AWS_SHARED_CREDENTIALS_FILE")
	if credFile == "" || !strings.HasPrefix(credFile, node.dir) {
		t.Fatalf("sidecar env has no AWS_SHARED_CREDENTIALS_FILE in a volume: %v", sidecarEnv)
	}

	cluster.IAM.SetPropagationDelay(propagation)
	t.Cleanup(func() { cluster.IAM.SetPropagationDelay(0) })
	derived := derivedRole(t, seed, 0, flowSubject(ns, sa.Name))
	if derived != roleARN {
		t.Fatalf("derived role %s, the ServiceAccount names %s", derived, roleARN)
	}
	roleCreated := time.Now()
	sidecar := startSidecar(t, cluster.WebhookBinary, sidecarEnv)

	// The startup probe as the kubelet runs it, exec in the sidecar's environment (every 200 ms here,
	// every second in the Pod).
	probes := 0
	flowPoll(t, 90*time.Second, "the sidecar's startup probe to pass", func() (bool, error) {
		if sidecar.exited() {
			return false, fmt.Errorf("sidecar exited: %s", sidecar.logs())
		}
		probes++
		probe := exec.Command(cluster.WebhookBinary, "aws-credentials", "--check")
		probe.Env = sidecarEnv
		return probe.Run() == nil, nil
	})
	firstFile := time.Since(roleCreated)
	refused := 0
	for _, r := range cluster.IAM.Rejections() {
		if r.Role == roleName && r.Action == "sts:AssumeRoleWithWebIdentity" && strings.Contains(r.Reason, "propagation delay") {
			refused++
		}
	}
	if refused == 0 {
		t.Fatalf("STS never refused the sidecar during propagation: the test did not exercise the retries; rejections %+v", cluster.IAM.Rejections())
	}
	issued := stsRec.issuedKeys()
	if len(issued) != 1 {
		t.Fatalf("STS issued %d access keys to the sidecar (%v), want 1", len(issued), issued)
	}
	file := readCredentialsFile(t, credFile)
	if file["aws_access_key_id"] != issued[0] {
		t.Fatalf("credentials file holds access key %q, STS issued %q", file["aws_access_key_id"], issued[0])
	}
	if issued[0] == "test" || file["aws_session_token"] == "" {
		t.Fatalf("credentials file holds the static test key or no session token")
	}

	// The credentials are the derived role's, in a session named after the Pod (downward API).
	cfg := moto.ConfigFor(cluster.Moto.Endpoint)
	cfg.Credentials = aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) {
		return aws.Credentials{AccessKeyID: file["aws_access_key_id"], SecretAccessKey: file["aws_secret_access_key"], SessionToken: file["aws_session_token"]}, nil
	})
	id, err := sts.NewFromConfig(cfg).GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{})
	if err != nil {
		t.Fatal(err)
	}
	if arn := aws.ToString(id.Arn); !strings.HasSuffix(arn, ":assumed-role/"+roleName+"/"+pod.Name) {
		t.Errorf("the sidecar's credentials are %s, want the assumed role %s in session %s", arn, roleName, pod.Name)
	}

	// restic runs with the main container's environment (IRSA plus the credentials file, no
	// access key), the repository password and a cache of its own.
	resticEnv := append(node.env(t, pod.Spec.Containers[0]),
		"RESTIC_PASSWORD=e2e-restic-password", "AWS_EC2_METADATA_DISABLED=true",
		"HTTP_PROXY="+fence.url, "HTTPS_PROXY="+fence.url, "NO_PROXY=",
		"HOME="+node.dir, "TMPDIR="+node.dir, "XDG_CACHE_HOME="+filepath.Join(node.dir, "cache"), "PATH=/usr/bin:/bin")
	for _, k := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"} {
		if envValue(resticEnv, k) != "" {
			t.Fatalf("restic's environment has %s: it must find its keys in the sidecar's file only", k)
		}
	}
	if envValue(resticEnv, "AWS_SHARED_CREDENTIALS_FILE") != credFile || envValue(resticEnv, "AWS_DEFAULT_REGION") != moto.Region {
		t.Fatalf("restic's container env does not name the sidecar's file %s and region %s: %v", credFile, moto.Region, resticEnv)
	}
	data := filepath.Join(node.dir, "data")
	content := "backed up with credentials from " + roleName + "\n"
	for name, body := range map[string]string{"hello.txt": content, "sub/more.txt": strings.Repeat("restic ", 4096)} {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(data, name)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(data, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	repo := "s3:" + s3Rec.url + "/" + bucket + "/repo"
	restic := func(args ...string) string {
		t.Helper()
		rctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(rctx, resticBin, append([]string{"-r", repo, "-o", "s3.bucket-lookup=path"}, args...)...)
		cmd.Env, cmd.Dir = resticEnv, node.dir
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("restic %s: %v\nstdout:\n%s\nstderr:\n%s\nsidecar:\n%s", strings.Join(args, " "), err, stdout.String(), stderr.String(), sidecar.logs())
		}
		return stdout.String()
	}
	resticStart := time.Now()
	restic("init")
	restic("backup", "--host", "e2e", data)
	var snaps []struct {
		ID    string   `json:"id"`
		Paths []string `json:"paths"`
		Host  string   `json:"hostname"`
	}
	if out := restic("snapshots", "--json"); json.Unmarshal([]byte(out), &snaps) != nil || len(snaps) != 1 ||
		len(snaps[0].Paths) != 1 || snaps[0].Paths[0] != data || snaps[0].Host != "e2e" {
		t.Fatalf("restic snapshots: %s, want one snapshot of %s from host e2e", out, data)
	}
	if out := restic("check"); !strings.Contains(out, "no errors were found") {
		t.Errorf("restic check did not report a clean repository:\n%s", out)
	}
	if got := restic("dump", "latest", filepath.Join(data, "hello.txt")); got != content {
		t.Errorf("restic dump of the backed-up file = %q, want %q", got, content)
	}
	resticTook := time.Since(resticStart)

	// Every request restic made was signed with the sidecar's key and carried its token.
	reqs := s3Rec.requests()
	methods := map[string]int{}
	for _, r := range reqs {
		methods[r.method]++
		switch {
		case r.accessKeyID == "test":
			t.Errorf("%s %s signed with the static test key", r.method, r.path)
		case r.accessKeyID != issued[0]:
			t.Errorf("%s %s signed with access key %q, want the sidecar's %q", r.method, r.path, r.accessKeyID, issued[0])
		case r.sessionToken != file["aws_session_token"]:
			t.Errorf("%s %s does not carry the sidecar's session token", r.method, r.path)
		}
	}
	if methods[http.MethodPut] == 0 || methods[http.MethodGet] == 0 || methods[http.MethodDelete] == 0 {
		t.Errorf("S3 requests by method %v: want writes, reads and deletes (restic's locks)", methods)
	}
	if hits := fence.hits(); len(hits) != 0 {
		t.Errorf("the sidecar or restic tried to leave 127.0.0.1: %v", hits)
	}

	// SIGTERM ends the sidecar cleanly, as the kubelet stops it after the main container.
	if err := sidecar.stop(); err != nil {
		t.Errorf("sidecar did not exit cleanly on SIGTERM: %v\n%s", err, sidecar.logs())
	}
	log := sidecar.logs()
	if !strings.Contains(log, "assume role failed, retrying") || !strings.Contains(log, "wrote AWS credentials") {
		t.Errorf("sidecar log lacks the retries or the write:\n%s", log)
	}
	for _, secret := range []string{file["aws_secret_access_key"], file["aws_session_token"], node.token} {
		if strings.Contains(log, secret) {
			t.Error("sidecar log contains a secret value")
		}
	}
	t.Logf("figures: %s; propagation delay %s; STS refused the sidecar %d times (%d STS calls), the probe passed %s after the role was created (%d probes); restic made %d S3 requests %v, all signed with the sidecar's key, in %s; test %s",
		strings.TrimSpace(string(version)), propagation, refused, stsRec.count(), firstFile.Round(time.Millisecond), probes,
		len(reqs), methods, resticTook.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
}

// fakeKubelet lays a Pod's volumes out as folders and runs nothing itself; it resolves a
// container's environment against those folders.
type fakeKubelet struct {
	pod   *corev1.Pod
	dir   string
	token string
}

func newFakeKubelet(t *testing.T, pod *corev1.Pod) *fakeKubelet {
	t.Helper()
	k := &fakeKubelet{pod: pod, dir: t.TempDir()}
	for _, v := range pod.Spec.Volumes {
		if err := os.MkdirAll(filepath.Join(k.dir, "volumes", v.Name), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	return k
}

// mintTokens writes every projected ServiceAccount token, as the kubelet does: a TokenRequest
// with the projection's audience and lifetime, bound to the Pod.
func (k *fakeKubelet) mintTokens(t *testing.T) {
	t.Helper()
	n := 0
	for _, v := range k.pod.Spec.Volumes {
		if v.Projected == nil {
			continue
		}
		for _, src := range v.Projected.Sources {
			p := src.ServiceAccountToken
			if p == nil {
				continue
			}
			tr, err := cluster.Client.CoreV1().ServiceAccounts(k.pod.Namespace).CreateToken(context.Background(), k.pod.Spec.ServiceAccountName, &authenticationv1.TokenRequest{
				Spec: authenticationv1.TokenRequestSpec{
					Audiences: []string{p.Audience}, ExpirationSeconds: p.ExpirationSeconds,
					BoundObjectRef: &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: k.pod.Name, UID: k.pod.UID},
				},
			}, metav1.CreateOptions{})
			if err != nil {
				t.Fatalf("token for volume %s: %v", v.Name, err)
			}
			if err := os.WriteFile(filepath.Join(k.dir, "volumes", v.Name, p.Path), []byte(tr.Status.Token), 0o600); err != nil {
				t.Fatal(err)
			}
			k.token = tr.Status.Token
			n++
		}
	}
	if n == 0 {
		t.Fatalf("Pod %s has no projected ServiceAccount token: %+v", k.pod.Name, k.pod.Spec.Volumes)
	}
}

// env is c's environment with mount paths replaced by the volumes' folders and the downward
// API's metadata fields resolved.
func (k *fakeKubelet) env(t *testing.T, c corev1.Container) []string {
	t.Helper()
	out := make([]string, 0, len(c.Env))
	for _, e := range c.Env {
		v := e.Value
		if e.ValueFrom != nil {
			switch f := e.ValueFrom.FieldRef; {
			case f != nil && f.FieldPath == "metadata.name":
				v = k.pod.Name
			case f != nil && f.FieldPath == "metadata.namespace":
				v = k.pod.Namespace
			default:
				t.Fatalf("container %s env %s: valueFrom %+v not supported by this test", c.Name, e.Name, e.ValueFrom)
			}
		}
		for _, m := range c.VolumeMounts {
			if v == m.MountPath || strings.HasPrefix(v, m.MountPath+"/") {
				v = filepath.Join(k.dir, "volumes", m.Name) + strings.TrimPrefix(v, m.MountPath)
			}
		}
		out = append(out, e.Name+"="+v)
	}
	return out
}

func envValue(env []string, key string) string {
	v := ""
	for _, kv := range env {
		if k, val, _ := strings.Cut(kv, "="); k == key {
			v = val // the last one wins, as in exec
		}
	}
	return v
}

// sidecarProcess is `credential-webhook aws-credentials` as a child process.
type sidecarProcess struct {
	cmd  *exec.Cmd
	out  *syncBuf
	done chan struct{}
	err  error
}

func startSidecar(t *testing.T, bin string, env []string) *sidecarProcess {
	t.Helper()
	s := &sidecarProcess{out: &syncBuf{}, done: make(chan struct{})}
	s.cmd = exec.Command(bin, "aws-credentials")
	s.cmd.Env, s.cmd.Stdout, s.cmd.Stderr = env, s.out, s.out
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("start the sidecar: %v", err)
	}
	go func() { s.err = s.cmd.Wait(); close(s.done) }()
	t.Cleanup(func() {
		if !s.exited() {
			_ = s.cmd.Process.Kill()
			<-s.done
		}
	})
	return s
}

func (s *sidecarProcess) exited() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

func (s *sidecarProcess) logs() string { return s.out.String() }

func (s *sidecarProcess) stop() error {
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return err
	}
	select {
	case <-s.done:
		return s.err
	case <-time.After(30 * time.Second):
		return fmt.Errorf("still running 30 s after SIGTERM")
	}
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// awsRecorder is a thin reverse proxy that notes, per request, the access key that signed it
// and the session token it carried, and the access keys STS handed out in its answers.
type awsRecorder struct {
	url string

	mu     sync.Mutex
	reqs   []signedRequest
	issued []string
}

type signedRequest struct {
	method, path, accessKeyID, sessionToken string
}

func newAWSRecorder(t *testing.T, upstream string) *awsRecorder {
	t.Helper()
	u, err := url.Parse(upstream)
	if err != nil {
		t.Fatal(err)
	}
	rec := &awsRecorder{}
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(u)
			pr.Out.Host = pr.In.Host // the host the client signed
			pr.Out.Header.Del("Accept-Encoding")
		},
		ModifyResponse: func(resp *http.Response) error {
			// Only Query-protocol answers (STS) are read; S3's objects pass untouched.
			if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Request.Header.Get("Content-Type"), "application/x-www-form-urlencoded") {
				return nil
			}
			body, err := io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			if err != nil {
				return err
			}
			resp.Body = io.NopCloser(bytes.NewReader(body))
			var out struct {
				AccessKeyID string `xml:"AssumeRoleWithWebIdentityResult>Credentials>AccessKeyId"`
			}
			if xml.Unmarshal(body, &out) == nil && out.AccessKeyID != "" {
				rec.mu.Lock()
				rec.issued = append(rec.issued, out.AccessKeyID)
				rec.mu.Unlock()
			}
			return nil
		},
	}
	srv := httptestServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec.mu.Lock()
		rec.reqs = append(rec.reqs, signedRequest{
			method: r.Method, path: r.URL.Path,
			accessKeyID: signingKeyID(r), sessionToken: r.Header.Get("X-Amz-Security-Token"),
		})
		rec.mu.Unlock()
		rp.ServeHTTP(w, r)
	}))
	rec.url = srv
	return rec
}

// signingKeyID is the access key id of a SigV4 request: from the Authorization header
// ("AWS4-HMAC-SHA256 Credential=<AKID>/<date>/<region>/<service>/aws4_request, ..."), or the
// X-Amz-Credential query parameter of a presigned URL; "" when unsigned.
func signingKeyID(r *http.Request) string {
	cred := r.URL.Query().Get("X-Amz-Credential")
	if auth := r.Header.Get("Authorization"); auth != "" {
		_, after, ok := strings.Cut(auth, "Credential=")
		if !ok {
			return ""
		}
		cred = after
	}
	id, _, _ := strings.Cut(cred, "/")
	return id
}

func (r *awsRecorder) requests() []signedRequest {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]signedRequest(nil), r.reqs...)
}

func (r *awsRecorder) issuedKeys() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.issued...)
}

func (r *awsRecorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.reqs)
}

// fence is where HTTP_PROXY and HTTPS_PROXY point: Go never proxies 127.0.0.1, so anything that
// arrives here was headed elsewhere (real AWS, instance metadata). It refuses and records.
type fence struct {
	url  string
	mu   sync.Mutex
	seen []string
}

func newFence(t *testing.T) *fence {
	t.Helper()
	f := &fence{}
	f.url = httptestServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.seen = append(f.seen, r.Method+" "+r.Host)
		f.mu.Unlock()
		http.Error(w, "e2e fence: only 127.0.0.1 is reachable", http.StatusForbidden)
	}))
	return f
}

func (f *fence) hits() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.seen...)
}

// httptestServer serves h on a free 127.0.0.1 port until the test ends and returns its URL.
func httptestServer(t *testing.T, h http.Handler) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	return "http://" + l.Addr().String()
}

// createBucket creates bucket in moto directly, signed with the static test key, as the bucket
// of a backup exists before any Pod: restic's own requests all go through the recorder.
func createBucket(t *testing.T, endpoint, bucket string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPut, endpoint+"/"+bucket, nil)
	if err != nil {
		t.Fatal(err)
	}
	empty := sha256.Sum256(nil)
	hash := hex.EncodeToString(empty[:])
	req.Header.Set("X-Amz-Content-Sha256", hash)
	creds := aws.Credentials{AccessKeyID: "test", SecretAccessKey: "test"}
	if err := v4.NewSigner().SignHTTP(context.Background(), creds, req, hash, "s3", moto.Region, time.Now()); err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("create bucket %s: %v", bucket, err)
	}
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("create bucket %s: %s %s", bucket, resp.Status, body)
	}
}

// readCredentialsFile reads the [default] profile of an AWS shared-credentials file.
func readCredentialsFile(t *testing.T, path string) map[string]string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	section := ""
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case strings.HasPrefix(line, "#") || line == "":
		case strings.HasPrefix(line, "["):
			section = strings.Trim(line, "[]")
		case section == "default":
			if k, v, ok := strings.Cut(line, "="); ok {
				out[strings.TrimSpace(k)] = strings.TrimSpace(v)
			}
		}
	}
	return out
}
