// Package harness runs real components for end-to-end tests of credential-webhook: etcd,
// kube-apiserver and kube-controller-manager v1.37.2, moto (IAM, STS, S3) behind the iamproxy,
// cert-manager's CRDs, and any number of replicas of the real webhook binary, registered with the
// apiserver through the project's own MutatingWebhookConfiguration and running as its own
// ServiceAccount with the project's own RBAC.
//
// Start it once per test package from TestMain (see Run); tests then work in their own namespaces
// (Namespace) and start the webhook replicas they need (StartWebhook). Everything listens on free
// 127.0.0.1 ports and lives in one temporary folder; every process runs in its own process group
// and is stopped on Close, and killed by the kernel if the test binary dies first.
package harness

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"go.klusters.dev/credential-webhook/testenv/iamproxy"
	"go.klusters.dev/credential-webhook/testenv/moto"
)

const (
	// KubernetesVersion is the version of the control plane binaries.
	KubernetesVersion = "v1.37.2"
	// CertManagerVersion is the cert-manager release whose CRDs are installed.
	CertManagerVersion = "v1.21.2"

	// WebhookNamespace and WebhookServiceAccount are the webhook's identity, from manifests/.
	WebhookNamespace      = "credential-webhook"
	WebhookServiceAccount = "credential-webhook"
	// WebhookConfigurationName is the MutatingWebhookConfiguration from manifests/.
	WebhookConfigurationName = "credential-webhook"
	// ProbeNamespace holds the dry-run probes that show a replica answers through the apiserver.
	ProbeNamespace = "harness-probe"
)

// Buckets exist in moto's S3 from the start; BucketNames is their go.klusters.dev/bucket-names
// value, the one the tests' ServiceAccounts carry.
var Buckets = []string{"backup-b1", "backup-b2"}

// BucketNames is Buckets as the KubeStash operator writes them.
const BucketNames = "backup-b1,backup-b2"

// Options configure Start. The zero value is what the e2e tests use.
type Options struct {
	// KubeBinaries is a folder with kube-apiserver, kube-controller-manager, kubectl and etcd.
	// Default: $KUBE_BINARIES, else the folder printed by e2e/tools/k8s-binaries.sh (a no-op
	// on a warm cache; a cold build takes 10-15 minutes).
	KubeBinaries string
	// WebhookBinary is a prebuilt credential-webhook. Default: $CREDENTIAL_WEBHOOK_BINARY, else
	// `go build` of the repository root once per Start.
	WebhookBinary string
	// Progress receives one line per start-up step. Default: os.Stderr.
	Progress io.Writer
	// APIServerArgs are appended to kube-apiserver's flags (later flags win).
	APIServerArgs []string
}

// Cluster is a running control plane with the webhook registered.
type Cluster struct {
	// Dir is the temporary folder holding data, certificates, kubeconfigs and logs.
	Dir string
	// RepoRoot is the credential-webhook repository (the root Go module).
	RepoRoot string
	// Binaries is the folder with the Kubernetes binaries (kubectl included).
	Binaries string
	// WebhookBinary is the credential-webhook binary the replicas run.
	WebhookBinary string

	// APIServerURL is https://127.0.0.1:PORT.
	APIServerURL string
	// Config, Client and Dynamic act as cluster admin (system:masters), for test set-up.
	Config  *rest.Config
	Client  kubernetes.Interface
	Dynamic dynamic.Interface
	// AdminKubeconfig is a kubeconfig file for the same admin identity (for kubectl).
	AdminKubeconfig string

	// Issuer is the ServiceAccount token issuer (--service-account-issuer); IAM's OIDC provider
	// for the seed roles must name it.
	Issuer string
	// ServiceAccountKeyFile and ServiceAccountPublicKeyFile are the token signing key pair.
	ServiceAccountKeyFile       string
	ServiceAccountPublicKeyFile string

	// WebhookKubeconfig is the kubeconfig the replicas use: the webhook's own ServiceAccount
	// credential-webhook/credential-webhook, with a TokenRequest token, never admin.
	WebhookKubeconfig string
	// WebhookCertDir holds ca.crt, tls.crt and tls.key written by `credential-webhook certs`.
	WebhookCertDir string
	// WebhookURL is the frontend every webhooks[].clientConfig.url points at (path appended).
	WebhookURL string

	// Moto is the IAM, STS and S3 emulator; IAM is the proxy in front of it that validates
	// web-identity tokens with the cluster's key and can inject quota errors, delays and faults.
	// The webhook replicas reach AWS through IAM.URL.
	Moto *moto.Server
	IAM  *iamproxy.Proxy

	progress  io.Writer
	etcd      *process
	apiserver *process
	kcm       *process
	front     *frontend
	motoLog   *logBuffer
	iamLog    *os.File

	mu       sync.Mutex
	webhooks []*Webhook
	seq      int
	closeErr error
	closed   bool
}

