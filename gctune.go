package main

import (
	"context"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"sync/atomic"
)

// heapGoalFloor is the least heap goal serve keeps when GOGC is unset: two thirds of the goal
// the sweeper leader already has at GOGC=100 with 10,000 ServiceAccounts and 2,000 Jobs (make
// bench's memory phase: 23.8 MiB, live heap about 12 MiB, 56 MiB resident under the 64 MiB
// target), so the leader and any replica with a live heap over 8 MiB run exactly as at GOGC=100.
//
// Why (issue 18): a replica that only answers reviews has a live heap of a few MiB, so at
// GOGC=100 its goal is a few MiB above it and every few hundred reviews (20 to 30 KiB of garbage
// each) start a collection: 7 to 10 % of its CPU under load. With the floor it collects less
// often, for a heap that stays under the leader's. GOMEMLIMIT, which the chart sets from the
// container's memory limit, still caps every goal.
const heapGoalFloor = 16 << 20

// maxTunedGCPercent bounds the percent. The percent is set after a collection, from the live
// heap it found, so the goal of the cycle that collection starts uses the previous percent: when
// the live heap jumps (an informer's first list), that goal is live*(1+max/100). Measured with a
// floor of 24 MiB and a bound of 2000 (a start-up percent near 700): the --sweeper=false replica
// of the memory benchmark settled at 70 MiB resident instead of 50, the leader peaked at 66 MiB.
// At 300 the transient goal is at most twice GOGC=100's.
const maxTunedGCPercent = 300

// gcPercentFor is the GC percent that makes the heap goal live*(1+p/100) at least floor, and
// never less than 100 (Go's default: what GOGC unset means).
func gcPercentFor(live, floor uint64) int {
	if live == 0 {
		return maxTunedGCPercent
	}
	if live*2 >= floor {
		return 100
	}
	p := (floor - live) * 100 / live
	if (floor-live)*100%live != 0 {
		p++ // round up: the goal reaches the floor
	}
	return int(min(p, maxTunedGCPercent))
}

// tuneGC reports whether serve should tune the GC percent: only when the operator has not chosen
// one with GOGC (GOGC=100 set explicitly keeps Go's default).
func tuneGC(getenv func(string) string) bool { return getenv("GOGC") == "" }

// gcTuner sets the GC percent from the live heap after every collection, so the heap goal stays
// at least floor (gcPercentFor). It runs in the finalizer goroutine, once per cycle: nothing
// wakes up while the server idles.
type gcTuner struct {
	floor   uint64
	stopped atomic.Bool

	mu     sync.Mutex // adjust runs first in startGCTuner's caller, then in the finalizer goroutine
	sample [1]metrics.Sample
	last   int
	// adjusted counts the percent changes (tests).
	adjusted atomic.Int64
}

// startGCTuner starts tuning until ctx ends; the percent is then left as it was last set.
func startGCTuner(ctx context.Context, floor uint64) *gcTuner {
	t := &gcTuner{floor: floor}
	t.sample[0].Name = "/gc/heap/live:bytes"
	t.adjust()
	t.arm()
	context.AfterFunc(ctx, func() { t.stopped.Store(true) })
	return t
}

// sentinel is an object only the tuner's finalizer refers to: it becomes garbage at once, so its
// finalizer runs after the next collection. Large enough not to share a tiny-allocator block,
// whose finalizers can be delayed by the other objects in it.
type sentinel struct{ _ [16]byte }

func (t *gcTuner) arm() {
	runtime.SetFinalizer(new(sentinel), func(*sentinel) {
		if t.stopped.Load() {
			return
		}
		t.adjust()
		t.arm()
	})
}

func (t *gcTuner) adjust() {
	t.mu.Lock()
	defer t.mu.Unlock()
	metrics.Read(t.sample[:])
	if t.sample[0].Value.Kind() != metrics.KindUint64 {
		return // not in this runtime: leave Go's default
	}
	p := gcPercentFor(t.sample[0].Value.Uint64(), t.floor)
	if p != t.last {
		debug.SetGCPercent(p)
		t.last = p
		t.adjusted.Add(1)
	}
}
