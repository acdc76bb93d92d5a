package credential

import (
	"os/exec"
	"strings"
	"testing"
)

// The engine stands alone: nothing it imports, directly or not, is Caddy's
// (github.com/caddyserver/caddy or certmagic). The Caddy adapter imports the
// engine, never the other way round.
func TestEngineImportsNoCaddy(t *testing.T) {
	t.Parallel()
	out, err := exec.Command("go", "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	for _, pkg := range strings.Fields(string(out)) {
		if strings.Contains(pkg, "caddyserver") || strings.HasSuffix(pkg, "/caddy-oauth2-upstream") {
			t.Errorf("credential depends on %s", pkg)
		}
	}
}