// Start brings up the whole environment. On error everything started so far is stopped.
func Start(ctx context.Context, opts Options) (c *Cluster, err error) {
	started := time.Now()
	progress := opts.Progress
	if progress == nil {
		progress = os.Stderr
	}
	removeStaleDirs()
	dir, err := os.MkdirTemp("", dirPrefix)
	if err != nil {
		return nil, fmt.Errorf("harness: temp dir: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "owner.pid"), []byte(strconv.Itoa(os.Getpid())), 0o600); err != nil {
		return nil, fmt.Errorf("harness: %w", err)
	}
	c = &Cluster{Dir: dir, progress: progress}
	defer func() {
		if err != nil {
			c.logf("start-up failed; logs are in %s", dir)
			c.tailLogsOnError()
			_ = c.stopAll()
		}
	}()

	if c.RepoRoot, err = repoRoot(ctx); err != nil {
		return c, err
	}
	if c.Binaries, err = kubeBinaries(ctx, opts.KubeBinaries, c.RepoRoot, progress); err != nil {
		return c, err
	}
	c.logf("Kubernetes binaries: %s", c.Binaries)

	// The webhook compiles while the control plane starts; both are CPU-bound but the
	// control plane mostly waits on itself.
	type buildResult struct {
		path string
		err  error
	}
	built := make(chan buildResult, 1)
	go func() {
		p, err := webhookBinary(ctx, opts.WebhookBinary, c.RepoRoot, dir)
		built <- buildResult{p, err}
	}()

	if err := c.startControlPlane(ctx, opts); err != nil {
		return c, err
	}
	if err := c.startAWS(ctx); err != nil {
		return c, err
	}
	if err := c.installCertManagerCRDs(ctx); err != nil {
		return c, err
	}

	b := <-built
	if b.err != nil {
		return c, b.err
	}
	c.WebhookBinary = b.path
	c.logf("webhook binary: %s", c.WebhookBinary)
	if err := c.writeWebhookCerts(ctx); err != nil {
		return c, err
	}
	if c.front, err = newFrontend(filepath.Join(c.WebhookCertDir, "tls.crt"), filepath.Join(c.WebhookCertDir, "tls.key"), filepath.Join(c.WebhookCertDir, "ca.crt")); err != nil {
		return c, err
	}
	c.WebhookURL = c.front.url
	if err := c.applyManifests(ctx); err != nil {
		return c, err
	}
	if err := c.writeWebhookKubeconfig(ctx); err != nil {
		return c, err
	}
	if _, err := c.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ProbeNamespace}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return c, fmt.Errorf("harness: create %s: %w", ProbeNamespace, err)
	}
	c.logf("ready in %s (dir %s)", time.Since(started).Round(100*time.Millisecond), dir)
	return c, nil
}

// Close stops every webhook replica and every component, and removes Dir unless keepDir.
func (c *Cluster) Close(keepDir bool) error {
	err := c.stopAll()
	if !keepDir && err == nil {
		err = os.RemoveAll(c.Dir)
	}
	return err
}

func (c *Cluster) stopAll() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return c.closeErr
	}
	c.closed = true
	webhooks := c.webhooks
	c.mu.Unlock()

	var errs []error
	for _, w := range webhooks {
		errs = append(errs, w.Kill())
	}
	if c.front != nil {
		c.front.close()
	}
	if c.IAM != nil {
		_ = c.IAM.Close()
	}
	if c.iamLog != nil {
		_ = c.iamLog.Close()
	}
	if c.Moto != nil {
		errs = append(errs, c.Moto.Stop())
	}
	// Controller manager before the apiserver, the apiserver before etcd: each stops cleanly
	// while what it depends on is still there.
	for _, p := range []*process{c.kcm, c.apiserver, c.etcd} {
		if p == nil {
			continue
		}
		if err := p.stop(15 * time.Second); errors.Is(err, errGraceExceeded) {
			c.logf("%v", err) // slow, not broken: it is gone either way
		} else if err != nil {
			errs = append(errs, err)
		}
	}
	c.mu.Lock()
	c.closeErr = errors.Join(errs...)
	c.mu.Unlock()
	return c.closeErr
}

