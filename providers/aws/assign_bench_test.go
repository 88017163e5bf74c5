package aws_test

// Benchmarks for the two costs of an assignment: placing a subject among cached trust policies
// (pure CPU) and the warm-cache assignment against moto (one IAM write). They live in the
// external test package so they only use the exported API.

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"testing"

	awsp "go.klusters.dev/credential-webhook/providers/aws"
	"go.klusters.dev/credential-webhook/testenv/iamproxy"
	"go.klusters.dev/credential-webhook/testenv/moto"
)

const benchIssuer = "https://oidc.eks.us-east-1.amazonaws.com/id/5C5E1A2B3C4D5E6F7A8B9C0D1E2F3A4B"

// benchSubject is the i-th KubeStash per-session backup ServiceAccount (71 characters).
func benchSubject(i int) string {
	return fmt.Sprintf("%sdemo:sample-backup-daemon-demo-session-%d", awsp.SubjectPrefix, 1778072138+i*3600)
}

func benchSeed(b *testing.B) awsp.TrustPolicy {
	b.Helper()
	seed, err := awsp.ParseTrustPolicy(moto.TrustPolicy("arn:aws:iam::"+moto.AccountID+":oidc-provider/"+moto.IssuerHost(benchIssuer), benchIssuer, moto.SeedSubject))
	if err != nil {
		b.Fatal(err)
	}
	return seed
}

// BenchmarkPlace100Roles places one more subject among 100 derived roles of 30 subjects each
// (3,000 ServiceAccounts) with Place, as a lock session does, with the quota set to exactly the
// size of a 30-subject role:
//   - last-has-room: roles 0-98 are full, role 99 holds 29 and takes the subject (99 rejections
//     from memoised sizes, then one document rendered and measured);
//   - all-full: every role is full and Place opens role 100 (its one-subject policy derived
//     from the seed and measured);
//   - reload: the same after re-parsing all 100 URL-encoded documents, as after ListRoles when
//     another replica wrote (the CPU side of a cache refresh).
func BenchmarkPlace100Roles(b *testing.B) {
	seed := benchSeed(b)
	const roles, per = 100, 30
	build := func(lastLen int) ([]awsp.TrustPolicy, []string) {
		ps := make([]awsp.TrustPolicy, roles)
		docs := make([]string, roles)
		for r := range roles {
			n := per
			if r == roles-1 {
				n = lastLen
			}
			subs := make([]string, n)
			for i := range subs {
				subs[i] = benchSubject(r*per + i)
			}
			p, err := awsp.DeriveTrustPolicy(seed, subs)
			if err != nil {
				b.Fatal(err)
			}
			ps[r] = p
			js, err := p.JSON()
			if err != nil {
				b.Fatal(err)
			}
			docs[r] = strings.ReplaceAll(url.QueryEscape(js), "+", "%20") // as IAM returns it
		}
		return ps, docs
	}
	full, _ := build(per)
	quota, err := full[0].Size()
	if err != nil {
		b.Fatal(err)
	}
	newSubject := benchSubject(roles*per + 1)
	views := func(ps []awsp.TrustPolicy) []awsp.RoleView {
		out := make([]awsp.RoleView, len(ps))
		for i, p := range ps {
			out[i] = awsp.RoleView{Index: i, Trust: p}
		}
		return out
	}
	place := func(b *testing.B, vs []awsp.RoleView, want int, creates bool) {
		b.Helper()
		d := awsp.Place(vs, []string{newSubject}, quota, awsp.DefaultRoleCreationLimit+1, awsp.PlaceOptions{Seed: &seed}).Decisions[0]
		if d.Err != nil || d.Index != want || d.Creates != creates {
			b.Fatalf("Place = %+v; want role %d (new: %v)", d, want, creates)
		}
	}

	b.Run("last-has-room", func(b *testing.B) {
		ps, _ := build(per - 1)
		vs := views(ps)
		b.ReportAllocs()
		for b.Loop() {
			place(b, vs, roles-1, false)
		}
	})
	b.Run("all-full", func(b *testing.B) {
		vs := views(full)
		b.ReportAllocs()
		for b.Loop() {
			place(b, vs, roles, true)
		}
	})
	b.Run("reload", func(b *testing.B) {
		_, docs := build(per - 1)
		ps := make([]awsp.TrustPolicy, roles)
		b.ReportAllocs()
		for b.Loop() {
			for r, d := range docs {
				if ps[r], err = awsp.ParseTrustPolicy(d); err != nil {
					b.Fatal(err)
				}
			}
			place(b, views(ps), roles-1, false)
		}
	})
}

