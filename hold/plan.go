package hold

import (
	"errors"
	"time"
)

// Policy is the timing of a hold: how long a Job stays held at most, how often it is checked,
// and how long one check may take. The sweeper's Config carries the values (--max-hold).
type Policy struct {
	// MaxHold is how long a Job stays held at most; after it the Job is released anyway.
	MaxHold time.Duration
	// BackoffInitial and BackoffMax bound the delay between a held Job's checks.
	BackoffInitial, BackoffMax time.Duration
	// CheckTimeout bounds one credential check.
	CheckTimeout time.Duration
}

// Backoff is the delay before the attempt-th retry (attempt 0 is the first): initial doubled per
// attempt, at most max. The sweeper's other retries (finishing a ServiceAccount, a failed
// release patch) use it too.
func Backoff(attempt int, initial, max time.Duration) time.Duration {
	d := initial
	for i := 0; i < attempt && d < max; i++ {
		d *= 2
	}
	return min(d, max)
}

// Action is what to do with a held Job after a readiness check.
type Action int

const (
	// Wait: check again after Step.After.
	Wait Action = iota
	// Release: the credentials work; resume the Job.
	Release
	// ReleaseWithoutCredentials: MaxHold has passed; resume it anyway, with a Warning Event, so
	// the backup fails visibly instead of hanging.
	ReleaseWithoutCredentials
)

func (a Action) String() string {
	switch a {
	case Release:
		return "Release"
	case ReleaseWithoutCredentials:
		return "ReleaseWithoutCredentials"
	}
	return "Wait"
}

// Step is the outcome of Plan.
type Step struct {
	Action Action
	// After is the delay before the next check (Wait only).
	After time.Duration
}

// Plan decides what to do with a Job held since heldSince, after its attempt-th failed check
// when it is not ready. The next check never lands after the MaxHold deadline, so a Job is
// released on time even while its backoff is long.
func Plan(heldSince time.Time, ready bool, attempt int, now time.Time, p Policy) Step {
	if ready {
		return Step{Action: Release}
	}
	deadline := heldSince.Add(p.MaxHold)
	left := deadline.Sub(now)
	if left <= 0 {
		return Step{Action: ReleaseWithoutCredentials}
	}
	return Step{Action: Wait, After: min(Backoff(attempt, p.BackoffInitial, p.BackoffMax), left)}
}

// Causes of a readiness check's context ending, to tell a check cut short by the Job's max hold
// from a slow cloud.
var (
	ErrMaxHoldReached = errors.New("max hold reached")
	ErrCheckTimeout   = errors.New("credential check timed out")
)

// CheckDeadline bounds the readiness check of a Job held since heldSince: CheckTimeout from now,
// but never past the max-hold deadline, so a slow cloud (STS under faults) cannot keep a Job
// held beyond --max-hold. cause says which bound applies. ok is false once the max-hold deadline
// has passed: no cloud call is worth making then, the Job is released without credentials.
func CheckDeadline(heldSince, now time.Time, p Policy) (deadline time.Time, cause error, ok bool) {
	maxHold := heldSince.Add(p.MaxHold)
	if !now.Before(maxHold) {
		return maxHold, ErrMaxHoldReached, false
	}
	if timeout := now.Add(p.CheckTimeout); timeout.Before(maxHold) {
		return timeout, ErrCheckTimeout, true
	}
	return maxHold, ErrMaxHoldReached, true
}
