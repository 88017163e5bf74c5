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
	"go.klusters.dev/credential-webhook/pods"
	awsp "go.klusters.dev/credential-webhook/providers/aws"
	"go.klusters.dev/credential-webhook/providers/azure"
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

	podIdentity bool
	pods        pods.Config
	podMissing  string

	azureScopes, azureARMEndpoint, azureARMAudience string
	azurePositiveTTL, azureNegativeTTL              time.Duration
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

	fs.BoolVar(&p.podIdentity, "aws-inject-pod-identity", false, "inject IRSA credentials (env and a projected token) into Pods whose ServiceAccount has eks.amazonaws.com/role-arn, for clusters without the EKS pod-identity webhook")
	fs.StringVar(&p.pods.Region, "aws-region", "", "AWS_REGION and AWS_DEFAULT_REGION injected into Pods (when absent)")
	fs.BoolVar(&p.pods.RegionalSTS, "aws-sts-regional-endpoints", true, "inject AWS_STS_REGIONAL_ENDPOINTS=regional into Pods")
	fs.Int64Var(&p.pods.DefaultTokenExpiration, "aws-token-expiration", pods.DefaultTokenExpiration, "projected token lifetime in seconds (never under 600)")
	fs.StringVar(&p.podMissing, "pod-missing-serviceaccount", "admit", "a Pod whose ServiceAccount cannot be found: admit (unchanged, with a warning) or deny (the controller retries; a Pod admitted without credentials is never fixed later)")
	fs.StringVar(&p.pods.SidecarImage, "sidecar-image", "", "this binary's image, run as the aws-credentials sidecar for Pods that opt in; empty disables the sidecar")
	fs.StringVar(&p.azureScopes, "azure-allowed-scopes", "", "comma-separated ARM scopes whose managed identities may be used: /subscriptions/<id> or /subscriptions/<id>/resourceGroups/<rg> (* globs allowed); empty disables Azure")
	fs.StringVar(&p.azureARMEndpoint, "azure-arm-endpoint", "", "Azure Resource Manager endpoint; empty: the public cloud")
	fs.StringVar(&p.azureARMAudience, "azure-arm-audience", "", "token audience for --azure-arm-endpoint; empty: the public cloud's")
	fs.DurationVar(&p.azurePositiveTTL, "azure-identity-cache-ttl", time.Hour, "how long a resolved managed identity is cached (ARM throttles identity reads)")
	fs.DurationVar(&p.azureNegativeTTL, "azure-identity-negative-ttl", 30*time.Second, "how long a missing managed identity is cached")
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

	w := &wiring{}
	// One ServiceAccount cache for every route that reads a Job's or Pod's ServiceAccount.
	var sas *kube.ServiceAccounts
	if d.kube != nil {
		sas = kube.NewServiceAccounts(d.kube, 0, d.log)
		w.background = append(w.background, func(ctx context.Context) {
			sas.Start(ctx)
			if !sas.WaitForSync(ctx) {
				d.log.Warn("ServiceAccount cache did not sync before shutdown")
			}
		})
	}
	jobPlugins := []admission.Plugin{guard}

	if p.azureScopes != "" {
		scopes, err := azure.ParseScopes(p.azureScopes)
		if err != nil {
			return nil, fmt.Errorf("--azure-allowed-scopes: %w", err)
		}
		armOpts := azure.ClientOptions(p.azureARMEndpoint, p.azureARMAudience)
		cred, kind, err := azure.NewCredential(armOpts.ClientOptions)
		if err != nil {
			return nil, err
		}
		d.log.Info("azure credential", "kind", string(kind), "armEndpoint", p.azureARMEndpoint)
		resolver, err := azure.NewResolver(cred, armOpts, azure.ResolverConfig{PositiveTTL: p.azurePositiveTTL, NegativeTTL: p.azureNegativeTTL, Log: d.log})
		if err != nil {
			return nil, err
		}
		plugin := &azure.ServiceAccountPlugin{Resolver: resolver, Scopes: scopes, Access: policy}
		jp := &azure.JobPlugin{}
		if d.kube != nil {
			plugin.Binder = azure.KubeBinder{CS: d.kube}
			jp.ServiceAccounts = sas
		}
		saPlugins = append(saPlugins, plugin)
		jobPlugins = append(jobPlugins, jp)
	}

	var podPlugins []admission.Plugin
	if p.podIdentity {
		switch pods.MissingPolicy(p.podMissing) {
		case pods.MissingAdmit, pods.MissingDeny:
			p.pods.MissingServiceAccount = pods.MissingPolicy(p.podMissing)
		default:
			return nil, fmt.Errorf("--pod-missing-serviceaccount must be admit or deny, not %q", p.podMissing)
		}
		if sas == nil {
			return nil, fmt.Errorf("--aws-inject-pod-identity needs the Kubernetes API (--kubeconfig or in-cluster) to read ServiceAccounts")
		}
		podPlugins = append(podPlugins, pods.NewPlugin(sas, p.pods))
	}

	w.routes = []admission.Route{
		{Path: "/mutate/serviceaccounts", Name: "serviceaccounts", Group: "", Kind: "ServiceAccount", Plugins: saPlugins},
		{Path: "/mutate/jobs", Name: "jobs", Group: "batch", Kind: "Job", Plugins: jobPlugins},
		{Path: "/mutate/pods", Name: "pods", Group: "", Kind: "Pod", Plugins: podPlugins},
	}
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
