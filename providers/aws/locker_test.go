package aws

import (
	"context"
	"errors"
	"testing"
	"time"
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
