//go:build !linux

package bench

import "syscall"

// childAttr: only Linux kills children when their parent dies; elsewhere
// the harness relies on Stop.
func childAttr(bool) *syscall.SysProcAttr { return nil }