func (c *Cluster) logf(format string, args ...any) {
	fmt.Fprintf(c.progress, "[harness %s] %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
}

// tailLogsOnError prints the end of each component's log after a failed start-up.
func (c *Cluster) tailLogsOnError() {
	for _, p := range []*process{c.etcd, c.apiserver, c.kcm} {
		if p != nil {
			fmt.Fprintf(c.progress, "----- %s (last lines) -----\n%s\n", p.name, p.out.lastBytes())
		}
	}
	if c.motoLog != nil {
		fmt.Fprintf(c.progress, "----- moto (last lines) -----\n%s\n", c.motoLog.lastBytes())
	}
}

// AWSConfig is an aws-sdk-go-v2 config for the test itself, talking to moto directly (not
// through the proxy, so set-up calls neither count in its call log nor meet its faults).
func (c *Cluster) AWSConfig() aws.Config { return moto.ConfigFor(c.Moto.Endpoint) }

// WebhookAWSEnv is the AWS environment every webhook replica gets: the IAM proxy as endpoint,
// dummy credentials, no instance metadata.
func (c *Cluster) WebhookAWSEnv() []string {
	env := c.Moto.Env()
	for i, kv := range env {
		if strings.HasPrefix(kv, "AWS_ENDPOINT_URL=") {
			env[i] = "AWS_ENDPOINT_URL=" + c.IAM.URL
		}
	}
	return env
}

// ---------------------------------------------------------------------------------------------
// Locating the repository and the binaries.

func repoRoot(ctx context.Context) (string, error) {
	// The e2e module requires the root module through `replace => ../`, so its directory is the
	// checkout the tests belong to, wherever the test runs from.
	out, err := exec.CommandContext(ctx, "go", "list", "-m", "-f", "{{.Dir}}", "go.klusters.dev/credential-webhook").Output()
	if err != nil {
		return "", fmt.Errorf("harness: locate the credential-webhook module (go list -m): %w", exitDetail(err))
	}
	dir := strings.TrimSpace(string(out))
	if _, err := os.Stat(filepath.Join(dir, "manifests", "kustomization.yaml")); err != nil {
		return "", fmt.Errorf("harness: %s has no manifests/kustomization.yaml: %w", dir, err)
	}
	return dir, nil
}

var kubeBinaryNames = []string{"etcd", "kube-apiserver", "kube-controller-manager", "kubectl"}

func kubeBinaries(ctx context.Context, dir, root string, progress io.Writer) (string, error) {
	if dir == "" {
		dir = os.Getenv("KUBE_BINARIES")
	}
	if dir == "" {
		script := filepath.Join(root, "e2e", "tools", "k8s-binaries.sh")
		cmd := exec.CommandContext(ctx, "bash", script)
		cmd.Stderr = progress
		out, err := cmd.Output()
		if err != nil {
			return "", fmt.Errorf("harness: KUBE_BINARIES is not set and %s failed (%w); build the binaries with it, or point KUBE_BINARIES at a folder holding %s", script, exitDetail(err), strings.Join(kubeBinaryNames, ", "))
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		dir = strings.TrimSpace(lines[len(lines)-1])
	}
	for _, b := range kubeBinaryNames {
		if fi, err := os.Stat(filepath.Join(dir, b)); err != nil || fi.Mode()&0o111 == 0 {
			return "", fmt.Errorf("harness: %s is not an executable in the Kubernetes binaries folder %s (set KUBE_BINARIES or run e2e/tools/k8s-binaries.sh)", b, dir)
		}
	}
	return dir, nil
}

func webhookBinary(ctx context.Context, bin, root, dir string) (string, error) {
	if bin == "" {
		bin = os.Getenv("CREDENTIAL_WEBHOOK_BINARY")
	}
	if bin != "" {
		if _, err := os.Stat(bin); err != nil {
			return "", fmt.Errorf("harness: webhook binary: %w", err)
		}
		return bin, nil
	}
	out := filepath.Join(dir, "bin", "credential-webhook")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, ".")
	cmd.Dir = root
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("harness: go build of credential-webhook in %s: %w\n%s", root, err, stderr.String())
	}
	return out, nil
}

