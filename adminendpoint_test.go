package oauth2upstream

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
)

// The admin endpoint's address is read from the config the context
// provisions: this pins the reading of Caddy's unexported context to the
// Caddy release in go.mod, so that an upgrade that moves it fails here
// rather than in production.
func TestAdminListenReadsTheConfig(t *testing.T) {
	tests := []struct {
		name       string
		admin      *caddy.AdminConfig
		wantListen string
		wantGiven  bool
	}{
		{"no admin option", nil, caddy.DefaultAdminListen, false},
		{"admin with no address", &caddy.AdminConfig{}, caddy.DefaultAdminListen, false},
		{"admin off", &caddy.AdminConfig{Disabled: true}, "", true},
		{"a unix socket", &caddy.AdminConfig{Listen: "unix//run/admin.sock|0600"}, "unix//run/admin.sock|0600", true},
		{"a TCP address", &caddy.AdminConfig{Listen: "127.0.0.1:2999"}, "127.0.0.1:2999", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			provisionMu.Lock()
			ctx, err := caddy.ProvisionContext(&caddy.Config{Admin: tt.admin})
			provisionMu.Unlock()
			if err != nil {
				t.Fatal(err)
			}
			listen, given, err := adminListen(ctx)
			if err != nil || listen != tt.wantListen || given != tt.wantGiven {
				t.Errorf("adminListen() = %q, %v, %v; want %q, %v, nil", listen, given, err, tt.wantListen, tt.wantGiven)
			}
		})
	}
	if listen, _, err := adminListen(caddy.Context{}); listen != "" || err != nil {
		t.Errorf("adminListen(a context of no config) = %q, %v; want no admin endpoint", listen, err)
	}
}

// A handler refuses to start while the admin endpoint listens on TCP, given
// or by default, naming the fix; a unix socket, admin off, or
// allow_admin_tcp let it start (DESIGN.md invariant 11).
func TestAdminOnTCPRefused(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		admin    *caddy.AdminConfig
		allowTCP bool
		refused  bool
	}{
		{"default localhost:2019", nil, false, true},
		{"given on TCP", &caddy.AdminConfig{Listen: "127.0.0.1:2999"}, false, true},
		{"given on a wildcard", &caddy.AdminConfig{Listen: ":2999"}, false, true},
		{"an inherited descriptor, which may be TCP", &caddy.AdminConfig{Listen: "fd/3"}, false, true},
		{"a unix socket", &caddy.AdminConfig{Listen: "unix/" + filepath.Join(t.TempDir(), "admin.sock") + "|0600"}, false, false},
		{"off", &caddy.AdminConfig{Disabled: true}, false, false},
		{"on TCP with allow_admin_tcp", nil, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			provisionMu.Lock()
			defer provisionMu.Unlock()
			ctx, err := caddy.ProvisionContext(&caddy.Config{Admin: tt.admin})
			if err != nil {
				t.Fatal(err)
			}
			raw, _ := json.Marshal(map[string]string{"backend": "file", "path": t.TempDir()})
			h := &Handler{TokenURL: "https://login.example.com/token", ClientID: "c", KeystoreRaw: raw, AllowAdminTCP: tt.allowTCP}
			err = h.Provision(ctx)
			if err == nil {
				defer h.Cleanup()
			}
			if !tt.refused {
				if err != nil {
					t.Errorf("Provision() = %v; want it to start", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), "admin unix//") || !strings.Contains(err.Error(), "admin off") ||
				!strings.Contains(err.Error(), "allow_admin_tcp") {
				t.Errorf("Provision() = %v; want a refusal naming admin unix//..., admin off and allow_admin_tcp", err)
			}
		})
	}
}
