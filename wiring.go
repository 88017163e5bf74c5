package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"go.klusters.dev/credential-webhook/access"
	"go.klusters.dev/credential-webhook/admission"
	"go.klusters.dev/credential-webhook/kube"
	awsp "go.klusters.dev/credential-webhook/providers/aws"
)

// deps are the shared things providers are built from.
type deps struct {
	log        *slog.Logger
	reg        prometheus.Registerer
	kube       kubernetes.Interface // nil in local mode
	restConfig *rest.Config
	self       map[string]bool
}

// wiring is what serve runs: the admission routes and background loops (informers, sweeper).
type wiring struct {
	routes     []admission.Route
	background []func(context.Context)
}

// providerConfig holds the flags of the providers (AWS, Azure, Pods, Jobs).
type providerConfig struct {
	namespaces, requesters string
	leaseNamespace         string
	identity               string
	leaseDuration          time.Duration

	awsSeeds          string
	awsQuota          int
	roleCreationLimit int
}

func (p *providerConfig) register(fs *flag.FlagSet) {
	fs.StringVar(&p.namespaces, "allowed-namespaces", "*", "comma-separated namespace globs whose ServiceAccounts may get cloud identities")
	fs.StringVar(&p.requesters, "allowed-requesters", "", "comma-separated requesters allowed to ask for cloud identities: user:NAME or group:NAME globs (a bare NAME is a user; * is anyone). Empty allows nobody: set it to the KubeStash operator's ServiceAccount")
	fs.StringVar(&p.leaseNamespace, "lease-namespace", os.Getenv("POD_NAMESPACE"), "namespace for the per-seed Leases and the sweeper's leader election (default $POD_NAMESPACE)")
	fs.StringVar(&p.identity, "identity", hostnameOr("credential-webhook"), "this replica's identity in Leases (default the Pod name)")
	fs.DurationVar(&p.leaseDuration, "lease-duration", 30*time.Second, "how long a crashed replica's per-seed lock blocks others")

	fs.StringVar(&p.awsSeeds, "aws-seed-roles", "", "comma-separated seed role ARN globs that may be cloned (e.g. arn:aws:iam::123456789012:role/kubestash-*); empty disables AWS")
	fs.IntVar(&p.awsQuota, "aws-trust-policy-quota", 0, "trust policy size quota in characters; 0 reads AssumeRolePolicySizeQuota from iam:GetAccountSummary once (else 2048)")
	fs.IntVar(&p.roleCreationLimit, "role-creation-limit", awsp.DefaultRoleCreationLimit, "maximum derived roles per seed")
}

func hostnameOr(def string) string {
	if h, err := os.Hostname(); err == nil && h != "" {
		return h
	}
	return def
}

func (p *providerConfig) build(ctx context.Context, d deps) (*wiring, error) {
	policy, err := access.Parse(p.namespaces, p.requesters)
	if err != nil {
		return nil, err
	}
	guard := admission.OwnAnnotationsGuard{Self: d.self}
	saPlugins := []admission.Plugin{guard}

	if p.awsSeeds != "" {
		seeds, err := awsp.ParseAllowlist(p.awsSeeds)
		if err != nil {
			return nil, fmt.Errorf("--aws-seed-roles: %w", err)
		}
		// The SDK's standard configuration: AWS_REGION, AWS_ENDPOINT_URL, the default credential
		// chain (in a cluster, the webhook's own IRSA or Pod Identity).
		cfg, err := config.LoadDefaultConfig(ctx)
		if err != nil {
			return nil, fmt.Errorf("AWS configuration: %w", err)
		}
		iamClient := awsp.NewIAMClient(cfg, awsp.CallMetrics(d.reg))
		assigner := awsp.NewAssigner(iamClient, p.locker(d), awsp.Config{Seeds: seeds, Quota: p.awsQuota, RoleCreationLimit: p.roleCreationLimit}, d.log)
		saPlugins = append(saPlugins, &awsp.Plugin{Assigner: assigner, Seeds: seeds, Access: policy, Metrics: awsp.NewMetrics(d.reg)})
	}

	w := &wiring{routes: []admission.Route{
		{Path: "/mutate/serviceaccounts", Name: "serviceaccounts", Group: "", Kind: "ServiceAccount", Plugins: saPlugins},
		{Path: "/mutate/jobs", Name: "jobs", Group: "batch", Kind: "Job", Plugins: []admission.Plugin{guard}},
		{Path: "/mutate/pods", Name: "pods", Group: "", Kind: "Pod"},
	}}
	return w, nil
}

// locker returns the per-seed lock: a Kubernetes Lease shared by all replicas, or an in-process
// lock when there is no Kubernetes API (local runs, one process).
func (p *providerConfig) locker(d deps) awsp.Locker {
	if d.kube == nil || p.leaseNamespace == "" {
		d.log.Warn("per-seed locks are in-process only (no Kubernetes API or no --lease-namespace): run a single replica")
		return awsp.NewLocalLocker()
	}
	return kube.NewLeaseLocker(d.kube, p.leaseNamespace, p.identity, p.leaseDuration, d.log)
}
