package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"
)

// Bounds on starting and stopping a server under test.
const (
	startTimeout = 30 * time.Second
	stopTimeout  = 5 * time.Second
)

// healthPath is answered by every server under test without reaching the
// handler or the upstream, to tell when it is ready.
const healthPath = "/healthz"

// BuildCaddy builds the repository's Caddy (../cmd/caddy: the standard
// modules and oauth2_upstream) from repoDir into dir and returns its path.
func BuildCaddy(ctx context.Context, repoDir, dir string) (string, error) {
	bin := filepath.Join(dir, "caddy")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/caddy")
	cmd.Dir = repoDir
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/caddy in %s: %v\n%s", repoDir, err, out)
	}
	return bin, nil
}

// Process is a server under test running as a child process.
type Process struct {
	Name      string
	Addr      string // host:port it serves on
	AdminAddr string // host:port of Caddy's admin API, when it serves one
	Log       string // its standard output and error

	cmd    *exec.Cmd
	exited chan struct{}
	err    error // how it exited, set before exited is closed
	pgid   bool  // it leads its own process group (nginx's workers)
}

// Pid is the process id, for /proc.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// StartCaddy runs the Caddy binary bin with the config of spec. It serves
// on "fd/3" (and its admin API on "fd/4"): loopback listeners on
// kernel-chosen ports that the child inherits, so no port is picked and
// released before Caddy binds it. dir receives the config, the log, Caddy's
// data and its temporary files.
func StartCaddy(ctx context.Context, name, bin, dir string, spec CaddySpec) (*Process, error) {
	listeners := 1
	if spec.Admin {
		listeners = 2
	}
	files, addrs, err := inheritableListeners(listeners)
	if err != nil {
		return nil, err
	}
	defer func() { // the child has its own copies
		for _, f := range files {
			f.Close()
		}
	}()
	home := filepath.Join(dir, "home")
	tmp := filepath.Join(dir, "tmp")
	for _, d := range []string{home, tmp} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
	}
	cfgPath := filepath.Join(dir, "caddy.json")
	if err := os.WriteFile(cfgPath, caddyConfig(spec), 0o600); err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "run", "--config", cfgPath)
	cmd.ExtraFiles = files // fd 3, fd 4
	cmd.Env = append(os.Environ(),
		"HOME="+home, "XDG_DATA_HOME="+home, "XDG_CONFIG_HOME="+home,
		"TMPDIR="+tmp) // where replay bodies beyond replay_memory go
	p := &Process{Name: name, Addr: addrs[0], Log: filepath.Join(dir, "caddy.log"), cmd: cmd}
	if spec.Admin {
		p.AdminAddr = addrs[1]
	}
	return p, p.start(ctx)
}

// inheritableListeners opens n loopback listeners on kernel-chosen ports
// and returns them as files for a child process, with their addresses.
func inheritableListeners(n int) ([]*os.File, []string, error) {
	var (
		files []*os.File
		addrs []string
	)
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, nil, errors.Join(err, closeAll(files))
		}
		f, err := ln.(*net.TCPListener).File()
		ln.Close()
		if err != nil {
			return nil, nil, errors.Join(err, closeAll(files))
		}
		files, addrs = append(files, f), append(addrs, ln.Addr().String())
	}
	return files, addrs, nil
}

func closeAll(files []*os.File) error {
	var errs []error
	for _, f := range files {
		errs = append(errs, f.Close())
	}
	return errors.Join(errs...)
}

// start starts p.cmd with its output in p.Log and waits until it answers
// its health path.
func (p *Process) start(ctx context.Context) error { return p.startWith(ctx, healthReady) }

// startWith starts p.cmd with its output in p.Log and waits until ready
// (p.Addr) succeeds.
func (p *Process) startWith(ctx context.Context, ready func(addr string) error) error {
	logFile, err := os.Create(p.Log)
	if err != nil {
		return err
	}
	defer logFile.Close()
	p.cmd.Stdout, p.cmd.Stderr = logFile, logFile
	p.cmd.SysProcAttr = childAttr(p.pgid)
	if err := p.cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", p.Name, err)
	}
	p.exited = make(chan struct{})
	go func() {
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	if err := p.waitReady(ctx, ready); err != nil {
		p.Stop()
		return fmt.Errorf("%s: %w\n%s", p.Name, err, p.tail())
	}
	return nil
}

// healthReady answers whether the server at addr answers 200 on its health
// path.
func healthReady(addr string) error {
	resp, err := readinessClient.Get("http://" + addr + healthPath)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s answered %s", healthPath, resp.Status)
	}
	return nil
}

var readinessClient = &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// waitReady polls ready until it succeeds, the process exits, or
// startTimeout passes.
func (p *Process) waitReady(ctx context.Context, ready func(addr string) error) error {
	deadline := time.Now().Add(startTimeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		err := ready(p.Addr)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready after %s (last: %v)", startTimeout, err)
		}
		select {
		case <-p.exited:
			return fmt.Errorf("exited before it was ready: %v", p.err)
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// Stop asks the process to stop, kills it (and its process group, for
// nginx's workers) when it has not stopped within stopTimeout, and waits.
func (p *Process) Stop() {
	if p.exited == nil {
		return
	}
	select {
	case <-p.exited:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	timer := time.NewTimer(stopTimeout)
	defer timer.Stop()
	select {
	case <-p.exited:
	case <-timer.C:
		p.cmd.Process.Kill()
		<-p.exited
	}
	if p.pgid {
		// Workers whose master died without them.
		syscall.Kill(-p.Pid(), syscall.SIGKILL)
	}
}

// tail is the end of the process's log, for error messages.
func (p *Process) tail() string {
	data, _ := os.ReadFile(p.Log)
	if len(data) > 4000 {
		data = data[len(data)-4000:]
	}
	return string(data)
}
