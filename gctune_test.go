package main

import (
	"context"
	"runtime"
	"runtime/debug"
	"testing"
	"time"
)

func TestGCPercentFor(t *testing.T) {
	const mib = 1 << 20
	tests := []struct {
		name        string
		live, floor uint64
		want        int
	}{
		{"live at half the floor: Go's default", 8 * mib, 16 * mib, 100},
		{"live above half the floor (the sweeper leader, 12 MiB): Go's default", 12 * mib, 16 * mib, 100},
		{"live above the floor: Go's default", 100 * mib, 16 * mib, 100},
		{"6 MiB: rounded up", 6 * mib, 16 * mib, 167},
		{"a fifth: bounded (goal four times live, under the floor)", 16 * mib / 5, 16 * mib, 300},
		{"rounded up so the goal reaches the floor", 7 * mib, 16 * mib, 129},
		{"a quarter: at the bound", 4 * mib, 16 * mib, 300},
		{"an eighth: bounded, goal under the floor", 2 * mib, 16 * mib, maxTunedGCPercent},
		{"tiny live heap: bounded", 1024, 16 * mib, maxTunedGCPercent},
		{"no live heap reading yet: bounded", 0, 16 * mib, maxTunedGCPercent},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := gcPercentFor(tc.live, tc.floor)
			if got != tc.want {
				t.Errorf("gcPercentFor(%d, %d) = %d, want %d", tc.live, tc.floor, got, tc.want)
			}
			if got < maxTunedGCPercent && tc.live*uint64(100+got)/100 < min(tc.floor, tc.live*2) {
				t.Errorf("goal %d under the floor %d", tc.live*uint64(100+got)/100, tc.floor)
			}
		})
	}
}

func TestTuneGCOnlyWithoutGOGC(t *testing.T) {
	for env, want := range map[string]bool{"": true, "100": false, "off": false, "200": false} {
		if got := tuneGC(func(k string) string {
			if k == "GOGC" {
				return env
			}
			return ""
		}); got != want {
			t.Errorf("GOGC=%q: tune %v, want %v", env, got, want)
		}
	}
}

// gcPercent reads the current GC percent.
func gcPercent() int {
	p := debug.SetGCPercent(100)
	debug.SetGCPercent(p)
	return p
}

// TestGCTunerFollowsLiveHeap: after collections, the percent is the one gcPercentFor gives for
// this test process's live heap (a few MiB: above 100 with a 64 MiB floor), set again after
// each collection, and left alone once the tuner's context ends.
func TestGCTunerFollowsLiveHeap(t *testing.T) {
	before := gcPercent()
	defer debug.SetGCPercent(before)
	ctx, cancel := context.WithCancel(context.Background())
	tu := startGCTuner(ctx, 64<<20)
	if p := gcPercent(); p <= 100 {
		t.Fatalf("GC percent %d after start with a 64 MiB floor and a small live heap", p)
	}
	// A live heap of 40 MiB, kept across collections: the tuner must bring the percent down.
	ballast := make([]byte, 40<<20)
	for i := range ballast {
		ballast[i] = byte(i)
	}
	deadline := time.Now().Add(10 * time.Second)
	for gcPercent() != 100 {
		if time.Now().After(deadline) {
			t.Fatalf("GC percent %d with 40 MiB live (floor 64 MiB): the tuner did not follow", gcPercent())
		}
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
	runtime.KeepAlive(ballast)
	cancel()
	debug.SetGCPercent(777)
	n := tu.adjusted.Load()
	for range 3 {
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
	if p := gcPercent(); p != 777 || tu.adjusted.Load() != n {
		t.Errorf("after the context ended: percent %d (want 777, untouched), %d adjustments (was %d)", p, tu.adjusted.Load(), n)
	}
}
