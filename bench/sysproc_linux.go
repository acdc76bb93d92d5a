package bench

import "syscall"

// childAttr makes the kernel kill a server under test when the harness
// dies, so none outlives it; group puts it in its own process group.
func childAttr(group bool) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: group}
}
