package main

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// The sweeper's leader-election timings are derived from one flag; too short a Lease or GC grace
// is refused before anything starts, and a disabled sweeper ignores both.
func TestSweeperLeaseDurationValidated(t *testing.T) {
	for _, tc := range []struct {
		name    string
		sweeper bool
		lease   time.Duration
		grace   time.Duration
		wantErr string
	}{
		{"too short", true, 2 * time.Second, time.Minute, "--sweeper-lease-duration 2s: must be at least 3s"},
		{"zero", true, 0, time.Minute, "--sweeper-lease-duration 0s"},
		{"minimum", true, 3 * time.Second, 10 * time.Second, ""},
		{"grace too short", true, 15 * time.Second, 5 * time.Second, "--gc-grace 5s: must be at least 10s"},
		{"grace zero", true, 15 * time.Second, 0, "--gc-grace 0s"},
		{"sweeper off ignores them", false, time.Second, 0, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// No provider and no cluster: nothing to start, only the flags are checked.
			p := providerConfig{namespaces: "*", sweeper: tc.sweeper, sweeperLease: tc.lease, gcGrace: tc.grace, checkWorkers: 8}
			_, err := p.build(context.Background(), deps{log: slog.New(slog.DiscardHandler), reg: prometheus.NewRegistry()})
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("build: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("build error = %v, want %q", err, tc.wantErr)
			}
		})
	}
}

// validate finds every bad flag value before anything starts, each error naming its flag, all of
// them at once; good values parse into the settings build uses.
func TestProviderConfigValidate(t *testing.T) {
	good := func() providerConfig {
		return providerConfig{namespaces: "*", requesters: "system:serviceaccount:kubestash:op", sweeper: true,
			sweeperLease: 15 * time.Second, gcGrace: time.Minute, checkWorkers: 8}
	}
	for _, tc := range []struct {
		name   string
		change func(*providerConfig)
		want   []string // substrings of the error; none: valid
	}{
		{"defaults", func(*providerConfig) {}, nil},
		{"aws on", func(p *providerConfig) {
			p.awsSeeds = "arn:aws:iam::123456789012:role/kubestash-*"
			p.awsOIDCIssuer = "https://oidc.eks.eu-west-1.amazonaws.com/id/ABC"
		}, nil},
		{"seed glob of another dialect", func(p *providerConfig) { p.awsSeeds = "arn:aws:iam::123456789012:role/kubestash-?" }, []string{"--aws-seed-roles"}},
		{"seed not an ARN", func(p *providerConfig) { p.awsSeeds = "kubestash" }, []string{"--aws-seed-roles"}},
		{"boundary not a policy ARN", func(p *providerConfig) {
			p.awsSeeds = "arn:aws:iam::123456789012:role/kubestash-*"
			p.awsBoundary = "arn:aws:iam::123456789012:role/x"
		}, []string{"--aws-permissions-boundary"}},
		{"issuer not https", func(p *providerConfig) {
			p.awsSeeds = "arn:aws:iam::123456789012:role/kubestash-*"
			p.awsOIDCIssuer = "http://oidc.example"
		}, []string{"--aws-oidc-issuer"}},
		{"boundary ignored without AWS", func(p *providerConfig) { p.awsBoundary = "nonsense" }, nil},
		{"azure scope", func(p *providerConfig) { p.azureScopes = "*" }, []string{"--azure-allowed-scopes"}},
		{"aks cluster", func(p *providerConfig) {
			p.azureScopes = "/subscriptions/6c1e3b5a-93f4-4d2b-8a7e-2f1c9d0b4e57"
			p.azureAKSCluster = "/subscriptions/6c1e3b5a-93f4-4d2b-8a7e-2f1c9d0b4e57/resourceGroups/aks/providers/Microsoft.ContainerService/managedClusters/prod"
		}, nil},
		{"aks cluster not a cluster", func(p *providerConfig) {
			p.azureScopes = "/subscriptions/6c1e3b5a-93f4-4d2b-8a7e-2f1c9d0b4e57"
			p.azureAKSCluster = "/subscriptions/6c1e3b5a-93f4-4d2b-8a7e-2f1c9d0b4e57/resourceGroups/aks"
		}, []string{"--azure-aks-cluster"}},
		{"aks cluster without Azure", func(p *providerConfig) {
			p.azureAKSCluster = "/subscriptions/6c1e3b5a-93f4-4d2b-8a7e-2f1c9d0b4e57/resourceGroups/aks/providers/Microsoft.ContainerService/managedClusters/prod"
		}, []string{"--azure-aks-cluster", "Azure is off"}},
		{"namespace glob of another dialect", func(p *providerConfig) { p.namespaces = "team-[ab]" }, []string{"--allowed-namespaces"}},
		{"pod policy", func(p *providerConfig) { p.podIdentity, p.podMissing = true, "maybe" }, []string{"--pod-missing-serviceaccount"}},
		{"negative empty-role grace", func(p *providerConfig) { p.gcEmptyRoleGrace = -time.Second }, []string{"--gc-empty-role-grace"}},
		{"no check workers", func(p *providerConfig) { p.checkWorkers = 0 }, []string{"--sweeper-check-workers"}},
		{"too many check workers", func(p *providerConfig) { p.checkWorkers = 257 }, []string{"--sweeper-check-workers", "256"}},
		{"most check workers", func(p *providerConfig) { p.checkWorkers = 256 }, nil},
		{"check workers ignored without the sweeper", func(p *providerConfig) { p.sweeper, p.checkWorkers = false, 0 }, nil},
		{"pod policy ignored without injection", func(p *providerConfig) { p.podMissing = "maybe" }, nil},
		{"everything wrong at once", func(p *providerConfig) {
			p.sweeperLease, p.gcGrace, p.namespaces, p.azureScopes = time.Second, time.Second, "a?", "*"
		}, []string{"--sweeper-lease-duration", "--gc-grace", "--allowed-namespaces", "--azure-allowed-scopes"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := good()
			tc.change(&p)
			st, err := p.validate()
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("validate: %v", err)
				}
				if st.aws != (p.awsSeeds != "") || st.azure != (p.azureScopes != "") || (st.aksCluster != nil) != (p.azureAKSCluster != "") {
					t.Fatalf("settings %+v do not follow the flags", st)
				}
				return
			}
			if err == nil {
				t.Fatal("validate accepted it")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not name %s", err, w)
				}
			}
		})
	}
}

