//go:build !linux

package cluster

import "syscall"

// procAttr puts a child in its own process group. Outside Linux there is
// no parent-death signal: Close must run to stop the children.
func procAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
