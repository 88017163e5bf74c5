package aws

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.klusters.dev/credential-webhook/testenv/moto"
)

func TestLocalLocker(t *testing.T) {
	l := NewLocalLocker()
	ctx := context.Background()

	unlock, gen, err := l.Lock(ctx, "a")
	if err != nil || gen != 0 {
		t.Fatalf("first Lock = %d, %v", gen, err)
	}
	// Another key is independent.
	unlockB, _, err := l.Lock(ctx, "b")
	if err != nil {
		t.Fatal(err)
	}
	unlockB()
	// The same key is exclusive: a waiter gives up when its ctx ends.
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if _, _, err := l.Lock(short, "a"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("second Lock of a held key = %v, want deadline exceeded", err)
	}
	if err := l.Bump(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	got := make(chan int64)
	go func() {
		u, g, err := l.Lock(ctx, "a")
		if err != nil {
			t.Error(err)
		}
		u()
		got <- g
	}()
	unlock()
	unlock() // idempotent: must not release someone else's hold
	if g := <-got; g != 1 {
		t.Errorf("generation after one Bump = %d, want 1", g)
	}
	u, _, err := l.Lock(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	short2, cancel2 := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel2()
	if _, _, err := l.Lock(short2, "a"); err == nil {
		t.Fatal("a double unlock released the lock held by the next owner")
	}
	u()
}

// countingLocker records the keys it locked.
type countingLocker struct {
	*LocalLocker
	locked []string
}

func (c *countingLocker) Lock(ctx context.Context, key string) (func(), int64, error) {
	c.locked = append(c.locked, key)
	return c.LocalLocker.Lock(ctx, key)
}

type limitLocker struct{ *countingLocker }

func (limitLocker) HoldLimit() time.Duration { return 7 * time.Second }

// Issue 16: no lock (no Lease) for a seed that is not configured or does not exist; a deleted
// seed whose lock already exists is still locked (its derived roles are still collected).
func TestSeedGuardAgainstMoto(t *testing.T) {
	e := motoEnv(t, "guard-seed", 2048)
	allow, _ := ParseAllowlist("arn:aws:iam::" + moto.AccountID + ":role/kubestash/*")
	inner := &countingLocker{LocalLocker: NewLocalLocker()}
	known := map[string]bool{}
	g := NewSeedGuard(inner, allow.Allows, e.api, func(_ context.Context, k string) (bool, error) { return known[k], nil })
	if _, ok := g.(holdLimiter); ok {
		t.Error("a guard over a LocalLocker claims a hold limit")
	}
	ctx := ctxT(t)

	outside := "arn:aws:iam::" + moto.AccountID + ":role/other/guard-seed"
	if _, _, err := g.Lock(ctx, outside); !errors.Is(err, ErrNotAllowed) {
		t.Fatalf("Lock of a seed outside the allowlist = %v", err)
	}
	if c := e.calls(); len(c) != 0 {
		t.Errorf("refusing a seed outside the allowlist cost IAM calls: %v", c)
	}
	missing := "arn:aws:iam::" + moto.AccountID + ":role/kubestash/no-such-seed"
	for range 3 {
		if _, _, err := g.Lock(ctx, missing); !errors.Is(err, ErrSeedMissing) {
			t.Fatalf("Lock of a missing seed = %v", err)
		}
	}
	if n := e.calls()["iam:GetRole"]; n != 1 {
		t.Errorf("missing seed looked up %d times, want 1 (cached)", n)
	}
	unlock, _, err := g.Lock(ctx, e.seed.String())
	if err != nil {
		t.Fatalf("Lock of an existing seed: %v", err)
	}
	unlock()
	known[missing] = true
	unlock, _, err = g.Lock(ctx, missing)
	if err != nil {
		t.Fatalf("Lock of a deleted seed whose lock exists: %v", err)
	}
	unlock()
	if len(inner.locked) != 2 || inner.locked[0] != e.seed.String() || inner.locked[1] != missing {
		t.Errorf("inner locker locked %v", inner.locked)
	}
	if h, ok := NewSeedGuard(limitLocker{inner}, allow.Allows, e.api, nil).(holdLimiter); !ok || h.HoldLimit() != 7*time.Second {
		t.Error("the guard hides the Lease locker's hold limit")
	}
	// Renewal passes through the guard when the wrapped locker renews, and only then (a guard
	// that claimed it would make every busy session try and log a failure).
	if _, ok := NewSeedGuard(limitLocker{inner}, allow.Allows, e.api, nil).(Renewer); ok {
		t.Error("a guard over a locker that cannot renew claims it can")
	}
	renewing := &renewingLocker{sessionCountingLocker: sessionCountingLocker{LocalLocker: NewLocalLocker()}, limit: 7 * time.Second}
	g = NewSeedGuard(renewing, allow.Allows, e.api, nil)
	if h, ok := g.(holdLimiter); !ok || h.HoldLimit() != 7*time.Second {
		t.Error("the guard hides the renewing locker's hold limit")
	}
	r, ok := g.(Renewer)
	if !ok {
		t.Fatal("the guard hides the Lease locker's renewal")
	}
	if _, err := r.Renew(ctx, e.seed.String()); err != nil || renewing.renewals.Load() != 1 {
		t.Errorf("Renew through the guard: %v, %d renewals reached the locker", err, renewing.renewals.Load())
	}
}
