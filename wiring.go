package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/rest"

	"go.klusters.dev/credential-webhook/access"
	"go.klusters.dev/credential-webhook/admission"
	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/jobs"
	"go.klusters.dev/credential-webhook/kube"
	"go.klusters.dev/credential-webhook/pods"
	awsp "go.klusters.dev/credential-webhook/providers/aws"
	"go.klusters.dev/credential-webhook/providers/azure"
	"go.klusters.dev/credential-webhook/sweeper"
	"go.klusters.dev/credential-webhook/sweeper/awscheck"
)

// deps are the shared things providers are built from.
type deps struct {
	log        *slog.Logger
	reg        prometheus.Registerer
	kube       kube.Client // nil in local mode
	restConfig *rest.Config
	self       map[string]bool
}

// wiring is what serve runs: the admission routes and the runnables (informers, writer,
// sweeper) that run beside the listener.
type wiring struct {
	routes     []admission.Route
	background []runnable
}

// runnable is a background loop serve runs until shutdown. An error ends the process (serve
// returns it, the container restarts): a replica whose sweeper or cache died would otherwise
// keep answering reviews while silently holding every Job until max-hold. untilDone marks a
// loop that must block until ctx ends, so returning early, even without an error, is a failure.
type runnable struct {
	name      string
	untilDone bool
	run       func(context.Context) error
}

// settings is providerConfig validated and parsed: everything build needs that a flag value can
// get wrong, found before anything starts, all problems reported together.
type settings struct {
	access     access.Policy
	seeds      awsp.Allowlist // AWS on when aws is true
	aws        bool
	issuer     string
	scopes     azure.Scopes // Azure on when azure is true
	azure      bool
	aksCluster *azure.ClusterID // the AKS identity binding is read from ARM when set
	podMissing pods.MissingPolicy
}

// maxCheckWorkers bounds --sweeper-check-workers: each worker may hold a minted token, an STS
// session and S3 connections at once, and every one of them a TokenRequest to the apiserver
// within --kube-api-qps.
const maxCheckWorkers = 256

// validateOnly is validate for callers that need only the verdict (serve, before starting).
func (p *providerConfig) validateOnly() error {
	_, err := p.validate()
	return err
}

// validate checks and parses the flag values; it makes no call and starts nothing, so it is
// table-tested on its own. The error lists every problem, each naming its flag.
func (p *providerConfig) validate() (settings, error) {
	var st settings
	var errs []error
	if p.sweeper && p.sweeperLease < 3*time.Second {
		// Under 3 s, renewals every 2/15 of it would hammer the apiserver and a slow renewal
		// would cost the leadership.
		errs = append(errs, fmt.Errorf("--sweeper-lease-duration %s: must be at least 3s", p.sweeperLease))
	}
	if p.sweeper && p.gcGrace < 10*time.Second {
		// An authenticated review writes IAM before the apiserver stores the ServiceAccount: a
		// shorter grace could collect the subject of one that is about to exist.
		errs = append(errs, fmt.Errorf("--gc-grace %s: must be at least 10s", p.gcGrace))
	}
	if p.sweeper && (p.checkWorkers < 1 || p.checkWorkers > maxCheckWorkers) {
		errs = append(errs, fmt.Errorf("--sweeper-check-workers %d: must be between 1 and %d", p.checkWorkers, maxCheckWorkers))
	}
	if p.gcEmptyRoleGrace < 0 {
		errs = append(errs, fmt.Errorf("--gc-empty-role-grace %s: must be 0 (keep empty roles) or positive", p.gcEmptyRoleGrace))
	}
	var err error
	if st.access, err = access.Parse(p.namespaces, p.requesters); err != nil {
		errs = append(errs, err)
	}
	if p.awsSeeds != "" {
		st.aws = true
		if st.seeds, err = awsp.ParseAllowlist(p.awsSeeds); err != nil {
			errs = append(errs, fmt.Errorf("--aws-seed-roles: %w", err))
		}
		if p.awsBoundary != "" {
			if _, err := awsp.ParsePolicyARN(p.awsBoundary); err != nil {
				errs = append(errs, fmt.Errorf("--aws-permissions-boundary: %w", err))
			}
		}
		if st.issuer, err = awsp.NormalizeIssuer(p.awsOIDCIssuer); err != nil {
			errs = append(errs, fmt.Errorf("--aws-oidc-issuer: %w", err))
		}
	}
	if p.azureScopes != "" {
		st.azure = true
		if st.scopes, err = azure.ParseScopes(p.azureScopes); err != nil {
			errs = append(errs, fmt.Errorf("--azure-allowed-scopes: %w", err))
		}
	}
	if p.azureAKSCluster != "" {
		c, err := azure.ParseClusterID(p.azureAKSCluster)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("--azure-aks-cluster: %w", err))
		case !st.azure:
			errs = append(errs, errors.New("--azure-aks-cluster is set but Azure is off (--azure-allowed-scopes is empty)"))
		default:
			st.aksCluster = &c
		}
	}
	if p.podIdentity {
		switch m := pods.MissingPolicy(p.podMissing); m {
		case pods.MissingAdmit, pods.MissingDeny:
			st.podMissing = m
		default:
			errs = append(errs, fmt.Errorf("--pod-missing-serviceaccount must be admit or deny, not %q", p.podMissing))
		}
	}
	return st, errors.Join(errs...)
}

