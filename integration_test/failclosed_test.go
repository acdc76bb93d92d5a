package integration_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/oauth2upstream/caddy-oauth2-upstream/integration_test/authserver"
	"github.com/oauth2upstream/caddy-oauth2-upstream/integration_test/sidecar"
)

// A sidecar whose Caddyfile leaves out the admin option would open Caddy's
// admin endpoint on localhost:2019, where any process of the pod could PUT
// a key set: the real binary refuses to start, naming the fix; with the
// admin option on a unix socket the same Caddyfile starts (DESIGN.md
// invariant 11).
func TestBinaryRefusesAdminOnTCP(t *testing.T) {
	t.Parallel()
	auth := newAuthServer(t, authserver.Config{})
	port, err := sidecar.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	site := fmt.Sprintf(`http://127.0.0.1:%d {
	bind 127.0.0.1
	oauth2_upstream {
		token_url %s
		client_id c
		keystore file %s
	}
	reverse_proxy 127.0.0.1:1
}
`, port, auth.TokenURL(), filepath.Join(dir, "keystore"))
	start := func(globalOptions string) (*sidecar.Process, error) {
		p, err := sidecar.NewWithCaddyfile(sidecar.Options{Bin: caddyBin, Dir: t.TempDir(), Port: port,
			LogPath: filepath.Join(logDir, fmt.Sprintf("%03d-admin-on-tcp.log", logSeq.Add(1)))}, globalOptions+site)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Stop() })
		return p, p.Start(t.Context())
	}

	p, err := start("{\n\tpersist_config off\n}\n\n")
	if err == nil {
		t.Fatalf("the sidecar started with the admin endpoint on localhost:2019; want it refused")
	}
	log, _ := os.ReadFile(p.LogPath)
	for _, want := range []string{"the admin endpoint is Caddy's default, localhost:2019", "admin unix//", "admin off", "allow_admin_tcp"} {
		if !strings.Contains(string(log), want) {
			t.Errorf("the refusal does not say %q:\n%s", want, log)
		}
	}

	socket := filepath.Join(dir, "admin.sock")
	if _, err := start(fmt.Sprintf("{\n\tadmin unix/%s|0600\n\tpersist_config off\n}\n\n", socket)); err != nil {
		t.Errorf("with the admin endpoint on a unix socket: %v; want it started", err)
	}
}
