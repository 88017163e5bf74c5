package azure

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

// Concurrent additions through one BindingBatcher end with every subject listed exactly once,
// like plain EnsureBinding, but with far fewer writes (rounds instead of one write per caller).
// Two batchers stand in for two replicas, so cross-replica conflicts are still exercised.
func TestBindingBatcherCoalesces(t *testing.T) {
	c := newFakeCluster()
	replicas := []*BindingBatcher{{CS: c}, {CS: c}}
	const n = 100
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			errs[i] = replicas[i%2].EnsureBinding(ctx, testClientID, "demo", fmt.Sprintf("session-%d", i))
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for _, s := range c.binding(t).Subjects {
		seen[s.Namespace+"/"+s.Name]++
	}
	if len(seen) != n {
		t.Fatalf("%d distinct subjects, want %d", len(seen), n)
	}
	for k, v := range seen {
		if v != 1 {
			t.Fatalf("%s listed %d times", k, v)
		}
	}
	if w := c.writes(); w >= n {
		t.Errorf("%d writes for %d subjects: nothing was coalesced", w, n)
	}
	t.Logf("%d writes, %d conflicts for %d subjects over 2 replicas", c.writes(), c.conflicts.Load(), n)
}

func TestBindingBatcherRefusesBadInputWithoutWriting(t *testing.T) {
	c := newFakeCluster()
	b := &BindingBatcher{CS: c}
	if err := b.EnsureBinding(context.Background(), "not-a-guid", "demo", "x"); err == nil {
		t.Error("bad client ID accepted")
	}
	if err := b.EnsureBinding(context.Background(), testClientID, "demo", "Bad_Name"); err == nil {
		t.Error("bad ServiceAccount name accepted")
	}
	if w := c.writes(); w != 0 {
		t.Errorf("%d writes for refused input", w)
	}
}