// providerConfig holds the flags of the providers (AWS, Azure, Pods, Jobs).
type providerConfig struct {
	namespaces, requesters string
	leaseNamespace         string
	identity               string
	leaseDuration          time.Duration

	awsSeeds          string
	awsQuota          int
	awsBatchLinger    time.Duration
	roleCreationLimit int
	awsBoundary       string
	awsOIDCIssuer     string

	podIdentity bool
	pods        pods.Config
	podMissing  string

	sweeper             bool
	sweeperLease        time.Duration
	maxHold, gcInterval time.Duration
	gcGrace             time.Duration
	gcEmptyRoleGrace    time.Duration
	handoff             time.Duration
	checksInARow        int
	checkWorkers        int
	bucketCheck         awscheck.BucketCheck

	azureScopes, azureARMEndpoint, azureARMAudience string
	azureAKSCluster                                 string
	azurePositiveTTL, azureNegativeTTL              time.Duration
}

func (p *providerConfig) register(fs *flag.FlagSet) {
	fs.StringVar(&p.namespaces, "allowed-namespaces", "*", "comma-separated namespace globs whose ServiceAccounts may get cloud identities")
	fs.StringVar(&p.requesters, "allowed-requesters", "", "comma-separated requesters allowed to ask for cloud identities: user:NAME or group:NAME globs (a bare NAME is a user; * is anyone). Empty allows nobody: set it to the KubeStash operator's ServiceAccount")
	fs.StringVar(&p.leaseNamespace, "lease-namespace", os.Getenv("POD_NAMESPACE"), "namespace for the per-seed Leases and the sweeper's leader election (default $POD_NAMESPACE)")
	fs.StringVar(&p.identity, "identity", defaultIdentity(), "this replica's identity in Leases; must be unique per process (default $POD_NAME, else hostname-pid)")
	fs.DurationVar(&p.leaseDuration, "lease-duration", 30*time.Second, "how long a crashed replica's per-seed lock blocks others")

	fs.StringVar(&p.awsSeeds, "aws-seed-roles", "", "comma-separated seed role ARN globs that may be cloned (e.g. arn:aws:iam::123456789012:role/kubestash-*); empty disables AWS")
	fs.IntVar(&p.awsQuota, "aws-trust-policy-quota", 0, "trust policy size quota in characters; 0 reads AssumeRolePolicySizeQuota from iam:GetAccountSummary once (else 2048)")
	fs.DurationVar(&p.awsBatchLinger, "aws-batch-linger", awsp.DefaultBatchLinger, "during a burst of new ServiceAccounts, the writer holds back those that would leave a derived role part full (while others are written, or until more arrive) so that its trust policy is written once, full; none that has waited this long is held; 0 holds nothing")
	fs.IntVar(&p.roleCreationLimit, "role-creation-limit", awsp.DefaultRoleCreationLimit, "maximum derived roles per seed")
	fs.StringVar(&p.awsBoundary, "aws-permissions-boundary", "", "managed policy ARN every derived role carries as its permissions boundary; empty: the seed's own (a seed without one is refused)")
	fs.StringVar(&p.awsOIDCIssuer, "aws-oidc-issuer", "", "this cluster's OIDC issuer URL (e.g. https://oidc.eks.eu-west-1.amazonaws.com/id/ABC): only seed trust statements for its OIDC provider receive subjects; empty: every OIDC statement of the seed does")

	fs.BoolVar(&p.sweeper, "sweeper", true, "run the sweeper (one active replica by Lease): releases held Jobs, finishes pending ServiceAccounts, collects garbage")
	fs.DurationVar(&p.sweeperLease, "sweeper-lease-duration", sweeper.DefaultLeaseDuration, "how long the sweeper's leader Lease outlives a crashed leader (renewal deadline 2/3 of it, retries every 2/15); shorter fails over faster at the cost of more Lease writes")
	fs.DurationVar(&p.maxHold, "max-hold", sweeper.DefaultMaxHold, "release a held Job after this long even without credentials (with a Warning Event)")
	fs.IntVar(&p.checksInARow, "sweeper-checks-in-a-row", sweeper.DefaultChecksInARow, "successful credential checks in a row before a Job is released")
	fs.IntVar(&p.checkWorkers, "sweeper-check-workers", sweeper.DefaultWorkers, "held Jobs the sweeper leader checks at once. A check is mostly waiting on about ten round trips in a row (TokenRequest, iam:GetRole, the STS calls, three S3 requests per bucket with --aws-bucket-check=write), so a burst of Jobs is released at about this many divided by one check's duration per second; raise it for bursts of hundreds of Jobs")
	p.bucketCheck = awscheck.DefaultBucketCheck
	fs.Func("aws-bucket-check", "what the AWS readiness check proves, with the assumed role's credentials, on each bucket of "+annotations.BucketNames+" before a Job is released: write (put, read back and delete an object under "+awscheck.ReadinessPrefix+"), head (s3:HeadBucket) or off (default "+string(awscheck.DefaultBucketCheck)+")", func(v string) (err error) {
		p.bucketCheck, err = awscheck.ParseBucketCheck(v)
		return err
	})
	fs.DurationVar(&p.gcInterval, "gc-interval", sweeper.DefaultGCInterval, "how often the sweeper compares every derived role and binding with the ServiceAccounts that exist")
	fs.DurationVar(&p.gcGrace, "gc-grace", sweeper.DefaultGCGrace, "how long a ServiceAccount must be gone before its cloud subjects are removed (a delete-and-recreate within it keeps them)")
	fs.DurationVar(&p.gcEmptyRoleGrace, "gc-empty-role-grace", awsp.DefaultEmptyRoleGrace, "how long a derived IAM role must have listed no ServiceAccount before garbage collection (every --gc-interval) deletes it; 0 keeps empty roles")
	fs.DurationVar(&p.handoff, "writer-handoff", sweeper.DefaultHandoff, "how long the sweeper leader's finisher leaves a pending ServiceAccount to its writer (with --sweeper=false: to the replica that planned it) before retrying it, with backoff")
	fs.BoolVar(&p.podIdentity, "aws-inject-pod-identity", false, "inject IRSA credentials (env and a projected token) into Pods whose ServiceAccount has eks.amazonaws.com/role-arn, for clusters without the EKS pod-identity webhook")
	fs.StringVar(&p.pods.Region, "aws-region", "", "AWS_REGION and AWS_DEFAULT_REGION injected into Pods (when absent)")
	fs.BoolVar(&p.pods.RegionalSTS, "aws-sts-regional-endpoints", true, "inject AWS_STS_REGIONAL_ENDPOINTS=regional into Pods")
	fs.Int64Var(&p.pods.DefaultTokenExpiration, "aws-token-expiration", pods.DefaultTokenExpiration, "projected token lifetime in seconds (never under 600)")
	p.pods.ExpirationJitter = pods.DefaultExpirationJitter
	fs.Func("aws-token-expiration-jitter", fmt.Sprintf("largest fraction (0 to %g) of --aws-token-expiration taken off at random per Pod, so tokens of Pods started together do not all refresh at once; never applied to an eks.amazonaws.com/token-expiration annotation (default %g)", pods.MaxExpirationJitter, pods.DefaultExpirationJitter), func(v string) (err error) {
		p.pods.ExpirationJitter, err = pods.ParseJitter(v)
		return err
	})
	fs.Func("aws-token-audience", "audience of the projected token injected into Pods whose ServiceAccount has no eks.amazonaws.com/audience (default "+pods.DefaultAudience+")", func(v string) (err error) {
		p.pods.Audience, err = pods.ParseAudience(v)
		return err
	})
	fs.Func("aws-token-mount-path", "directory of the projected token in Pods' Linux containers; Windows containers get it under C:\\ (default "+pods.TokenMountPath+")", func(v string) (err error) {
		p.pods.MountPath, err = pods.ParseMountPath(v)
		return err
	})
	fs.StringVar(&p.podMissing, "pod-missing-serviceaccount", "admit", "a Pod whose ServiceAccount cannot be found, or is still not in its IAM role after --pod-grant-wait: admit (without credentials, or with the planned role, and a warning) or deny (the controller retries; a Pod admitted without credentials is never fixed later)")
	fs.DurationVar(&p.pods.GrantWait, "pod-grant-wait", pods.DefaultGrantWait, "how long a Pod's review waits for its ServiceAccount, created moments before, to be put in its IAM role (until then the role ARN is only planned and may change); at most half the review's remaining budget (about 2s with the chart's 5s webhook timeout); 0: no wait")
	fs.StringVar(&p.pods.SidecarImage, "sidecar-image", "", "this binary's image, run as the aws-credentials sidecar for Pods that opt in; empty disables the sidecar")
	fs.StringVar(&p.azureScopes, "azure-allowed-scopes", "", "comma-separated ARM scopes whose managed identities may be used: /subscriptions/<id> or /subscriptions/<id>/resourceGroups/<rg> (* globs allowed); empty disables Azure")
	fs.StringVar(&p.azureARMEndpoint, "azure-arm-endpoint", "", "Azure Resource Manager endpoint; empty: the public cloud")
	fs.StringVar(&p.azureARMAudience, "azure-arm-audience", "", "token audience for --azure-arm-endpoint; empty: the public cloud's")
	fs.DurationVar(&p.azurePositiveTTL, "azure-identity-cache-ttl", time.Hour, "how long a resolved managed identity is cached (ARM throttles identity reads)")
	fs.DurationVar(&p.azureNegativeTTL, "azure-identity-negative-ttl", 30*time.Second, "how long a missing managed identity is cached")
	fs.StringVar(&p.azureAKSCluster, "azure-aks-cluster", "", "ARM resource ID of this AKS cluster (/subscriptions/<id>/resourceGroups/<rg>/providers/Microsoft.ContainerService/managedClusters/<name>): before releasing a held Job the sweeper also reads from ARM that the cluster has an identity binding for the managed identity (needs read on the cluster, a preview ARM API); empty: only the use-mi-<clientID> RBAC binding is checked")
}

