// Package sidecar builds this repository's Caddy (Caddy's standard modules
// plus oauth2_upstream) and runs it as a child process with a generated
// Caddyfile, for the end-to-end tests and the demo: the real binary, as
// users run it, on loopback ports chosen by the kernel.
package sidecar

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Bounds on starting and stopping a sidecar.
const (
	readyTimeout = 30 * time.Second
	stopTimeout  = 15 * time.Second
	pollInterval = 10 * time.Millisecond
)

// Build builds repoDir's ./cmd/caddy into dir and returns the binary's path.
func Build(ctx context.Context, repoDir, dir string) (string, error) {
	bin := filepath.Join(dir, "caddy")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/caddy")
	cmd.Dir = repoDir
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/caddy in %s: %v\n%s", repoDir, err, out)
	}
	return bin, nil
}

// FreePort returns a loopback port that the kernel just handed out and that
// nothing listens on any more.
func FreePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	port := ln.Addr().(*net.TCPAddr).Port
	return port, ln.Close()
}

// Options describe one sidecar.
type Options struct {
	// Bin is the Caddy binary from Build.
	Bin string
	// Dir receives the Caddyfile, the log and Caddy's home (data, config
	// and temporary files), so that processes share nothing by accident.
	Dir string
	// Port is the port to serve on; 0 picks one with FreePort.
	Port int
	// Handler is the body of the oauth2_upstream block, one option a line.
	Handler string
	// Upstream is the reverse_proxy upstream, such as "127.0.0.1:8081" or a
	// placeholder.
	Upstream string
	// Proxy is the body of the reverse_proxy block, empty for none.
	Proxy string
	// Env is added to the child's environment (NAME=value), for {env.*}.
	Env []string
	// Debug logs at DEBUG level: the handler's replay lines and Caddy's
	// upstream round trips (with credentials redacted).
	Debug bool
	// LogPath is where the child's standard error and output go, appended
	// across runs. Default: caddy.log in Dir.
	LogPath string
}

// Process is a running (or stopped) sidecar. Start it again with Start after
// Stop or Kill: same port, same Caddyfile, same keystore, and its log goes
// on in the same file.
type Process struct {
	Addr    string // 127.0.0.1:port
	LogPath string // the child's standard error and output, appended across runs

	opts      Options
	caddyfile string
	env       []string
	mu        sync.Mutex // guards cmd and exited
	cmd       *exec.Cmd
	exited    chan struct{} // closed when cmd has been waited for
	exitErr   error         // set before exited is closed
}

// New writes the Caddyfile of a sidecar and returns it, not yet started.
func New(opts Options) (*Process, error) {
	if opts.Port == 0 {
		port, err := FreePort()
		if err != nil {
			return nil, fmt.Errorf("choosing a port: %w", err)
		}
		opts.Port = port
	}
	home := filepath.Join(opts.Dir, "home")
	tmp := filepath.Join(opts.Dir, "tmp")
	for _, d := range []string{home, tmp} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
	}
	p := &Process{
		Addr:    net.JoinHostPort("127.0.0.1", strconv.Itoa(opts.Port)),
		LogPath: opts.LogPath,
		opts:    opts,
	}
	if p.LogPath == "" {
		p.LogPath = filepath.Join(opts.Dir, "caddy.log")
	}
	p.caddyfile = filepath.Join(opts.Dir, "Caddyfile")
	if err := os.WriteFile(p.caddyfile, []byte(Caddyfile(opts)), 0o600); err != nil {
		return nil, err
	}
	// The child gets its own home: Caddy's data directory (and so the
	// default file keystore), its config directory and $TMPDIR (where
	// replay bodies beyond replay_memory go).
	p.env = append(os.Environ(),
		"HOME="+home, "XDG_DATA_HOME="+home, "XDG_CONFIG_HOME="+home, "TMPDIR="+tmp)
	p.env = append(p.env, opts.Env...)
	return p, nil
}

// URL is the sidecar's base URL.
func (p *Process) URL() string { return "http://" + p.Addr }

