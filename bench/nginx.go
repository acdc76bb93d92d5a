package bench

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
)

// NginxPath is the nginx on PATH, or "" when there is none: the harness
// compares against it only where it is installed, and never installs it.
func NginxPath() string {
	path, err := exec.LookPath("nginx")
	if err != nil {
		return ""
	}
	return path
}

// StartNginx runs nginx as a plain reverse proxy to upstream that sets a
// static Authorization header: the floor of what any proxy adding a header
// costs. nginx cannot inherit a listener as Caddy does, so its port is
// chosen by the kernel, released, and then bound by nginx (a window in
// which another process could take it; start fails then).
func StartNginx(ctx context.Context, bin, dir, upstream, authorization string) (*Process, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := ln.Addr().String()
	ln.Close()
	for _, d := range []string{"client_body", "proxy", "fastcgi", "uwsgi", "scgi"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			return nil, err
		}
	}
	user := ""
	if os.Geteuid() == 0 {
		// Workers would run as nobody, who cannot enter dir (0700).
		user = "user root;"
	}
	conf := fmt.Sprintf(`daemon off;
master_process on;
worker_processes 2;
%[1]s
pid %[2]s/nginx.pid;
error_log %[2]s/error.log warn;
events { worker_connections 4096; }
http {
	access_log off;
	client_body_temp_path %[2]s/client_body;
	proxy_temp_path %[2]s/proxy;
	fastcgi_temp_path %[2]s/fastcgi;
	uwsgi_temp_path %[2]s/uwsgi;
	scgi_temp_path %[2]s/scgi;
	upstream api {
		server %[3]s;
		keepalive 1024;
	}
	server {
		listen %[4]s;
		client_max_body_size 0;
		location = %[5]s { return 200; }
		location / {
			proxy_pass http://api;
			proxy_http_version 1.1;
			proxy_set_header Connection "";
			proxy_set_header Authorization "%[6]s";
			proxy_request_buffering off;
		}
	}
}
`, user, dir, upstream, addr, healthPath, authorization)
	confPath := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "-p", dir, "-c", confPath)
	p := &Process{Name: "nginx", Addr: addr, Log: filepath.Join(dir, "nginx.log"), cmd: cmd, pgid: true}
	return p, p.start(ctx)
}
