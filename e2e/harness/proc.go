package harness

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// process is one child process in its own process group. The kernel kills it (SIGKILL) when the
// test binary dies without running cleanups (e.g. killed by -timeout), so a failing or aborted
// run leaves nothing behind.
type process struct {
	name    string
	cmd     *exec.Cmd
	out     *logBuffer
	exited  chan struct{}
	waitErr error // valid once exited is closed
}

type processSpec struct {
	name string
	bin  string
	args []string
	env  []string // nil: inherit the test's environment
	dir  string
	// logFile also receives the output (kept after the run for post-mortems); optional.
	logFile string
	// out receives the output too; nil: a new buffer keeping only the last lines in memory.
	out *logBuffer
}

func startProcess(spec processSpec) (*process, error) {
	out := spec.out
	if out == nil {
		out = &logBuffer{}
	}
	var w io.Writer = out
	var file *os.File
	if spec.logFile != "" {
		f, err := os.OpenFile(spec.logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return nil, fmt.Errorf("%s: open log: %w", spec.name, err)
		}
		file = f
		w = io.MultiWriter(out, f)
	}
	closeFile := func() {
		if file != nil {
			_ = file.Close()
		}
	}
	cmd := exec.Command(spec.bin, spec.args...)
	cmd.Env = spec.env
	cmd.Dir = spec.dir
	cmd.Stdout = w
	cmd.Stderr = w
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		closeFile()
		return nil, fmt.Errorf("%s: start %s: %w", spec.name, spec.bin, err)
	}
	p := &process{name: spec.name, cmd: cmd, out: out, exited: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		closeFile()
		close(p.exited)
	}()
	return p, nil
}

func (p *process) pid() int { return p.cmd.Process.Pid }

func (p *process) running() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// exitError describes how the process ended; call only after exited is closed.
func (p *process) exitError() error {
	if p.waitErr == nil {
		return fmt.Errorf("%s exited with status 0", p.name)
	}
	return fmt.Errorf("%s exited: %w", p.name, p.waitErr)
}

// errGraceExceeded is returned (wrapped) by stop when the process had to be killed.
var errGraceExceeded = errors.New("grace period exceeded, killed")

// stop sends SIGTERM to the process group, waits up to grace, then SIGKILLs the group and
// returns an error wrapping errGraceExceeded: a graceful stop that does not finish is a bug.
func (p *process) stop(grace time.Duration) error {
	if !p.running() {
		return nil
	}
	if err := syscall.Kill(-p.pid(), syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("%s: SIGTERM: %w", p.name, err)
	}
	select {
	case <-p.exited:
		return nil
	case <-time.After(grace):
	}
	if err := p.kill(); err != nil {
		return err
	}
	return fmt.Errorf("%s (pid %d) did not exit within %s of SIGTERM: %w", p.name, p.pid(), grace, errGraceExceeded)
}

// kill SIGKILLs the whole process group and waits for the process.
func (p *process) kill() error {
	if err := syscall.Kill(-p.pid(), syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("%s: SIGKILL: %w", p.name, err)
	}
	select {
	case <-p.exited:
		return nil
	case <-time.After(15 * time.Second):
		return fmt.Errorf("%s (pid %d) did not exit after SIGKILL", p.name, p.pid())
	}
}

// logBuffer is the process's stdout and stderr, written from os/exec's copying goroutines while
// tests read it.
type logBuffer struct {
	mu   sync.Mutex
	keep bool
	buf  bytes.Buffer
	tail tailBuffer
	file *os.File // optional copy (used for moto's log, whose writer is not a process of ours)
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.keep {
		b.buf.Write(p)
	}
	b.tail.write(p)
	if b.file != nil {
		_, _ = b.file.Write(p)
	}
	return len(p), nil
}

func (b *logBuffer) bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.keep {
		return bytes.Clone(b.buf.Bytes())
	}
	return b.tail.bytes()
}

// lastBytes returns the end of the output, for error messages.
func (b *logBuffer) lastBytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.tail.bytes()
}

func (b *logBuffer) close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.file != nil {
		_ = b.file.Close()
		b.file = nil
	}
}

// tailBuffer keeps the last tailSize bytes written.
type tailBuffer struct{ b []byte }

const tailSize = 16 << 10

func (t *tailBuffer) write(p []byte) {
	t.b = append(t.b, p...)
	if len(t.b) > 2*tailSize {
		t.b = append(t.b[:0], t.b[len(t.b)-tailSize:]...)
	}
}

func (t *tailBuffer) bytes() []byte {
	if len(t.b) > tailSize {
		return bytes.Clone(t.b[len(t.b)-tailSize:])
	}
	return bytes.Clone(t.b)
}