func exitDetail(err error) error {
	var ee *exec.ExitError
	if errors.As(err, &ee) && len(ee.Stderr) > 0 {
		return fmt.Errorf("%w: %s", err, strings.TrimSpace(string(ee.Stderr)))
	}
	return err
}

// ---------------------------------------------------------------------------------------------
// Control plane.

func (c *Cluster) startControlPlane(ctx context.Context, opts Options) error {
	pki := filepath.Join(c.Dir, "pki")
	if err := os.MkdirAll(pki, 0o700); err != nil {
		return fmt.Errorf("harness: %w", err)
	}
	ca, err := newCertAuthority("e2e-kubernetes-ca")
	if err != nil {
		return fmt.Errorf("harness: %w", err)
	}
	servingCert, servingKey, err := ca.issue(certSpec{commonName: "kube-apiserver",
		hosts: []string{"127.0.0.1", "localhost", "10.0.0.1", "kubernetes", "kubernetes.default", "kubernetes.default.svc"}})
	if err != nil {
		return fmt.Errorf("harness: %w", err)
	}
	adminCert, adminKey, err := ca.issue(certSpec{commonName: "e2e-admin", orgs: []string{"system:masters"}, client: true})
	if err != nil {
		return fmt.Errorf("harness: %w", err)
	}
	kcmCert, kcmKey, err := ca.issue(certSpec{commonName: "system:kube-controller-manager", client: true})
	if err != nil {
		return fmt.Errorf("harness: %w", err)
	}
	saKey, saPub, err := newServiceAccountKey()
	if err != nil {
		return fmt.Errorf("harness: %w", err)
	}
	f := func(name string) string { return filepath.Join(pki, name) }
	if err := writeFiles(map[string][]byte{
		f("ca.crt"): ca.pem, f("apiserver.crt"): servingCert, f("apiserver.key"): servingKey,
		f("admin.crt"): adminCert, f("admin.key"): adminKey, f("kcm.crt"): kcmCert, f("kcm.key"): kcmKey,
		f("sa.key"): saKey, f("sa.pub"): saPub,
	}); err != nil {
		return fmt.Errorf("harness: %w", err)
	}
	c.ServiceAccountKeyFile, c.ServiceAccountPublicKeyFile = f("sa.key"), f("sa.pub")

	ports, err := freePorts(3)
	if err != nil {
		return err
	}
	etcdClient := "http://127.0.0.1:" + strconv.Itoa(ports[0])
	etcdPeer := "http://127.0.0.1:" + strconv.Itoa(ports[1])
	c.APIServerURL = "https://127.0.0.1:" + strconv.Itoa(ports[2])
	c.Issuer = c.APIServerURL

	c.logf("starting etcd on %s", etcdClient)
	c.etcd, err = startProcess(processSpec{
		name: "etcd", bin: filepath.Join(c.Binaries, "etcd"), dir: c.Dir,
		logFile: filepath.Join(c.Dir, "etcd.log"),
		args: []string{
			"--name=e2e", "--data-dir=" + filepath.Join(c.Dir, "etcd"),
			"--listen-client-urls=" + etcdClient, "--advertise-client-urls=" + etcdClient,
			"--listen-peer-urls=" + etcdPeer, "--initial-advertise-peer-urls=" + etcdPeer,
			"--initial-cluster=e2e=" + etcdPeer,
			// Test data is thrown away; fsync only costs time on a shared disk.
			"--unsafe-no-fsync", "--log-level=warn",
		},
	})
	if err != nil {
		return err
	}
	if err := waitHTTP(ctx, c.etcd, etcdClient+"/health", nil, 60*time.Second); err != nil {
		return err
	}

	auditPolicy := filepath.Join(c.Dir, "audit-policy.yaml")
	if err := os.WriteFile(auditPolicy, []byte(auditPolicyYAML), 0o600); err != nil {
		return fmt.Errorf("harness: %w", err)
	}
	c.logf("starting kube-apiserver on %s", c.APIServerURL)
	args := []string{
		"--etcd-servers=" + etcdClient,
		"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(ports[2]),
		// The default reconciler would publish 127.0.0.1 as the endpoint of the kubernetes
		// Service and fight over it; nothing in these tests reaches the apiserver through it.
		"--endpoint-reconciler-type=none",
		"--cert-dir=" + filepath.Join(c.Dir, "apiserver-certs"),
		"--tls-cert-file=" + f("apiserver.crt"), "--tls-private-key-file=" + f("apiserver.key"),
		"--client-ca-file=" + f("ca.crt"),
		"--authorization-mode=Node,RBAC",
		"--service-account-issuer=" + c.Issuer,
		"--service-account-key-file=" + f("sa.pub"),
		"--service-account-signing-key-file=" + f("sa.key"),
		"--service-cluster-ip-range=10.0.0.0/24",
		"--audit-policy-file=" + auditPolicy,
		"--audit-log-path=" + filepath.Join(c.Dir, "audit.log"),
		"--audit-log-format=json",
		// Batch nothing, so a test reads its own audit events as soon as its request returned.
		"--audit-log-mode=blocking",
		"--profiling=false",
		"--v=2",
	}
	args = append(args, opts.APIServerArgs...)
	c.apiserver, err = startProcess(processSpec{
		name: "kube-apiserver", bin: filepath.Join(c.Binaries, "kube-apiserver"), dir: c.Dir, args: args,
		logFile: filepath.Join(c.Dir, "kube-apiserver.log"),
	})
	if err != nil {
		return err
	}

	c.AdminKubeconfig = filepath.Join(c.Dir, "admin.kubeconfig")
	if err := writeKubeconfig(c.AdminKubeconfig, c.APIServerURL, ca.pem, "e2e-admin", clientAuth{cert: f("admin.crt"), key: f("admin.key")}); err != nil {
		return err
	}
	if c.Config, err = clientcmd.BuildConfigFromFlags("", c.AdminKubeconfig); err != nil {
		return fmt.Errorf("harness: admin config: %w", err)
	}
	// Tests create objects quickly; the default 5 QPS would throttle them client-side.
	c.Config.QPS, c.Config.Burst = 200, 400
	if c.Client, err = kubernetes.NewForConfig(c.Config); err != nil {
		return fmt.Errorf("harness: admin client: %w", err)
	}
	if c.Dynamic, err = dynamic.NewForConfig(c.Config); err != nil {
		return fmt.Errorf("harness: dynamic client: %w", err)
	}
	tr, err := rest.TransportFor(c.Config)
	if err != nil {
		return fmt.Errorf("harness: admin transport: %w", err)
	}
	if err := waitHTTP(ctx, c.apiserver, c.APIServerURL+"/readyz", &http.Client{Transport: tr, Timeout: 5 * time.Second}, 120*time.Second); err != nil {
		return err
	}

	kcmConfig := filepath.Join(c.Dir, "kube-controller-manager.kubeconfig")
	if err := writeKubeconfig(kcmConfig, c.APIServerURL, ca.pem, "system:kube-controller-manager", clientAuth{cert: f("kcm.crt"), key: f("kcm.key")}); err != nil {
		return err
	}
	c.logf("starting kube-controller-manager")
	c.kcm, err = startProcess(processSpec{
		name: "kube-controller-manager", bin: filepath.Join(c.Binaries, "kube-controller-manager"), dir: c.Dir,
		logFile: filepath.Join(c.Dir, "kube-controller-manager.log"),
		args: []string{
			"--kubeconfig=" + kcmConfig,
			// No serving port: nothing scrapes it, and it would need delegated authn/authz.
			"--secure-port=0",
			"--leader-elect=false",
			// Each controller acts as its own ServiceAccount with its bootstrap RBAC role, as in
			// a real cluster: the job controller creates Pods as system:serviceaccount:kube-system:job-controller.
			"--use-service-account-credentials=true",
			"--controllers=" + strings.Join(controllers, ","),
			"--service-account-private-key-file=" + f("sa.key"),
			"--root-ca-file=" + f("ca.crt"),
			"--v=1",
		},
	})
	if err != nil {
		return err
	}
	// The serviceaccount controller creating the default namespace's default ServiceAccount
	// shows the controller manager is up and authorised.
	return c.waitFor(ctx, 90*time.Second, c.kcm, "kube-controller-manager to create default/default", func(ctx context.Context) (bool, error) {
		_, err := c.Client.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		return err == nil, err
	})
}

