package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/kube"
	"go.klusters.dev/credential-webhook/kube/kubeadapter"
)

// kube.LeaseLocker against the real apiserver: the lock every replica (and the sweeper) takes
// around a seed's trust policy read-modify-write. Each locker below stands for one replica: its
// own identity and its own in-process state, sharing only the Lease in the apiserver, so
// whatever exclusion they show comes from the Lease alone.

// leaseKey is a seed-role-like key unique to the test.
func leaseKey(ns, what string) string {
	return "arn:aws:iam::123456789012:role/lease-" + what + "-" + ns
}

// leaseLog is a concurrency-safe buffer for a locker's log.
type leaseLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *leaseLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *leaseLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func newLeaseLocker(ns, identity string, duration time.Duration, log *leaseLog) *kube.LeaseLocker {
	var logger *slog.Logger
	if log != nil {
		logger = slog.New(slog.NewJSONHandler(log, nil))
	}
	return kube.NewLeaseLocker(kubeadapter.Wrap(cluster.Client), ns, identity, duration, logger)
}

// leaseHolder reads the Lease for key: its holder ("" when free) and the time it was renewed.
func leaseHolder(t *testing.T, ns, key string) (holder string, renewed time.Time, durationSeconds int32) {
	t.Helper()
	l, err := cluster.Client.CoordinationV1().Leases(ns).Get(context.Background(), kube.LeaseName(key), metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get Lease %s: %v", kube.LeaseName(key), err)
	}
	if l.Spec.HolderIdentity != nil {
		holder = *l.Spec.HolderIdentity
	}
	if l.Spec.RenewTime != nil {
		renewed = l.Spec.RenewTime.Time
	}
	if l.Spec.LeaseDurationSeconds != nil {
		durationSeconds = *l.Spec.LeaseDurationSeconds
	}
	return holder, renewed, durationSeconds
}

func leaseLock(t *testing.T, l *kube.LeaseLocker, key string, timeout time.Duration) (func(), int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	unlock, gen, err := l.Lock(ctx, key)
	if err != nil {
		t.Fatalf("Lock %s: %v", key, err)
	}
	return unlock, gen
}