func defaultIdentity() string {
	if n := os.Getenv("POD_NAME"); n != "" {
		return n
	}
	h, err := os.Hostname()
	if err != nil || h == "" {
		h = "credential-webhook"
	}
	return fmt.Sprintf("%s-%d", h, os.Getpid())
}

func (p *providerConfig) build(ctx context.Context, d deps) (*wiring, error) {
	st, err := p.validate()
	if err != nil {
		return nil, err
	}
	policy := st.access
	guard := admission.OwnAnnotationsGuard{Self: d.self}
	saPlugins := []admission.Plugin{guard}
	jobPlugins := []admission.Plugin{guard}
	var podPlugins []admission.Plugin

	w := &wiring{}
	// One ServiceAccount cache for every route that reads a Job's or Pod's ServiceAccount.
	var sas *kube.ServiceAccounts
	strip := sweeper.NewStripper() // one string table for every cache
	if d.kube != nil {
		sas = kube.NewServiceAccounts(d.kube, 0, d.log)
		_ = sas.Informer.SetTransform(strip.ServiceAccount) // cache only what is read (issue 16)
		w.background = append(w.background, runnable{name: "ServiceAccount cache", run: func(ctx context.Context) error {
			sas.Start(ctx)
			if !sas.WaitForSync(ctx) {
				d.log.Warn("ServiceAccount cache did not sync before shutdown")
			}
			return nil
		}})
	}
	// What the sweeper needs from each provider; filled as providers are enabled.
	ready := sweeper.NewReadyCache(sweeper.DefaultReadyTTL)
	sw := sweeper.Deps{Ready: ready, Registerer: d.reg, Strip: strip}
	var clouds []sweeper.Cloud
	// The writer is made below (it needs the clouds); admission tells it what it planned.
	var planned func(namespace, name string)

	if st.aws {
		seeds, issuer := st.seeds, st.issuer
		if issuer == "" {
			d.log.Warn("--aws-oidc-issuer is not set: every OIDC trust statement of a seed receives every ServiceAccount subject, so derived roles trust them in every cluster the seed names; set it to this cluster's issuer URL")
		}
		// The SDK's standard configuration: AWS_REGION, AWS_ENDPOINT_URL, the default credential
		// chain (in a cluster, the webhook's own IRSA or Pod Identity).
		cfg, err := config.LoadDefaultConfig(ctx)
		if err != nil {
			return nil, fmt.Errorf("AWS configuration: %w", err)
		}
		iamClient := awsp.NewIAMClient(cfg, awsp.CallMetrics(d.reg))
		locker := p.locker(d) // the one per-seed lock of this process: the assigner's, primed by the sweeper below
		assigner := awsp.NewAssigner(iamClient, awsp.NewSeedGuard(locker, seeds.Allows, iamClient, sweeper.SeedLeaseExists(d.kube, p.leaseNamespace)), awsp.Config{Seeds: seeds, Quota: p.awsQuota, RoleCreationLimit: p.roleCreationLimit, PermissionsBoundary: p.awsBoundary, OIDCIssuer: issuer, BatchLinger: p.awsBatchLinger}, d.log)
		if d.reg != nil {
			d.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
				Name: "credential_webhook_assign_rounds_total",
				Help: "Placement rounds of the writer's lock sessions: a session holds the seed's lock through a burst and places what queued while its previous round wrote.",
			}, func() float64 { return float64(assigner.Rounds()) }))
		}
		saPlugins = append(saPlugins, &awsp.Plugin{Assigner: assigner, Seeds: seeds, Access: policy, Metrics: awsp.NewMetrics(d.reg)})
		clouds = append(clouds, awsp.Cloud{Assigner: assigner})
		if d.kube != nil {
			check := awscheck.New(awscheck.IAMRoleLister{IAM: iamClient}, awscheck.KubeTokens{Client: d.kube}, sts.NewFromConfig(cfg), p.checksInARow)
			if p.bucketCheck != awscheck.BucketCheckOff {
				// Region and endpoint of cfg (AWS_ENDPOINT_URL_S3 honoured), never its
				// credentials: the bucket proof signs with the Job's role only.
				check.BucketCheck, check.S3, check.BucketMetrics = p.bucketCheck, awscheck.NewS3Client(cfg), awscheck.NewBucketMetrics(d.reg)
			}
			sw.AWS = check
			sw.Collectors = append(sw.Collectors, awsp.Collector{Assigner: assigner, Seeds: p.seedsInUse(d, sas), EmptyRoleGrace: p.gcEmptyRoleGrace, Metrics: awsp.NewGCMetrics(d.reg)})
			sw.SeedLeaseAllowed = seeds.Allows
			if ll, ok := locker.(*kube.LeaseLocker); ok {
				// The leader's list of lock Leases spares its first lock session of each seed a Get.
				sw.SeedLeasesListed = ll.Observe
			}
			sw.Usage = assigner // the leader's per-seed gauges, from its role cache
		}
	}

	if st.azure {
		scopes := st.scopes
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
			binder := &azure.BindingBatcher{CS: d.kube}
			plugin.Binder = binder
			jp.ServiceAccounts = sas
			checker := sweeper.AzureChecker{Bindings: azure.BindingLister{CS: d.kube}}
			if st.aksCluster != nil {
				lister, err := azure.NewARMIdentityBindings(*st.aksCluster, cred, armOpts)
				if err != nil {
					return nil, err
				}
				checker.ARM = &azure.IdentityBindingProver{Cluster: *st.aksCluster, Identities: resolver, Bindings: lister, Log: d.log}
			} else {
				d.log.Info("the AKS identity binding in ARM is not checked before held Jobs are released (--azure-aks-cluster is empty); only the use-mi-<clientID> RBAC binding is")
			}
			sw.Azure = checker
			sw.Collectors = append(sw.Collectors, azure.Collector{CS: d.kube})
			clouds = append(clouds, azure.Cloud{Resolver: resolver, Binder: binder, Scopes: scopes})
		}
		saPlugins = append(saPlugins, plugin)
		jobPlugins = append(jobPlugins, jp)
	}

	if sas != nil {
		// Hold KubeStash Jobs until their credentials are proven (no cloud call on this path).
		jp := jobs.NewPlugin(sas, ready)
		jp.Self = d.self // only this server releases a Job it holds (hold.KeepHeld)
		jobPlugins = append(jobPlugins, jp)
	} else {
		d.log.Warn("Job holding needs the Kubernetes API: KubeStash Jobs are not held in local mode")
	}

	if p.podIdentity {
		p.pods.MissingServiceAccount = st.podMissing
		if p.pods.GrantWait == 0 {
			p.pods.GrantWait = -1 // the flag's 0 is no wait; the Config's zero value is the default
		}
		if sas == nil {
			return nil, fmt.Errorf("--aws-inject-pod-identity needs the Kubernetes API (--kubeconfig or in-cluster) to read ServiceAccounts")
		}
		podPlugins = append(podPlugins, &pods.Plugin{ServiceAccounts: sas, Config: p.pods, Metrics: pods.NewMetrics(d.reg)})
	}

	// Admission plans; the writer (every replica) and the sweeper (the leader) write. Without the
	// Kubernetes API nothing can be seen persisted: only authenticated reviews write then.
	if d.kube != nil {
		sw.Clouds = clouds
		sw.Namespaces = policy.NamespaceAllowed
		if sas != nil {
			sw.ServiceAccounts = sas.Informer
		}
		s := sweeper.New(d.kube, sweeper.Config{
			MaxHold: p.maxHold, ChecksInARow: p.checksInARow, GCInterval: p.gcInterval, GCGrace: p.gcGrace, Handoff: p.handoff,
			Workers:   p.checkWorkers,
			Namespace: p.leaseNamespace, Identity: p.identity,
			LeaseDuration: p.sweeperLease, RenewDeadline: p.sweeperLease * 2 / 3, RetryPeriod: p.sweeperLease * 2 / 15,
		}, sw, d.log)
		planned = s.Planned
		w.background = append(w.background, runnable{name: "writer", run: s.RunWriter})
		switch {
		case !p.sweeper:
			d.log.Info("sweeper disabled (--sweeper=false): pending ServiceAccounts another replica planned are not finished, held Jobs are not released")
		case p.leaseNamespace == "":
			d.log.Warn("sweeper not started: it needs --lease-namespace")
		default:
			w.background = append(w.background, runnable{name: "sweeper", untilDone: true, run: s.Run})
		}
	} else {
		d.log.Warn("no Kubernetes API: admission only plans; IAM and RBAC are written only for reviews authenticated by a client certificate")
	}
	saPlugins = append(saPlugins, admission.PendingMarker{Planned: planned})

	w.routes = []admission.Route{
		// The apiserver refuses annotations over 256 KiB in all; a ServiceAccount over 512 KiB can
		// only be an attack on the decoders.
		{Path: "/mutate/serviceaccounts", Name: "serviceaccounts", Group: "", Kind: "ServiceAccount", Plugins: saPlugins, MaxObjectBytes: 512 << 10},
		// A Job's review is small too (KubeStash's are a few KiB). A Pod's may be large, but no
		// bigger than the apiserver's 3 MiB request limit; its body limit bounds memory with
		// --max-inflight-reviews.
		{Path: "/mutate/jobs", Name: "jobs", Group: "batch", Kind: "Job", Plugins: jobPlugins, MaxObjectBytes: 512 << 10},
		{Path: "/mutate/pods", Name: "pods", Group: "", Kind: "Pod", Plugins: podPlugins, MaxObjectBytes: 3 << 20, MaxBodyBytes: 4 << 20},
	}
	return w, nil
}