// controllers are the kube-controller-manager controllers the tests rely on: Jobs create Pods,
// namespaces get their default ServiceAccount and are emptied on deletion, owners' dependants
// are collected, the aggregated ClusterRoles (admin, edit, view) get their rules, and
// ValidatingAdmissionPolicies are type-checked (status.typeChecking, which applyManifests waits
// for).
var controllers = []string{
	"job-controller",
	"clusterrole-aggregation-controller",
	"serviceaccount-controller",
	"serviceaccount-token-controller",
	"garbage-collector-controller",
	"namespace-controller",
	"validatingadmissionpolicy-status-controller",
}

const auditPolicyYAML = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: None
    resources:
      - group: coordination.k8s.io
        resources: ["leases"]
      - group: ""
        resources: ["events"]
  - level: None
    nonResourceURLs: ["/healthz*", "/readyz*", "/livez*", "/version", "/openapi*", "/api*"]
  - level: Metadata
`

type clientAuth struct {
	cert, key string // client certificate files
	token     string
}

func writeKubeconfig(path, server string, caPEM []byte, user string, auth clientAuth) error {
	var b strings.Builder
	fmt.Fprintf(&b, "apiVersion: v1\nkind: Config\nclusters:\n- name: e2e\n  cluster:\n    server: %s\n    certificate-authority-data: %s\n", server, b64(caPEM))
	fmt.Fprintf(&b, "users:\n- name: %q\n  user:\n", user)
	if auth.token != "" {
		fmt.Fprintf(&b, "    token: %s\n", auth.token)
	} else {
		fmt.Fprintf(&b, "    client-certificate: %s\n    client-key: %s\n", auth.cert, auth.key)
	}
	fmt.Fprintf(&b, "contexts:\n- name: e2e\n  context:\n    cluster: e2e\n    user: %q\ncurrent-context: e2e\n", user)
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		return fmt.Errorf("harness: write kubeconfig: %w", err)
	}
	return nil
}

// ---------------------------------------------------------------------------------------------
// AWS.

func (c *Cluster) startAWS(ctx context.Context) error {
	c.logf("starting moto and the IAM proxy")
	c.motoLog = &logBuffer{}
	f, err := os.Create(filepath.Join(c.Dir, "moto.log"))
	if err != nil {
		return fmt.Errorf("harness: %w", err)
	}
	c.motoLog.file = f
	c.Moto, err = moto.StartProcess(ctx, c.motoLog)
	if err != nil {
		return fmt.Errorf("harness: moto (IAM and STS emulator): %w", err)
	}
	iamLog, err := os.Create(filepath.Join(c.Dir, "iamproxy.log"))
	if err != nil {
		return fmt.Errorf("harness: %w", err)
	}
	c.iamLog = iamLog
	c.IAM, err = iamproxy.New(c.Moto.Endpoint, iamproxy.Options{
		TokenKeyFile: c.ServiceAccountPublicKeyFile,
		Logger:       slog.New(slog.NewJSONHandler(iamLog, nil)),
	})
	if err != nil {
		return fmt.Errorf("harness: IAM proxy: %w", err)
	}
	if err := c.IAM.Listen("127.0.0.1:0"); err != nil {
		return fmt.Errorf("harness: IAM proxy: %w", err)
	}
	// The buckets the tests' ServiceAccounts name (BucketNames), so
	// the sweeper's bucket proof (--aws-bucket-check, write by default) passes for them.
	for _, b := range Buckets {
		if err := moto.CreateBucket(ctx, c.AWSConfig(), b, false); err != nil {
			return fmt.Errorf("harness: %w", err)
		}
	}
	return nil
}

// ---------------------------------------------------------------------------------------------
// Webhook certificates, identity.

func (c *Cluster) writeWebhookCerts(ctx context.Context) error {
	c.WebhookCertDir = filepath.Join(c.Dir, "webhook-certs")
	if err := os.MkdirAll(c.WebhookCertDir, 0o700); err != nil {
		return fmt.Errorf("harness: %w", err)
	}
	cmd := exec.CommandContext(ctx, c.WebhookBinary, "certs", "--dir", c.WebhookCertDir, "--hosts", "127.0.0.1,localhost")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("harness: %s certs: %w\n%s", c.WebhookBinary, err, out)
	}
	for _, name := range []string{"ca.crt", "tls.crt", "tls.key"} {
		if _, err := os.Stat(filepath.Join(c.WebhookCertDir, name)); err != nil {
			return fmt.Errorf("harness: credential-webhook certs did not write %s: %w", name, err)
		}
	}
	return nil
}

// writeWebhookKubeconfig gives the replicas the webhook's own ServiceAccount identity, with
// the RBAC from manifests/, through a token from the TokenRequest API.
func (c *Cluster) writeWebhookKubeconfig(ctx context.Context) error {
	token, err := c.Token(ctx, WebhookNamespace, WebhookServiceAccount, 24*time.Hour)
	if err != nil {
		return err
	}
	caPEM, err := os.ReadFile(filepath.Join(c.Dir, "pki", "ca.crt"))
	if err != nil {
		return fmt.Errorf("harness: %w", err)
	}
	c.WebhookKubeconfig = filepath.Join(c.Dir, "webhook.kubeconfig")
	return writeKubeconfig(c.WebhookKubeconfig, c.APIServerURL, caPEM, "system:serviceaccount:credential-webhook:credential-webhook", clientAuth{token: token})
}

// ---------------------------------------------------------------------------------------------
// Helpers.

func freePorts(n int) ([]int, error) {
	ls := make([]net.Listener, 0, n)
	defer func() {
		for _, l := range ls {
			_ = l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("harness: find a free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// waitHTTP polls url until it answers 200, the process exits, or timeout.
func waitHTTP(ctx context.Context, p *process, url string, client *http.Client, timeout time.Duration) error {
	if client == nil {
		client = &http.Client{Timeout: 2 * time.Second}
	}
	var last string
	err := waitUntil(ctx, timeout, p, func(ctx context.Context) (bool, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return false, err
		}
		resp, err := client.Do(req)
		if err != nil {
			last = err.Error()
			return false, nil
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
		_ = resp.Body.Close()
		last = fmt.Sprintf("HTTP %d: %s", resp.StatusCode, bytes.TrimSpace(body))
		return resp.StatusCode == http.StatusOK, nil
	})
	if err != nil {
		return fmt.Errorf("harness: %s not ready at %s (last answer: %s): %w", p.name, url, last, err)
	}
	return nil
}

func (c *Cluster) waitFor(ctx context.Context, timeout time.Duration, p *process, what string, cond func(context.Context) (bool, error)) error {
	if err := waitUntil(ctx, timeout, p, cond); err != nil {
		return fmt.Errorf("harness: waiting for %s: %w", what, err)
	}
	return nil
}

// waitUntil polls cond every 100 ms until it returns true, returns an error, p (optional)
// exits, or timeout passes.
func waitUntil(ctx context.Context, timeout time.Duration, p *process, cond func(context.Context) (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var exited <-chan struct{}
	if p != nil {
		exited = p.exited
	}
	var lastErr error
	for {
		ok, err := cond(ctx)
		if ok {
			return nil
		}
		if err != nil {
			lastErr = err
		}
		select {
		case <-exited:
			return p.exitError()
		case <-ctx.Done():
			if lastErr != nil {
				return fmt.Errorf("%w (last error: %v)", ctx.Err(), lastErr)
			}
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// readLines returns the lines of a log file that contain any of substrs (all lines if none).
func readLines(path string, substrs ...string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 8<<20)
	for sc.Scan() {
		line := sc.Text()
		if len(substrs) == 0 || containsAny(line, substrs) {
			out = append(out, line)
		}
	}
	return out, sc.Err()
}

func containsAny(s string, subs []string) bool {
	for _, sub := range subs {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

const dirPrefix = "credential-webhook-e2e-"

// removeStaleDirs deletes the folders of earlier runs whose test binary is gone and that are
// more than a day old: runs killed before their cleanup, and failed runs whose logs were kept
// for a post-mortem. Their processes died with the test binary (Pdeathsig); only files remain.
func removeStaleDirs() {
	matches, _ := filepath.Glob(filepath.Join(os.TempDir(), dirPrefix+"*"))
	for _, d := range matches {
		if fi, err := os.Stat(d); err != nil || time.Since(fi.ModTime()) < 24*time.Hour {
			continue
		}
		b, err := os.ReadFile(filepath.Join(d, "owner.pid"))
		if err != nil {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || pid <= 0 {
			continue
		}
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			_ = os.RemoveAll(d)
		}
	}
}
