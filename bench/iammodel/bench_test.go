package iammodel_test

import (
	"context"
	"testing"

	"go.klusters.dev/credential-webhook/bench/iammodel"
	awsp "go.klusters.dev/credential-webhook/providers/aws"
)

// BenchmarkAssignModel is the cost of one Assign of a new subject by the production Assigner
// against the model, in steady state (warm cache, one writer): one UpdateAssumeRolePolicy, or a
// CreateRole and the seed's policies when every role is full. The live subjects are removed,
// untimed, every window assignments, so roles are reused instead of piling up to the limit.
func BenchmarkAssignModel(b *testing.B) {
	const window = 1000 // ~50 derived roles at the default quota: first fit scans them all
	ctx := context.Background()
	m := iammodel.New(iammodel.Options{})
	seed, err := iammodel.CreateSeed(ctx, m, iammodel.SeedSetup{Name: "bench-seed", Managed: []string{"arn:aws:iam::" + iammodel.DefaultAccountID + ":policy/kubestash/bench-s3"}})
	if err != nil {
		b.Fatal(err)
	}
	allow, err := awsp.ParseAllowlist(seed.String())
	if err != nil {
		b.Fatal(err)
	}
	a := awsp.NewAssigner(m, awsp.NewLocalLocker(), awsp.Config{Seeds: allow}, nil)
	calls := 0
	count := func() int {
		n := 0
		for _, c := range m.Calls() {
			n += c
		}
		return n
	}
	m.ResetCalls()
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		if i > 0 && i%window == 0 {
			b.StopTimer()
			calls += count()
			if _, err := a.Remove(ctx, seed, subjects(i-window, i)); err != nil {
				b.Fatal(err)
			}
			m.ResetCalls()
			b.StartTimer()
		}
		if _, err := a.Assign(ctx, seed, ns, sa(i)); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(calls+count())/float64(b.N), "iam-calls/op")
}
