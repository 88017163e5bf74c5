package moto

import "syscall"

// procAttr puts moto in its own process group (so Stop can kill everything it
// spawned) and has the kernel SIGKILL it if the Go process dies without
// running cleanups, e.g. a test binary killed by -timeout.
func procAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
