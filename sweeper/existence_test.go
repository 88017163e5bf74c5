package sweeper

import (
	"testing"
	"time"
)

func TestGone(t *testing.T) {
	now := time.Date(2026, 5, 6, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		first time.Time
		want  bool
	}{
		{time.Time{}, false},
		{now, false},
		{now.Add(-59 * time.Second), false},
		{now.Add(-time.Minute), true},
		{now.Add(-time.Hour), true},
	} {
		if got := Gone(tc.first, now, time.Minute); got != tc.want {
			t.Errorf("Gone(first %v) = %v, want %v", tc.first, got, tc.want)
		}
	}
}
