package moto_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.klusters.dev/credential-webhook/testenv/moto"
)

const orphanHelperEnv = "MOTO_TEST_ORPHAN_HELPER"

// A test binary killed by -timeout exits without running cleanups; moto
// must not survive it.
func TestNoOrphanWhenTestProcessDies(t *testing.T) {
	if os.Getenv(orphanHelperEnv) == "1" {
		s, err := moto.StartProcess(context.Background(), nil)
		if err != nil {
			fmt.Println("ERR", err)
			os.Exit(2)
		}
		fmt.Printf("PID %d\n", s.Pid())
		os.Exit(1) // no Stop, no cleanups
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestNoOrphanWhenTestProcessDies$")
	cmd.Env = append(os.Environ(), orphanHelperEnv+"=1")
	out, _ := cmd.Output()
	var pid int
	for line := range strings.Lines(string(out)) {
		if rest, ok := strings.CutPrefix(line, "PID "); ok {
			pid, _ = strconv.Atoi(strings.TrimSpace(rest))
		}
	}
	if pid == 0 {
		t.Fatalf("helper did not start moto:\n%s", out)
	}
	deadline := time.Now().Add(20 * time.Second)
	for groupAlive(pid) {
		if time.Now().After(deadline) {
			_ = syscall.Kill(-pid, syscall.SIGKILL)
			t.Fatalf("moto process group %d survived the death of the process that started it", pid)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// groupAlive reports whether any non-zombie process is in process group pgid.
// Zombies count as dead: whether PID 1 reaps them promptly is not ours to test.
func groupAlive(pgid int) bool {
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, path := range stats {
		b, err := os.ReadFile(path)
		if err != nil {
			continue // exited meanwhile
		}
		// Fields after the parenthesised command: state ppid pgrp ...
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) < 3 || f[0] == "Z" {
			continue
		}
		if g, _ := strconv.Atoi(f[2]); g == pgid {
			return true
		}
	}
	return false
}