// BenchmarkAssignWarm is Assigner.Assign with a warm cache against moto through the counting
// iamproxy (quota 2,048):
//   - new-subject: a new ServiceAccount each time: one UpdateAssumeRolePolicy, plus, every 21st,
//     the CreateRole and policy calls of a new derived role (iam-calls/op shows the mix);
//   - already-listed: the same ServiceAccount again: no IAM call, the lock and the cache only.
//
// ns/op is dominated by moto (Python) for new-subject; it is not AWS's latency.
func BenchmarkAssignWarm(b *testing.B) {
	for _, kv := range [][2]string{{"AWS_EC2_METADATA_DISABLED", "true"}, {"AWS_ACCESS_KEY_ID", "test"}, {"AWS_SECRET_ACCESS_KEY", "test"}, {"AWS_REGION", moto.Region}} {
		b.Setenv(kv[0], kv[1])
	}
	srv := moto.Start(b)
	proxy, err := iamproxy.New(srv.Endpoint, iamproxy.Options{Quota: awsp.DefaultQuota})
	if err != nil {
		b.Fatal(err)
	}
	proxy.Start(b)
	ctx := context.Background()
	arn, err := moto.CreateSeedRole(ctx, moto.ConfigFor(srv.Endpoint), "kubestash-bench", "/bench/", benchIssuer)
	if err != nil {
		b.Fatal(err)
	}
	seed, err := awsp.ParseRoleARN(arn)
	if err != nil {
		b.Fatal(err)
	}
	allow, err := awsp.ParseAllowlist(arn)
	if err != nil {
		b.Fatal(err)
	}
	// Room for every subject the ramp-up might assign: 21 per role at 2,048.
	a := awsp.NewAssigner(awsp.NewIAMClient(moto.ConfigFor(proxy.URL)), awsp.NewLocalLocker(),
		awsp.Config{Seeds: allow, RoleCreationLimit: 1000}, nil)
	next := 0
	assign := func(b *testing.B, i int) awsp.Assignment {
		_, name, _ := strings.Cut(strings.TrimPrefix(benchSubject(i), awsp.SubjectPrefix), ":")
		r, err := a.Assign(ctx, seed, "demo", name)
		if err != nil {
			b.Fatal(err)
		}
		return r
	}
	assign(b, next) // warm: quota, seed, role 0
	next++

	calls := func() int {
		n := 0
		for _, v := range proxy.Calls() {
			n += v
		}
		return n
	}
	b.Run("new-subject", func(b *testing.B) {
		proxy.ResetCalls()
		created := 0
		for b.Loop() {
			if assign(b, next).Created {
				created++
			}
			next++
		}
		b.ReportMetric(float64(calls())/float64(b.N), "iam-calls/op")
		b.ReportMetric(float64(proxy.Calls()["iam:UpdateAssumeRolePolicy"])/float64(b.N), "updates/op")
		b.ReportMetric(float64(created)/float64(b.N), "roles-created/op")
	})
	b.Run("already-listed", func(b *testing.B) {
		proxy.ResetCalls()
		for b.Loop() {
			if r := assign(b, 0); !r.AlreadyListed {
				b.Fatalf("got %+v, want already listed", r)
			}
		}
		b.ReportMetric(float64(calls())/float64(b.N), "iam-calls/op")
	})
}