func TestLeaseLocker(t *testing.T) {
	ns := cluster.Namespace(t)

	// Two replicas, ten goroutines each, three critical sections per goroutine: never two inside
	// at once, no lost update of a read-sleep-write counter, and both replicas get their turns.
	t.Run("mutual exclusion across replicas", func(t *testing.T) {
		const (
			perLocker = 10
			rounds    = 3
		)
		key := leaseKey(ns, "mutex")
		lockers := []*kube.LeaseLocker{
			newLeaseLocker(ns, "replica-a", 30*time.Second, nil),
			newLeaseLocker(ns, "replica-b", 30*time.Second, nil),
		}
		ids := []string{"replica-a", "replica-b"}
		var (
			inside, overlaps atomic.Int32
			counter          atomic.Int64
			seqMu            sync.Mutex
			seq              []int // which replica held the lock, in order
			maxWait          [2]time.Duration
			wrongHolder      atomic.Value // string: first holder mismatch seen
			wg               sync.WaitGroup
		)
		for li, l := range lockers {
			for range perLocker {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for range rounds {
						// A pause outside the lock lets a replica's local queue run dry now and
						// then, so the Lease changes hands between replicas, not only within one.
						time.Sleep(time.Duration(100+rand.IntN(500)) * time.Millisecond)
						ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
						t0 := time.Now()
						unlock, _, err := l.Lock(ctx, key)
						waited := time.Since(t0)
						cancel()
						if err != nil {
							t.Errorf("%s: Lock: %v", ids[li], err)
							return
						}
						if inside.Add(1) != 1 {
							overlaps.Add(1)
						}
						seqMu.Lock()
						seq = append(seq, li)
						maxWait[li] = max(maxWait[li], waited)
						seqMu.Unlock()
						// The Lease in the apiserver names the holder while it holds.
						if h, err := cluster.Client.CoordinationV1().Leases(ns).Get(context.Background(), kube.LeaseName(key), metav1.GetOptions{}); err != nil {
							t.Errorf("get Lease: %v", err)
						} else if h.Spec.HolderIdentity == nil || *h.Spec.HolderIdentity != ids[li] {
							wrongHolder.CompareAndSwap(nil, fmt.Sprintf("%s inside, Lease holder %v", ids[li], h.Spec.HolderIdentity))
						}
						// A read-modify-write with a pause in the middle loses updates as soon as
						// two goroutines overlap.
						v := counter.Load()
						time.Sleep(3 * time.Millisecond)
						counter.Store(v + 1)
						inside.Add(-1)
						unlock()
					}
				}()
			}
		}
		wg.Wait()
		if n := overlaps.Load(); n != 0 {
			t.Errorf("%d critical sections overlapped another", n)
		}
		if got, want := counter.Load(), int64(2*perLocker*rounds); got != want {
			t.Errorf("counter = %d after %d locked increments: updates were lost", got, want)
		}
		if v := wrongHolder.Load(); v != nil {
			t.Errorf("Lease did not name the holder: %s", v)
		}
		handovers := 0
		for i := 1; i < len(seq); i++ {
			if seq[i] != seq[i-1] {
				handovers++
			}
		}
		t.Logf("%d critical sections, %d handovers between the two replicas; longest Lock wait %s (replica-a) %s (replica-b)",
			len(seq), handovers, maxWait[0].Round(time.Millisecond), maxWait[1].Round(time.Millisecond))
		if h, _, _ := leaseHolder(t, ns, key); h != "" {
			t.Errorf("after every unlock the Lease is still held by %q", h)
		}
	})

	// The generation travels with the Lease: what one replica bumps, the other sees on its next
	// Lock; releasing does not bump; a replica that no longer holds the lock cannot bump.
	t.Run("generation is shared", func(t *testing.T) {
		key := leaseKey(ns, "gen")
		a := newLeaseLocker(ns, "replica-a", 30*time.Second, nil)
		b := newLeaseLocker(ns, "replica-b", 30*time.Second, nil)
		ctx := context.Background()
		steps := []struct {
			l       *kube.LeaseLocker
			name    string
			wantGen int64
			bumps   int
		}{
			{a, "a", 0, 1}, // a new Lease starts at 0
			{b, "b", 1, 2},
			{a, "a", 3, 0},
			{b, "b", 3, 1}, // no bump by a: unchanged
			{a, "a", 4, 0},
		}
		for i, s := range steps {
			unlock, gen := leaseLock(t, s.l, key, 30*time.Second)
			if gen != s.wantGen {
				t.Errorf("step %d: %s's Lock returned generation %d, want %d", i, s.name, gen, s.wantGen)
			}
			for range s.bumps {
				if err := s.l.Bump(ctx, key); err != nil {
					t.Errorf("step %d: %s Bump: %v", i, s.name, err)
				}
			}
			unlock()
			unlock() // twice is safe
		}
		if err := a.Bump(ctx, key); err == nil {
			t.Error("Bump without holding the lock succeeded")
		}
		if _, gen := leaseLock(t, b, key, 30*time.Second); gen != 4 {
			t.Errorf("after a refused Bump the generation is %d, want 4", gen)
		}
	})

	// A holder that dies without unlocking blocks others until its Lease expires, then is taken
	// over with the generation bumped (it may have written to IAM without bumping). Its late
	// unlock, should it come back, does not release the new holder's Lease.
	t.Run("crashed holder is taken over after expiry", func(t *testing.T) {
		key := leaseKey(ns, "crash")
		crashLog, survivorLog := &leaseLog{}, &leaseLog{}
		crashed := newLeaseLocker(ns, "replica-crashed", 2*time.Second, crashLog)
		survivor := newLeaseLocker(ns, "replica-survivor", 30*time.Second, survivorLog)
		ctx := context.Background()

		lateUnlock, gen0 := leaseLock(t, crashed, key, 30*time.Second)
		holder, renewed, secs := leaseHolder(t, ns, key)
		if holder != "replica-crashed" || secs != 2 {
			t.Fatalf("Lease held by %q for %ds, want replica-crashed for 2s", holder, secs)
		}
		expiry := renewed.Add(time.Duration(secs) * time.Second)

		// Before expiry the Lease keeps others out.
		short, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		_, _, err := survivor.Lock(short, key)
		cancel()
		if err == nil {
			t.Fatal("survivor locked a Lease held by a live holder")
		}

		unlock, gen := leaseLock(t, survivor, key, 30*time.Second)
		if now := time.Now(); now.Before(expiry) {
			t.Errorf("survivor took the Lease at %s, before it expired at %s", now.Format(time.StampMicro), expiry.Format(time.StampMicro))
		}
		if gen != gen0+1 {
			t.Errorf("generation after takeover = %d, want %d (the crashed holder's %d, bumped)", gen, gen0+1, gen0)
		}
		if h, _, secs := leaseHolder(t, ns, key); h != "replica-survivor" || secs != 30 {
			t.Errorf("after takeover the Lease is held by %q for %ds, want replica-survivor for 30s", h, secs)
		}
		if !strings.Contains(survivorLog.String(), "replica-crashed") {
			t.Errorf("the takeover logged nothing naming the previous holder:\n%s", survivorLog.String())
		}

		// The crashed replica comes back and finishes its session: it must neither bump nor
		// release a Lease that is no longer its own.
		if err := crashed.Bump(ctx, key); err == nil {
			t.Error("the crashed replica bumped a Lease it no longer holds")
		}
		if _, err := crashed.Renew(ctx, key); err == nil {
			t.Error("the crashed replica renewed a Lease it no longer holds")
		}
		lateUnlock()
		if h, _, _ := leaseHolder(t, ns, key); h != "replica-survivor" {
			t.Errorf("the crashed replica's late unlock released the survivor's Lease (holder now %q)", h)
		}
		unlock()
		if _, gen := leaseLock(t, crashed, key, 30*time.Second); gen != gen0+1 {
			t.Errorf("generation after a clean release = %d, want %d", gen, gen0+1)
		}
	})

	// A renewal moves the Lease's expiry as other replicas see it: past the take's expiry, the
	// Lease still keeps them out, and the holder may still write (Held); its release frees it.
	t.Run("renewal keeps others out past the first expiry", func(t *testing.T) {
		key := leaseKey(ns, "renew")
		holder := newLeaseLocker(ns, "replica-renewing", 4*time.Second, nil)
		other := newLeaseLocker(ns, "replica-waiting", 30*time.Second, nil)
		ctx := context.Background()
		unlock, gen0 := leaseLock(t, holder, key, 30*time.Second)
		_, taken, _ := leaseHolder(t, ns, key)
		time.Sleep(2 * time.Second)
		if _, err := holder.Renew(ctx, key); err != nil {
			t.Fatalf("renewal 2 s into a 4 s Lease: %v", err)
		}
		h, renewed, _ := leaseHolder(t, ns, key)
		if h != "replica-renewing" || !renewed.After(taken) {
			t.Fatalf("after the renewal the Lease is held by %q, renewed at %s (taken at %s); want replica-renewing, renewed later", h, renewed.Format(time.StampMicro), taken.Format(time.StampMicro))
		}
		time.Sleep(time.Until(taken.Add(4*time.Second + 200*time.Millisecond))) // past the take's expiry, 2 s before the renewal's
		if err := holder.Held(key); err != nil {
			t.Errorf("the holder may no longer write 4.2 s after its take, 2.2 s after its renewal (of a 4 s Lease): %v", err)
		}
		if err := holder.Bump(ctx, key); err != nil {
			t.Fatal(err)
		}
		short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		_, _, err := other.Lock(short, key)
		cancel()
		if err == nil {
			t.Fatal("another replica took a renewed Lease at its first expiry")
		}
		unlock()
		unlock2, gen := leaseLock(t, other, key, 30*time.Second)
		defer unlock2()
		if gen != gen0+1 {
			t.Errorf("generation after a renewed hold that bumped once = %d, want %d", gen, gen0+1)
		}
	})

	// Lock gives up when its context ends, whether it waits for another replica's Lease or for
	// another goroutine of its own replica, and leaves nothing behind.
	t.Run("Lock honours context cancellation", func(t *testing.T) {
		key := leaseKey(ns, "ctx")
		a := newLeaseLocker(ns, "replica-a", 30*time.Second, nil)
		b := newLeaseLocker(ns, "replica-b", 30*time.Second, nil)
		ctx := context.Background()
		unlockA, _ := leaseLock(t, a, key, 30*time.Second)

		deadline, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		_, _, err := b.Lock(deadline, key)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("other replica, deadline: err = %v, want context.DeadlineExceeded", err)
		}

		cancelled, cancel := context.WithCancel(ctx)
		time.AfterFunc(200*time.Millisecond, cancel)
		_, _, err = b.Lock(cancelled, key)
		if !errors.Is(err, context.Canceled) {
			t.Errorf("other replica, cancelled: err = %v, want context.Canceled", err)
		}

		deadline, cancel = context.WithTimeout(ctx, 300*time.Millisecond)
		_, _, err = a.Lock(deadline, key)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("same replica, deadline: err = %v, want context.DeadlineExceeded", err)
		}

		done, cancel := context.WithCancel(ctx)
		cancel()
		if unlock, _, err := b.Lock(done, key); err == nil {
			unlock()
			t.Error("Lock with an already cancelled context succeeded while another replica holds the Lease")
		}

		if h, _, _ := leaseHolder(t, ns, key); h != "replica-a" {
			t.Errorf("after the cancelled attempts the Lease is held by %q, want replica-a", h)
		}
		unlockA()
		// Neither replica is left blocked by the abandoned attempts.
		unlockB, _ := leaseLock(t, b, key, 10*time.Second)
		unlockB()
		unlockA, _ = leaseLock(t, a, key, 10*time.Second)
		unlockA()
	})

	// Leases are marked as ours, so an operator can tell them apart.
	t.Run("Lease is labelled", func(t *testing.T) {
		key := leaseKey(ns, "label")
		unlock, _ := leaseLock(t, newLeaseLocker(ns, "replica-a", 30*time.Second, nil), key, 30*time.Second)
		unlock()
		l, err := cluster.Client.CoordinationV1().Leases(ns).Get(context.Background(), kube.LeaseName(key), metav1.GetOptions{})
		if err != nil {
			t.Fatalf("get Lease: %v", err)
		}
		if l.Labels[annotations.ManagedLabel] != "true" {
			t.Errorf("Lease labels = %v, want %s=true", l.Labels, annotations.ManagedLabel)
		}
	})
}
