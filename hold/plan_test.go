package hold

import (
	"testing"
	"time"
)

func TestBackoff(t *testing.T) {
	for _, tc := range []struct {
		attempt int
		want    time.Duration
	}{
		{0, time.Second}, {1, 2 * time.Second}, {2, 4 * time.Second}, {3, 8 * time.Second},
		{4, 16 * time.Second}, {5, 30 * time.Second}, {6, 30 * time.Second}, {1000, 30 * time.Second},
	} {
		if got := Backoff(tc.attempt, time.Second, 30*time.Second); got != tc.want {
			t.Errorf("Backoff(%d) = %s, want %s", tc.attempt, got, tc.want)
		}
	}
}

func TestPlan(t *testing.T) {
	p := Policy{MaxHold: 10 * time.Minute, BackoffInitial: time.Second, BackoffMax: 30 * time.Second}
	held := time.Date(2026, 5, 6, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name    string
		age     time.Duration
		ready   bool
		attempt int
		want    Step
	}{
		{"ready at once", 0, true, 0, Step{Action: Release}},
		{"ready after max hold is a normal release", 20 * time.Minute, true, 9, Step{Action: Release}},
		{"first retry", 2 * time.Second, false, 0, Step{Action: Wait, After: time.Second}},
		{"backoff grows", 10 * time.Second, false, 3, Step{Action: Wait, After: 8 * time.Second}},
		{"backoff capped", time.Minute, false, 12, Step{Action: Wait, After: 30 * time.Second}},
		{"next check lands on the deadline", 10*time.Minute - 5*time.Second, false, 12, Step{Action: Wait, After: 5 * time.Second}},
		{"max hold reached", 10 * time.Minute, false, 30, Step{Action: ReleaseWithoutCredentials}},
		{"long past max hold (leader was down)", 3 * time.Hour, false, 0, Step{Action: ReleaseWithoutCredentials}},
		{"held-since in the future (clock skew) waits", -time.Minute, false, 0, Step{Action: Wait, After: time.Second}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Plan(held, tc.ready, tc.attempt, held.Add(tc.age), p); got != tc.want {
				t.Errorf("Plan = %v after %s, want %v after %s", got.Action, got.After, tc.want.Action, tc.want.After)
			}
		})
	}
}

func TestCheckDeadline(t *testing.T) {
	p := Policy{MaxHold: 10 * time.Minute, CheckTimeout: 30 * time.Second}
	held := time.Date(2026, 5, 6, 12, 0, 0, 0, time.UTC)
	maxHold := held.Add(10 * time.Minute)
	for _, tc := range []struct {
		name         string
		age          time.Duration
		wantDeadline time.Time
		wantCause    error
		wantOK       bool
	}{
		{"fresh hold: the check timeout", time.Minute, held.Add(time.Minute + 30*time.Second), ErrCheckTimeout, true},
		{"less than a check left: the max-hold deadline", 10*time.Minute - 4*time.Second, maxHold, ErrMaxHoldReached, true},
		{"exactly a check left", 10*time.Minute - 30*time.Second, maxHold, ErrMaxHoldReached, true},
		{"at the deadline: no check", 10 * time.Minute, maxHold, ErrMaxHoldReached, false},
		{"long past (leader was down): no check", 3 * time.Hour, maxHold, ErrMaxHoldReached, false},
		{"held-since in the future (clock skew): the check timeout", -time.Minute, held.Add(-time.Minute + 30*time.Second), ErrCheckTimeout, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, cause, ok := CheckDeadline(held, held.Add(tc.age), p)
			if !d.Equal(tc.wantDeadline) || cause != tc.wantCause || ok != tc.wantOK {
				t.Errorf("CheckDeadline = %s, %v, %v; want %s, %v, %v", d, cause, ok, tc.wantDeadline, tc.wantCause, tc.wantOK)
			}
		})
	}
}
