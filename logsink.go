package main

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"time"
)

// Defaults of serve's log sink (issue 18).
const (
	// logFlushInterval is the longest an INFO line waits in memory: what a crash (SIGKILL, the
	// OOM killer, a fatal runtime error) can lose. Panics in plugins are recovered and an orderly
	// shutdown flushes, so only such a crash loses lines, and at most this window's.
	logFlushInterval = 50 * time.Millisecond
	// logFlushBytes writes the buffer at once when it reaches this size: under load the lines go
	// out in writes of about this size (some seventy review lines), and memory stays bounded.
	logFlushBytes = 32 << 10
)

// lineBuffer is serve's log sink: an io.Writer that gathers the JSON log lines and writes them
// to w in batches, rather than one write system call per line. With one line per review, that
// call was 4 to 5 % of a review's CPU on the real binary under load (perf, issue 18); batched,
// it is shared by every line of the batch.
//
// A line is written at most interval after it was logged (a timer armed by the first line into
// an empty buffer, so an idle server never wakes up for it), at once when the buffer reaches
// limit, and by Flush (serve flushes after its last line, on every way out). Lines of level WARN
// and above are flushed as they are logged (flushOnLevel), so what may explain a crash is never
// the part lost in it.
//
// slog's handlers write each record with one Write call under their own lock, so lines are
// never interleaved or split; the order of Write calls is the order of the output.
type lineBuffer struct {
	w        io.Writer
	interval time.Duration
	limit    int

	// flushMu orders the writes to w: one batch at a time, in the order they were taken.
	flushMu sync.Mutex

	mu    sync.Mutex
	buf   []byte // the lines not yet taken by a flush
	spare []byte // the previous batch's storage, reused
	timer *time.Timer
	armed bool // a timer is pending for the lines in buf
	err   error
}

func newLineBuffer(w io.Writer, interval time.Duration, limit int) *lineBuffer {
	return &lineBuffer{w: w, interval: interval, limit: limit}
}

// Write buffers p, a whole line. It reports the error of an earlier write to w, as an
// unbuffered writer would have (slog drops it either way).
func (b *lineBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	b.buf = append(b.buf, p...)
	full := len(b.buf) >= b.limit
	if !full && !b.armed {
		b.armed = true
		if b.timer == nil {
			b.timer = time.AfterFunc(b.interval, func() { _ = b.Flush() })
		} else {
			b.timer.Reset(b.interval)
		}
	}
	err := b.err
	b.mu.Unlock()
	if full {
		if ferr := b.Flush(); err == nil {
			err = ferr
		}
	}
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

// Flush writes every buffered line to w.
func (b *lineBuffer) Flush() error {
	b.flushMu.Lock()
	defer b.flushMu.Unlock()
	b.mu.Lock()
	out := b.buf
	b.buf, b.spare = b.spare[:0], nil
	if b.armed {
		// The lines the timer was for are in out; the next line arms it again.
		b.timer.Stop()
		b.armed = false
	}
	b.mu.Unlock()
	if len(out) == 0 {
		b.mu.Lock()
		b.spare = out
		b.mu.Unlock()
		return nil
	}
	_, err := b.w.Write(out)
	b.mu.Lock()
	if out = out[:0]; cap(out) <= 4*b.limit {
		b.spare = out // a batch swollen by a huge line is not kept
	}
	if err != nil {
		b.err = err
	}
	b.mu.Unlock()
	return err
}

// flushOnLevel is a slog.Handler that flushes the sink after every record of level min or above.
type flushOnLevel struct {
	slog.Handler
	min   slog.Level
	flush func() error
}

func (h flushOnLevel) Handle(ctx context.Context, r slog.Record) error {
	err := h.Handler.Handle(ctx, r)
	if r.Level >= h.min {
		_ = h.flush()
	}
	return err
}

func (h flushOnLevel) WithAttrs(as []slog.Attr) slog.Handler {
	return flushOnLevel{Handler: h.Handler.WithAttrs(as), min: h.min, flush: h.flush}
}

func (h flushOnLevel) WithGroup(name string) slog.Handler {
	return flushOnLevel{Handler: h.Handler.WithGroup(name), min: h.min, flush: h.flush}
}
