package sweeper

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"k8s.io/client-go/kubernetes/fake"

	"go.klusters.dev/credential-webhook/kube/kubeadapter"
	"go.klusters.dev/credential-webhook/markers"
)

// maintainingCollector is a ScopedCollector and ScopeMaintainer that records what it was asked.
type maintainingCollector struct {
	scopes      []Scope
	collectErr  error
	collected   []string
	full        []bool // Scope.Full of each collection
	maintained  []string
	maintainErr error
}

func (c *maintainingCollector) Collect(context.Context, markers.Lookup) (int, error) { return 0, nil }
func (c *maintainingCollector) Scopes(context.Context) ([]Scope, error)              { return c.scopes, nil }
func (c *maintainingCollector) CollectScope(_ context.Context, s Scope, _ markers.Lookup) (int, error) {
	c.collected = append(c.collected, s.Key)
	c.full = append(c.full, s.Full)
	return 0, c.collectErr
}
func (c *maintainingCollector) MaintainScope(_ context.Context, s Scope) error {
	c.maintained = append(c.maintained, s.Key)
	return c.maintainErr
}

// Maintenance (drift repair, empty role deletion) reads every object of a scope: it runs on the
// full collections only, after a successful CollectScope, never on event-driven ones.
func TestMaintenanceRunsOnFullCollectionsOnly(t *testing.T) {
	claim := markers.For(markers.AWS, "arn:aws:iam::123456789012:role/seed")
	newCollector := func() *maintainingCollector {
		return &maintainingCollector{scopes: []Scope{{Key: "seed", Claim: claim}}}
	}
	newT := func(c Collector) *term {
		return newTerm(New(kubeadapter.Wrap(fake.NewClientset()), Config{}, Deps{Collectors: []Collector{c}}, nil))
	}
	ctx := context.Background()

	t.Run("full", func(t *testing.T) {
		c := newCollector()
		newT(c).collect(ctx, true)
		if len(c.collected) != 1 || len(c.maintained) != 1 {
			t.Fatalf("collected %v, maintained %v; want both once", c.collected, c.maintained)
		}
		if !c.full[0] {
			t.Error("a full pass collected without Scope.Full: the collector would trust its cached view")
		}
	})
	t.Run("event-driven", func(t *testing.T) {
		c := newCollector()
		tm := newT(c)
		tm.makeDue(markers.Claims{claim}, false)
		tm.collect(ctx, false)
		if len(c.collected) != 1 || len(c.maintained) != 0 {
			t.Fatalf("collected %v, maintained %v; want a collection without maintenance", c.collected, c.maintained)
		}
		if c.full[0] {
			t.Error("an event-driven collection had Scope.Full set")
		}
	})
	t.Run("collection failed", func(t *testing.T) {
		c := newCollector()
		c.collectErr = errors.New("IAM down")
		newT(c).collect(ctx, true)
		if len(c.maintained) != 0 {
			t.Fatalf("maintained %v after a failed collection", c.maintained)
		}
	})
	t.Run("maintenance failure counts as a failed run", func(t *testing.T) {
		c := newCollector()
		c.maintainErr = errors.New("throttled")
		tm := newT(c)
		tm.collect(ctx, true)
		if got := testutil.ToFloat64(tm.m.gcRuns.WithLabelValues("error")); got != 1 {
			t.Fatalf("gc_runs_total{result=error} = %v, want 1", got)
		}
	})
}

// The last-full-success gauge moves on a full pass that ended without error, even one that
// found no scope (no seed written to yet), and on nothing else: an event-driven collection or a
// failed full pass leaves it where it was.
func TestLastFullCollectionGauge(t *testing.T) {
	claim := markers.For(markers.AWS, "arn:aws:iam::123456789012:role/seed")
	ctx := context.Background()
	c := &maintainingCollector{}
	tm := newTerm(New(kubeadapter.Wrap(fake.NewClientset()), Config{}, Deps{Collectors: []Collector{c}}, nil))
	at := time.Unix(1_800_000_000, 0)
	tm.now = func() time.Time { return at }
	gauge := func() float64 { return testutil.ToFloat64(tm.m.gcLastFull) }

	if got := gauge(); got != 0 {
		t.Fatalf("before any pass: %v, want 0", got)
	}
	tm.collect(ctx, true)
	if got := gauge(); got != 1_800_000_000 {
		t.Fatalf("after a full pass with no scope: %v, want %v", got, 1_800_000_000)
	}
	c.scopes = []Scope{{Key: "seed", Claim: claim}}
	at = at.Add(time.Minute)
	tm.makeDue(markers.Claims{claim}, false)
	tm.collect(ctx, false)
	if got := gauge(); got != 1_800_000_000 {
		t.Errorf("an event-driven collection moved it to %v", got)
	}
	c.maintainErr = errors.New("throttled")
	tm.collect(ctx, true)
	if got := gauge(); got != 1_800_000_000 {
		t.Errorf("a failed full pass moved it to %v", got)
	}
	c.maintainErr = nil
	tm.collect(ctx, true)
	if got := gauge(); got != 1_800_000_060 {
		t.Errorf("after a successful full pass: %v, want %v", got, 1_800_000_060)
	}
}
