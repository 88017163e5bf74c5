package admission

import (
	"context"
	"log/slog"
	"slices"
)

// deferredAttrs is slog.Logger.With without the cost until something is logged: With makes a
// JSON handler copy itself and format the attributes at once, twice per review (uid, then the
// object's coordinates for the plugins), for loggers that plugins rarely use. This handler keeps
// the attributes and puts them in front of a record's own when one is handled, which a handler
// writes exactly as it writes With's attributes (no group is open: WithGroup falls back to the
// handler's own With).
type deferredAttrs struct {
	h     slog.Handler
	attrs []slog.Attr
}

func (d *deferredAttrs) Enabled(ctx context.Context, l slog.Level) bool { return d.h.Enabled(ctx, l) }

func (d *deferredAttrs) Handle(ctx context.Context, r slog.Record) error {
	nr := slog.NewRecord(r.Time, r.Level, r.Message, r.PC)
	nr.AddAttrs(d.attrs...)
	r.Attrs(func(a slog.Attr) bool {
		nr.AddAttrs(a)
		return true
	})
	return d.h.Handle(ctx, nr)
}

func (d *deferredAttrs) WithAttrs(as []slog.Attr) slog.Handler {
	if len(as) == 0 {
		return d
	}
	return &deferredAttrs{h: d.h, attrs: append(slices.Clip(d.attrs), as...)}
}

func (d *deferredAttrs) WithGroup(name string) slog.Handler {
	if name == "" {
		return d
	}
	return d.h.WithAttrs(d.attrs).WithGroup(name)
}
