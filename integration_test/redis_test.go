package integration_test

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/oauth2upstream/caddy-oauth2-upstream/integration_test/sidecar"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore/redis"
)

// redisReadyTimeout bounds waiting for redis-server to answer PING.
const redisReadyTimeout = 15 * time.Second

// redisServer is a redis-server child process on a kernel-chosen loopback
// port, started again on the same port (and data directory) after kill.
type redisServer struct {
	addr string
	args []string
	log  string

	mu   sync.Mutex // guards cmd and done
	cmd  *exec.Cmd
	done chan struct{}
}

// startRedis runs redis-server, or skips the test when it is not installed
// (and fails it when CI is set: CI must have it). A durable server writes
// every command to its append-only file before answering (appendfsync
// always), so a kill loses nothing; otherwise it keeps nothing on disk.
func startRedis(t *testing.T, durable bool) *redisServer {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("redis-server is not installed: %v", err)
		}
		t.Skipf("redis-server is not installed: %v", err)
	}
	port, err := sidecar.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	rs := &redisServer{
		addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
		args: []string{bin, "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--dir", dir},
		log:  filepath.Join(dir, "redis.log"),
	}
	if durable {
		rs.args = append(rs.args, "--appendonly", "yes", "--appendfsync", "always")
	} else {
		rs.args = append(rs.args, "--appendonly", "no")
	}
	rs.start(t)
	t.Cleanup(func() { rs.kill(t) })
	return rs
}

// start runs the server and waits until it answers PING.
func (rs *redisServer) start(t *testing.T) {
	t.Helper()
	logFile, err := os.OpenFile(rs.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	cmd := exec.Command(rs.args[0], rs.args[1:]...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting redis-server: %v", err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	rs.mu.Lock()
	rs.cmd, rs.done = cmd, done
	rs.mu.Unlock()
	deadline := time.Now().Add(redisReadyTimeout)
	for !rs.ping() {
		if time.Now().After(deadline) {
			t.Fatalf("redis-server on %s not ready within %s:\n%s", rs.addr, redisReadyTimeout, readTail(rs.log))
		}
		select {
		case <-done:
			t.Fatalf("redis-server exited before it was ready:\n%s", readTail(rs.log))
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// ping reports whether the server answers PING with PONG.
func (rs *redisServer) ping() bool {
	conn, err := net.DialTimeout("tcp", rs.addr, time.Second)
	if err != nil {
		return false
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(time.Second))
	if _, err := conn.Write([]byte("PING\r\n")); err != nil {
		return false
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	return err == nil && strings.TrimSpace(line) == "+PONG"
}

// kill stops the server with SIGKILL, as a crash would, and waits.
func (rs *redisServer) kill(t *testing.T) {
	t.Helper()
	rs.mu.Lock()
	cmd, done := rs.cmd, rs.done
	rs.cmd = nil
	rs.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Kill()
	<-done
}

// keystoreOption is the sidecar's keystore option for this server.
func (rs *redisServer) keystoreOption() string {
	return fmt.Sprintf("redis {\naddress %s\n}", rs.addr)
}

// store opens the keystore the sidecars use, for the test to read.
func (rs *redisServer) store(t *testing.T) *redis.Store {
	t.Helper()
	store, err := redis.New(redis.Options{Addresses: []string{rs.addr}})
	if err != nil {
		t.Fatalf("opening the Redis keystore: %v", err)
	}
	t.Cleanup(func() { _ = store.Close() })
	return store
}

// keySet loads the stored key set, failing the test if it cannot.
func (rs *redisServer) keySet(t *testing.T, store *redis.Store) *keystore.KeySet {
	t.Helper()
	ks, err := store.Load(t.Context(), keySetName)
	if err != nil {
		t.Fatalf("loading key set %q from Redis: %v", keySetName, err)
	}
	return ks
}

func readTail(path string) string {
	data, _ := os.ReadFile(path)
	if len(data) > 2000 {
		data = data[len(data)-2000:]
	}
	return string(data)
}
