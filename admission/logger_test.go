package admission

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
)

// timeless drops the time field, the one thing two loggers write differently.
var timeField = regexp.MustCompile(`"time":"[^"]*",`)

func timeless(b []byte) string { return timeField.ReplaceAllString(string(b), "") }

// TestDeferredAttrsWritesWhatWithWrites: a logger over deferredAttrs writes the lines
// slog.Logger.With writes, whatever is logged through it, for the JSON handler serve uses.
func TestDeferredAttrsWritesWhatWithWrites(t *testing.T) {
	base := []slog.Attr{slog.String("uid", `u"<1>`), slog.String("kind", "Pod"), slog.String("namespace", ""), slog.String("name", "n\x00")}
	asAny := []any{}
	for _, a := range base {
		asAny = append(asAny, a)
	}
	for _, use := range []struct {
		name string
		log  func(*slog.Logger)
	}{
		{"info with attrs", func(l *slog.Logger) { l.Info("m", "a", 1, "b", "two", "uid", "again") }},
		{"no attrs", func(l *slog.Logger) { l.Warn("m") }},
		{"many attrs", func(l *slog.Logger) {
			l.Error("m", "a", 1, "b", 2, "c", 3, "d", 4, "e", 5, "f", 6, "g", []string{"x"}, "h", map[string]int{"k": 1})
		}},
		{"group attr", func(l *slog.Logger) { l.Info("m", slog.Group("g", "a", 1), slog.Group("empty")) }},
		{"empty attr", func(l *slog.Logger) { l.Info("m", slog.Attr{}, "a", 1) }},
		{"debug, disabled", func(l *slog.Logger) { l.Debug("m", "a", 1) }},
		{"With then log", func(l *slog.Logger) { l.With("w", 1).With().Info("m", "a", 2) }},
		{"WithGroup then log", func(l *slog.Logger) { l.WithGroup("grp").With("w", 1).Info("m", "a", 2) }},
		{"WithGroup empty", func(l *slog.Logger) { l.WithGroup("").Info("m", "a", 2) }},
		{"LogAttrs", func(l *slog.Logger) { l.LogAttrs(context.Background(), slog.LevelInfo, "m", slog.Int("a", 1)) }},
	} {
		var want, got bytes.Buffer
		opts := &slog.HandlerOptions{Level: slog.LevelInfo}
		use.log(slog.New(slog.NewJSONHandler(&want, opts)).With(asAny...))
		use.log(slog.New(&deferredAttrs{h: slog.NewJSONHandler(&got, opts), attrs: base}))
		if timeless(got.Bytes()) != timeless(want.Bytes()) {
			t.Errorf("%s:\n got  %s want %s", use.name, got.Bytes(), want.Bytes())
		}
	}
}

// TestOneLogLinePerReview: a review is logged once, with its uid, what plugins added to the line
// (Response.LogAttrs), and nothing formatted for the plugins' logger unless they use it, which
// then carries the uid and the object's coordinates.
func TestOneLogLinePerReview(t *testing.T) {
	var logs bytes.Buffer
	quiet := pluginFunc(func(_ context.Context, _ *Request, resp *Response) error {
		resp.LogAttrs = append(resp.LogAttrs, slog.String("holdReason", "r"))
		return nil
	})
	chatty := pluginFunc(func(_ context.Context, req *Request, _ *Response) error {
		req.Log.Info("plugin says", "x", 1)
		return nil
	})
	h := NewHandler(Options{Log: slog.New(slog.NewJSONHandler(&logs, nil)), Routes: []Route{
		{Path: "/quiet", Name: "pods", Kind: "Pod", Plugins: []Plugin{quiet}},
		{Path: "/chatty", Name: "pods", Kind: "Pod", Plugins: []Plugin{chatty}},
	}})
	body := `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u-1","kind":{"group":"","version":"v1","kind":"Pod"},"namespace":"ns","name":"p","operation":"CREATE","userInfo":{"username":"alice"},"object":{}}}`
	post := func(path string) []map[string]any {
		logs.Reset()
		req := httptest.NewRequest(http.MethodPost, path, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK {
			t.Fatalf("%s: HTTP %d", path, rec.Code)
		}
		var lines []map[string]any
		for _, l := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
			var m map[string]any
			if err := json.Unmarshal([]byte(l), &m); err != nil {
				t.Fatalf("log line %q: %v", l, err)
			}
			lines = append(lines, m)
		}
		return lines
	}
	lines := post("/quiet")
	if len(lines) != 1 {
		t.Fatalf("%d log lines, want 1: %v", len(lines), lines)
	}
	want := map[string]any{"level": "INFO", "msg": "review", "uid": "u-1", "route": "pods", "kind": "Pod", "namespace": "ns", "name": "p",
		"operation": "CREATE", "user": "alice", "dryRun": false, "decision": "allowed", "patchOps": 0.0, "warnings": 0.0, "holdReason": "r"}
	for k, v := range want {
		if lines[0][k] != v {
			t.Errorf("review line %s = %v, want %v (%v)", k, lines[0][k], v, lines[0])
		}
	}
	if _, ok := lines[0]["duration"].(float64); !ok {
		t.Errorf("review line without a duration in nanoseconds: %v", lines[0])
	}
	// The order is part of the format people grep: uid first, duration last.
	if l := logs.String(); !strings.Contains(l, `"msg":"review","uid":"u-1","route":"pods"`) || !strings.Contains(l, `"holdReason":"r","duration":`) {
		t.Errorf("review line fields out of order: %s", l)
	}

	lines = post("/chatty")
	if len(lines) != 2 || lines[0]["msg"] != "plugin says" || lines[1]["msg"] != "review" {
		t.Fatalf("want the plugin's line, then the review's: %v", lines)
	}
	for k, v := range map[string]any{"uid": "u-1", "kind": "Pod", "namespace": "ns", "name": "p", "x": 1.0} {
		if lines[0][k] != v {
			t.Errorf("plugin line %s = %v, want %v (%v)", k, lines[0][k], v, lines[0])
		}
	}
}
