package integration_test

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// moduleIDs are every Caddy module of this repository. Users and their
// configurations depend on each ID (DESIGN.md, names).
var moduleIDs = []string{
	"http.handlers.oauth2_upstream",
	"http.handlers.oauth2_upstream_connect",
	"http.handlers.oauth2_upstream_health",
	"admin.api.oauth2_upstream",
	"admin.api.oauth2_upstream_connect",
	"oauth2_upstream.keystores.file",
	"oauth2_upstream.keystores.redis",
	"oauth2_upstream.keystores.caddy_storage",
}

// The binary registers every module of the repository although its main
// (cmd/caddy) imports only the root package, as the main that
// `xcaddy build --with github.com/oauth2upstream/caddy-oauth2-upstream`
// writes does: the root brings the other module families with it.
func TestBinaryRegistersEveryModule(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, caddyBin, "list-modules").Output()
	if err != nil {
		t.Fatalf("caddy list-modules: %v", err)
	}
	listed := make(map[string]bool)
	for _, line := range strings.Split(string(out), "\n") {
		listed[strings.TrimSpace(line)] = true
	}
	for _, id := range moduleIDs {
		if !listed[id] {
			t.Errorf("caddy list-modules does not list %s", id)
		}
	}
}