func TestServeConfigValidate(t *testing.T) {
	good := func() serveConfig {
		return serveConfig{certFile: "tls.crt", keyFile: "tls.key", logLevel: "info", certPoll: time.Second, shutdownTimeout: time.Second, kubeQPS: 200, kubeBurst: 400}
	}
	for _, tc := range []struct {
		name   string
		change func(*serveConfig)
		want   []string
	}{
		{"good", func(*serveConfig) {}, nil},
		{"client names with a CA", func(c *serveConfig) { c.clientCAFile, c.clientNames = "ca.crt", "kube-apiserver" }, nil},
		{"no key", func(c *serveConfig) { c.keyFile = "" }, []string{"--tls-key-file"}},
		{"no API rate", func(c *serveConfig) { c.kubeQPS = 0 }, []string{"--kube-api-qps"}},
		{"negative log flush interval", func(c *serveConfig) { c.logFlush = -time.Second }, []string{"--log-flush-interval"}},
		{"no API burst", func(c *serveConfig) { c.kubeBurst = 0 }, []string{"--kube-api-burst"}},
		{"client names without a CA", func(c *serveConfig) { c.clientNames = "kube-apiserver" }, []string{"--allowed-client-names needs --client-ca-file"}},
		{"everything wrong", func(c *serveConfig) { c.certFile, c.logLevel, c.certPoll, c.shutdownTimeout = "", "loud", 0, -1 },
			[]string{"--tls-cert-file", "--log-level", "--tls-poll-interval", "--shutdown-timeout"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := good()
			tc.change(&c)
			err := c.validate()
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("validate: %v", err)
				}
				return
			}
			for _, w := range tc.want {
				if err == nil || !strings.Contains(err.Error(), w) {
					t.Errorf("error %v does not name %s", err, w)
				}
			}
		})
	}
}

// A background loop that dies ends the process with a reason; at shutdown nothing is reported.
func TestRunnableSupervise(t *testing.T) {
	live, cancel := context.WithCancel(context.Background())
	defer cancel()
	done, stop := context.WithCancel(context.Background())
	stop()
	boom := errors.New("boom")
	for _, tc := range []struct {
		name string
		ctx  context.Context
		r    runnable
		want string // "" for no error
	}{
		{"error", live, runnable{name: "sweeper", run: func(context.Context) error { return boom }}, "sweeper: boom"},
		{"returned early", live, runnable{name: "sweeper", untilDone: true, run: func(context.Context) error { return nil }}, "sweeper stopped while the server was running"},
		{"finished (not a loop)", live, runnable{name: "cache", run: func(context.Context) error { return nil }}, ""},
		{"panic", live, runnable{name: "writer", run: func(context.Context) error { panic("bug") }}, "writer panicked: bug"},
		{"shutdown", done, runnable{name: "sweeper", untilDone: true, run: func(ctx context.Context) error { return ctx.Err() }}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.r.supervise(tc.ctx)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("supervise = %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("supervise = %v, want %q", err, tc.want)
			}
		})
	}
}
