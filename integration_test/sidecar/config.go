package sidecar

import (
	"errors"
	"os"
	"path/filepath"
)

// NewWithCaddyfile is New for a configuration that Caddyfile does not render: the whole
// Caddyfile is the caller's, written for opts.Port (required: the caller puts it in the site
// address), and Handler, Upstream, Proxy and Debug are ignored. The process's Addr is
// 127.0.0.1:opts.Port, which the Caddyfile must serve.
func NewWithCaddyfile(opts Options, caddyfile string) (*Process, error) {
	if opts.Port == 0 {
		return nil, errors.New("sidecar: NewWithCaddyfile needs the port the Caddyfile serves")
	}
	p, err := New(opts)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(p.caddyfile, []byte(caddyfile), 0o600); err != nil {
		return nil, err
	}
	return p, nil
}

// DataDir is Caddy's data directory ($XDG_DATA_HOME/caddy) of a sidecar whose Options.Dir is
// dir: its internal certificate authority keeps its root certificate there, in
// pki/authorities/local/root.crt.
func DataDir(dir string) string {
	return filepath.Join(dir, "home", "caddy")
}
