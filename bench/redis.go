package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// RedisPath is the redis-server binary on PATH, or "" when there is none:
// the harness never installs it.
func RedisPath() string {
	p, _ := exec.LookPath("redis-server")
	return p
}

// StartRedis runs redis-server from bin on a loopback port the kernel
// chose, without persistence, with its files in dir. The port is free when
// chosen but another process may take it before redis-server binds it;
// then another is tried.
func StartRedis(ctx context.Context, bin, dir string) (*Process, error) {
	var err error
	for attempt := range 3 {
		var p *Process
		if p, err = startRedisOnce(ctx, bin, filepath.Join(dir, fmt.Sprint(attempt))); err == nil {
			return p, nil
		}
	}
	return nil, err
}

func startRedisOnce(ctx context.Context, bin, dir string) (*Process, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := ln.Addr().String()
	ln.Close()
	_, port, _ := net.SplitHostPort(addr)
	cmd := exec.Command(bin, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--dir", dir, "--daemonize", "no", "--logfile", "")
	p := &Process{Name: "redis-server", Addr: addr, Log: filepath.Join(dir, "redis.log"), cmd: cmd}
	return p, p.startWith(ctx, redisReady)
}

// redisReady answers whether the redis-server at addr answers PING.
func redisReady(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "+PONG") {
		return errors.New("redis answered " + strings.TrimSpace(line))
	}
	return nil
}