// seedsInUse lists the seeds the AWS garbage collector visits: those this server holds a lock
// Lease for, that is wrote for (the collector keeps those still configured). Never a seed read
// from a ServiceAccount's annotation: anyone who may annotate one could make every collection
// read the roles of any seed the allowlist matches (issue 16).
func (p *providerConfig) seedsInUse(d deps, _ *kube.ServiceAccounts) func(context.Context) ([]string, error) {
	return func(ctx context.Context) ([]string, error) {
		if p.leaseNamespace == "" {
			return nil, nil
		}
		return kube.LeaseKeys(ctx, d.kube, p.leaseNamespace)
	}
}

// The writer renews a seed's Lease through a burst (awsp.Renewer): a change of either signature
// must not quietly turn renewals off.
var _ awsp.Renewer = (*kube.LeaseLocker)(nil)

// locker returns the per-seed lock: a Kubernetes Lease shared by all replicas, or an in-process
// lock when there is no Kubernetes API (local runs, one process).
func (p *providerConfig) locker(d deps) awsp.Locker {
	if d.kube == nil || p.leaseNamespace == "" {
		d.log.Warn("per-seed locks are in-process only (no Kubernetes API or no --lease-namespace): run a single replica")
		return awsp.NewLocalLocker()
	}
	l := kube.NewLeaseLocker(d.kube, p.leaseNamespace, p.identity, p.leaseDuration, d.log)
	if d.reg != nil {
		d.reg.MustRegister(
			prometheus.NewCounterFunc(prometheus.CounterOpts{
				Name: "credential_webhook_lock_sessions_total",
				Help: "Per-seed lock Leases this replica took or renewed (lock sessions: a bounded hold of the lock, begun by a take or a renewal).",
			}, func() float64 { n, _ := l.Stats(); return float64(n) }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{
				Name: "credential_webhook_lock_api_calls_total",
				Help: "Kubernetes API calls on per-seed lock Leases (get, create, update), waiting for another replica's included: divided by credential_webhook_lock_sessions_total, what a lock session costs the apiserver.",
			}, func() float64 { _, n := l.Stats(); return float64(n) }),
		)
	}
	return l
}
