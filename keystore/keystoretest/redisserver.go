package keystoretest

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// redisStartTimeout bounds waiting for a redis-server to say it is ready.
const redisStartTimeout = 10 * time.Second

// RedisServer is a redis-server process a test started on a loopback port,
// without persistence, stopped when the test ends.
type RedisServer struct {
	addr     string
	args     []string
	password string // from --requirepass in args
	cmd      *exec.Cmd
	exits    chan struct{} // closed when the process has exited
}

// StartRedis starts a redis-server with the extra command-line args on a
// port the kernel chose. Without the binary the test is skipped, or fails
// under CI (CI set in the environment), which must install it.
func StartRedis(t *testing.T, args ...string) *RedisServer {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("redis-server not found (CI must install it): %v", err)
		}
		t.Skipf("redis-server not found, so the redis keystore is not tested: %v", err)
	}
	var err error
	// The port is free when chosen, but another process may take it
	// before redis-server binds it: then try another.
	for range 3 {
		s := &RedisServer{addr: freeLoopbackAddr(t), args: args}
		if i := slices.Index(args, "--requirepass"); i >= 0 && i+1 < len(args) {
			s.password = args[i+1]
		}
		if err = s.Start(t); err == nil {
			return s
		}
	}
	t.Fatal(err)
	return nil
}

func freeLoopbackAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// Addr is the host:port the server listens on.
func (s *RedisServer) Addr() string { return s.addr }

// Start runs redis-server on the server's address (again, after Stop) and
// waits until its log says it accepts connections and it answers PING. It
// starts empty: the server keeps no data across restarts.
func (s *RedisServer) Start(t *testing.T) error {
	t.Helper()
	_, port, _ := net.SplitHostPort(s.addr)
	args := append([]string{"--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--dir", t.TempDir(), "--logfile", "", "--daemonize", "no"}, s.args...)
	s.cmd = exec.Command("redis-server", args...)
	stdout, err := s.cmd.StdoutPipe()
	if err != nil {
		return fmt.Errorf("piping the output of redis-server: %w", err)
	}
	s.cmd.Stderr = s.cmd.Stdout
	if err := s.cmd.Start(); err != nil {
		return fmt.Errorf("starting redis-server: %w", err)
	}
	s.exits = make(chan struct{})
	ready := make(chan struct{})
	var log strings.Builder
	go func() {
		defer close(s.exits)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if log.Len() < 8<<10 {
				log.WriteString(sc.Text() + "\n")
			}
			if strings.Contains(sc.Text(), "Ready to accept connections") {
				close(ready)
				break
			}
		}
		io.Copy(io.Discard, stdout) // keep the server from blocking on its log
		s.cmd.Wait()
	}()
	t.Cleanup(func() { s.Stop(t) })
	select {
	case <-ready:
	case <-s.exits:
		return fmt.Errorf("redis-server on %s exited before it was ready:\n%s", s.addr, log.String())
	case <-time.After(redisStartTimeout):
		s.Stop(t)
		return fmt.Errorf("redis-server on %s not ready after %v", s.addr, redisStartTimeout)
	}
	return s.Client(t).Ping(t.Context()).Err()
}

// Stop kills the server and waits until it has exited.
func (s *RedisServer) Stop(t *testing.T) {
	t.Helper()
	if err := s.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		t.Errorf("killing redis-server: %v", err)
	}
	<-s.exits
}

// Client is a connection for the test itself, to look behind the store,
// closed when the test ends.
func (s *RedisServer) Client(t *testing.T) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: s.addr, Password: s.password, MaxRetries: -1, DisableIdentity: true})
	t.Cleanup(func() { c.Close() })
	return c
}
