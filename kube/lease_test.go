package kube

import (
	"testing"
	"time"
)

// Leases count whole seconds and reject 0: any duration must become at least one second,
// rounded up, or every lock would fail with an invalid Lease.
func TestLeaseDurationRoundsUpToWholeSeconds(t *testing.T) {
	for in, want := range map[time.Duration]time.Duration{
		0:                       30 * time.Second,
		500 * time.Millisecond:  time.Second,
		time.Second:             time.Second,
		1500 * time.Millisecond: 2 * time.Second,
		30 * time.Second:        30 * time.Second,
	} {
		if got := NewLeaseLocker(nil, "ns", "id", in, nil).duration; got != want {
			t.Errorf("NewLeaseLocker(%v).duration = %v, want %v", in, got, want)
		}
	}
}
