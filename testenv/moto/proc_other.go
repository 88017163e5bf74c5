//go:build unix && !linux

package moto

import "syscall"

// procAttr puts moto in its own process group so Stop can kill everything it
// spawned. (No parent-death signal outside Linux.)
func procAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
