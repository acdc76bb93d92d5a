package sidecar

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// PID is the running sidecar's process id, or 0 when it is not running.
func (p *Process) PID() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || p.cmd.Process == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// PeakRSS is the running sidecar's peak resident set size in bytes, VmHWM
// in /proc/<pid>/status (Linux only): what the process held at most, since
// it started or since the last ResetPeakRSS.
func (p *Process) PeakRSS() (int64, error) {
	pid := p.PID()
	if pid == 0 {
		return 0, errors.New("sidecar: not running")
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("sidecar: reading its peak RSS: %w", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		value, ok := strings.CutPrefix(sc.Text(), "VmHWM:")
		if !ok {
			continue
		}
		// "VmHWM:    123456 kB"
		kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(value), "kB")), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("sidecar: parsing VmHWM %q: %w", value, err)
		}
		return kb << 10, nil
	}
	return 0, fmt.Errorf("sidecar: no VmHWM in /proc/%d/status", pid)
}

// ResetPeakRSS sets the running sidecar's peak resident set size to what it
// holds now, by writing 5 to /proc/<pid>/clear_refs ("Reset the peak
// resident set size", Linux 4.0 and later, for the process's owner:
// https://man.archlinux.org/man/proc_pid_clear_refs.5.en), so that PeakRSS
// afterwards measures only what came after.
func (p *Process) ResetPeakRSS() error {
	pid := p.PID()
	if pid == 0 {
		return errors.New("sidecar: not running")
	}
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0); err != nil {
		return fmt.Errorf("sidecar: resetting its peak RSS: %w", err)
	}
	return nil
}
