package provider

import (
	"os/exec"
	"strings"
	"testing"
)

// The catalog stands alone: nothing it imports, directly or not, is
// Caddy's, so that the handler and the connect page both read it from
// below.
func TestCatalogImportsNoCaddy(t *testing.T) {
	t.Parallel()
	out, err := exec.Command("go", "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	for _, pkg := range strings.Fields(string(out)) {
		if strings.Contains(pkg, "caddyserver") || strings.HasSuffix(pkg, "/caddy-oauth2-upstream") {
			t.Errorf("provider depends on %s", pkg)
		}
	}
}
