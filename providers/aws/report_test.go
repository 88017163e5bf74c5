package aws

import (
	"bytes"
	"strings"
	"testing"
)

func TestCeilingOf(t *testing.T) {
	sub := func(n int) []string { return make([]string, n) }
	for _, tc := range []struct {
		name     string
		roles    []RoleInfo
		limit    int
		fill     float64
		subjects int
		room     int
		warn     bool
	}{
		{"no roles", nil, 100, 0, 0, 0, false},
		{"half of one role of two", []RoleInfo{{Owned: true, Chars: 1000, Quota: 2000, Subjects: sub(10)}}, 2, 0.25, 10, 30, false},
		{"foreign counts full", []RoleInfo{{Owned: true, Chars: 1000, Quota: 2000, Subjects: sub(10)}, {Owned: false, Chars: 300, Quota: 2000, Subjects: sub(1)}}, 2, 0.75, 10, 10, false},
		{"unreadable counts full", []RoleInfo{{Owned: true, Quota: 2000}, {Owned: true, Chars: 1200, Quota: 2000, Subjects: sub(12)}}, 2, 0.8, 12, 8, true},
		{"over a lowered limit", []RoleInfo{{Owned: true, Chars: 2000, Quota: 2000, Subjects: sub(20)}, {Owned: true, Chars: 2000, Quota: 2000, Subjects: sub(20)}}, 1, 2, 40, 0, true},
		{"empty roles only", []RoleInfo{{Owned: true, Chars: 200, Quota: 2000}}, 10, 0.01, 0, -1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := CeilingOf(tc.roles, tc.limit)
			if c.Fill != tc.fill || c.Subjects != tc.subjects || c.Room != tc.room || c.Roles != len(tc.roles) {
				t.Errorf("CeilingOf = %+v, want fill %v subjects %d room %d", c, tc.fill, tc.subjects, tc.room)
			}
			var b bytes.Buffer
			WriteCeiling(&b, c)
			if got := strings.Contains(b.String(), "WARNING"); got != tc.warn {
				t.Errorf("warning %v, want %v:\n%s", got, tc.warn, b.String())
			}
		})
	}
}
