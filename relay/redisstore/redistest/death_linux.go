package redistest

import (
	"os/exec"
	"syscall"
)

// setDeathSignal kills redis-server if the test binary dies first.
func setDeathSignal(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
