package main

import (
	"context"
	"slices"
	"testing"
	"time"

	"go.klusters.dev/credential-webhook/bench"
)

// Runs side by side give what one after the other gives, in the order asked for: sequential
// assignment makes each run repeat exactly, so only their timing may differ.
func TestSimulateAllParallelMatchesSequential(t *testing.T) {
	cfgs := []bench.SimConfig{
		{BackupConfigs: 30, Duration: 3 * time.Hour, Sequential: true},
		{BackupConfigs: 30, Duration: 3 * time.Hour, Sequential: true, Leak: 0.2, StopAtLimit: true, RoleCreationLimit: 2},
		{BackupConfigs: 20, Duration: 2 * time.Hour, Sequential: true, Leak: 0.05},
	}
	var order []float64
	show := func(r bench.SimResult) { order = append(order, r.Config.Leak) }
	seq, err := simulateAll(context.Background(), cfgs, false, show)
	if err != nil {
		t.Fatal(err)
	}
	par, err := simulateAll(context.Background(), cfgs, true, show)
	if err != nil {
		t.Fatal(err)
	}
	if want := []float64{0, 0.2, 0.05, 0, 0.2, 0.05}; !slices.Equal(order, want) {
		t.Errorf("shown in order %v, want %v", order, want)
	}
	for i := range cfgs {
		s, p := seq[i], par[i]
		s.Wall, p.Wall = 0, 0
		if bench.SimSummary(s) != bench.SimSummary(p) || s.Worst() != p.Worst() {
			t.Errorf("run %d differs:\nsequential %s\nparallel   %s", i, bench.SimSummary(s), bench.SimSummary(p))
		}
	}
	if seq[1].LimitHitAt == 0 {
		t.Error("the leak run never hit its ceiling: the runs are not the ones asked for")
	}
}
