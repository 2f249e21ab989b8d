package cluster

import "syscall"

// procAttr puts a child in its own process group and has the kernel kill
// it if the test or demo that started it dies first (a test timeout skips
// every cleanup): nothing is left running.
func procAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
