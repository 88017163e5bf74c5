package main

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// The sweeper's leader-election timings are derived from one flag; too short a Lease or GC grace
// is refused before anything starts, and a disabled sweeper ignores both.
func TestSweeperLeaseDurationValidated(t *testing.T) {
	for _, tc := range []struct {
		name    string
		sweeper bool
		lease   time.Duration
		grace   time.Duration
		wantErr string
	}{
		{"too short", true, 2 * time.Second, time.Minute, "--sweeper-lease-duration 2s: must be at least 3s"},
		{"zero", true, 0, time.Minute, "--sweeper-lease-duration 0s"},
		{"minimum", true, 3 * time.Second, 10 * time.Second, ""},
		{"grace too short", true, 15 * time.Second, 5 * time.Second, "--gc-grace 5s: must be at least 10s"},
		{"grace zero", true, 15 * time.Second, 0, "--gc-grace 0s"},
		{"sweeper off ignores them", false, time.Second, 0, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// No provider and no cluster: nothing to start, only the flags are checked.
			p := providerConfig{namespaces: "*", sweeper: tc.sweeper, sweeperLease: tc.lease, gcGrace: tc.grace}
			_, err := p.build(context.Background(), deps{log: slog.New(slog.DiscardHandler), reg: prometheus.NewRegistry()})
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("build: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("build error = %v, want %q", err, tc.wantErr)
			}
		})
	}
}