// Caddyfile renders the configuration of a sidecar serving plain HTTP on
// 127.0.0.1:opts.Port, with the admin API off.
func Caddyfile(opts Options) string {
	var b strings.Builder
	b.WriteString("{\n\tadmin off\n\tpersist_config off\n")
	if opts.Debug {
		b.WriteString("\tlog {\n\t\tlevel DEBUG\n\t}\n")
	}
	b.WriteString("}\n\n")
	fmt.Fprintf(&b, "http://127.0.0.1:%d {\n\tbind 127.0.0.1\n", opts.Port)
	b.WriteString("\toauth2_upstream {\n")
	writeIndented(&b, opts.Handler, "\t\t")
	b.WriteString("\t}\n")
	fmt.Fprintf(&b, "\treverse_proxy %s", opts.Upstream)
	if strings.TrimSpace(opts.Proxy) == "" {
		b.WriteString("\n")
	} else {
		b.WriteString(" {\n")
		writeIndented(&b, opts.Proxy, "\t\t")
		b.WriteString("\t}\n")
	}
	b.WriteString("}\n")
	return b.String()
}

// writeIndented writes text's lines at indent, nesting blocks one tab deeper.
func writeIndented(b *strings.Builder, text, indent string) {
	depth := 0
	for _, line := range strings.Split(strings.TrimSpace(text), "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		if strings.HasPrefix(line, "}") && depth > 0 {
			depth--
		}
		b.WriteString(indent + strings.Repeat("\t", depth) + line + "\n")
		if strings.HasSuffix(line, "{") {
			depth++
		}
	}
}

// Start runs the sidecar and waits until it accepts connections.
func (p *Process) Start(ctx context.Context) error {
	p.mu.Lock()
	if p.cmd != nil {
		p.mu.Unlock()
		return errors.New("sidecar: already running")
	}
	logFile, err := os.OpenFile(p.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		p.mu.Unlock()
		return err
	}
	defer logFile.Close()
	cmd := exec.Command(p.opts.Bin, "run", "--config", p.caddyfile, "--adapter", "caddyfile")
	cmd.Env = p.env
	cmd.Dir = p.opts.Dir
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		p.mu.Unlock()
		return fmt.Errorf("sidecar: start: %w", err)
	}
	exited := make(chan struct{})
	p.cmd, p.exited = cmd, exited
	p.mu.Unlock()
	go func() {
		err := cmd.Wait()
		p.mu.Lock()
		p.exitErr = err
		p.mu.Unlock()
		close(exited)
	}()
	if err := p.waitReady(ctx, exited); err != nil {
		_ = p.Kill()
		return fmt.Errorf("sidecar on %s: %w\n%s", p.Addr, err, tail(p.LogPath, 30))
	}
	return nil
}

// waitReady polls the listener until it accepts a connection.
func (p *Process) waitReady(ctx context.Context, exited <-chan struct{}) error {
	deadline := time.Now().Add(readyTimeout)
	for {
		conn, err := net.DialTimeout("tcp", p.Addr, time.Second)
		if err == nil {
			return conn.Close()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not accepting connections after %s: %v", readyTimeout, err)
		}
		select {
		case <-exited:
			return fmt.Errorf("exited before it was ready: %v", p.exitError())
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(pollInterval):
		}
	}
}

func (p *Process) exitError() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.exitErr
}

// Stop sends SIGTERM (Caddy then stops gracefully, letting refreshes in
// flight store their result), waits for the exit, and kills the process if
// it has not exited within stopTimeout. It returns how the process exited.
func (p *Process) Stop() error { return p.signal(syscall.SIGTERM) }

// Kill sends SIGKILL, as a crash or an OOM kill would, and waits.
func (p *Process) Kill() error {
	err := p.signal(syscall.SIGKILL)
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		return nil // killed, as asked
	}
	return err
}

func (p *Process) signal(sig syscall.Signal) error {
	p.mu.Lock()
	cmd, exited := p.cmd, p.exited
	p.cmd = nil
	p.mu.Unlock()
	if cmd == nil {
		return nil
	}
	_ = cmd.Process.Signal(sig)
	select {
	case <-exited:
	case <-time.After(stopTimeout):
		_ = cmd.Process.Kill()
		<-exited
		return fmt.Errorf("sidecar on %s did not exit within %s of %v; killed", p.Addr, stopTimeout, sig)
	}
	return p.exitError()
}

// tail returns the last n lines of the file at path, for error messages.
func tail(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
