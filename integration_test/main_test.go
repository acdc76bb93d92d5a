// Package integration_test runs the real sidecar, this repository's Caddy
// binary, against a real OAuth2 authorization server (fosite, rotating
// refresh tokens with reuse detection) and a resource server that
// introspects every token, and checks the numbers: responses, grants,
// reuse detections, stored key sets, and what the sidecar logged.
package integration_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/oauth2upstream/caddy-oauth2-upstream/integration_test/sidecar"
)

// buildTimeout bounds building the Caddy binary.
const buildTimeout = 5 * time.Minute

// Set once by TestMain, read by every test.
var (
	// caddyBin is the binary built from the repository's ./cmd/caddy.
	caddyBin string
	// logDir holds every sidecar's log until the suite ends, when the
	// token leak check (scenario 9) reads them all.
	logDir string
)

// TestMain builds the Caddy binary once, runs the tests, then checks that no
// token value issued during the whole suite appears in any sidecar's log.
// E2E_CADDY_BIN, when set, names a binary to use instead of building one;
// E2E_LOG_DIR, when set, keeps the sidecars' logs there after the suite.
func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "oauth2-upstream-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	logDir = os.Getenv("E2E_LOG_DIR")
	if logDir == "" {
		logDir = filepath.Join(dir, "logs")
	}
	if err := os.MkdirAll(logDir, 0o700); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	if caddyBin = os.Getenv("E2E_CADDY_BIN"); caddyBin == "" {
		ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
		defer cancel()
		start := time.Now()
		// The test runs in integration_test/; the repository root is "..".
		caddyBin, err = sidecar.Build(ctx, "..", dir)
		if err != nil {
			fmt.Fprintln(os.Stderr, "e2e:", err)
			return 1
		}
		fmt.Fprintf(os.Stderr, "e2e: built %s in %s\n", caddyBin, time.Since(start).Round(time.Millisecond))
	}
	code := m.Run()
	if code == 0 {
		code = checkLogsHoldNoTokens()
	}
	return code
}
