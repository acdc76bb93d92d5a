package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/oauth2upstream/caddy-oauth2-upstream/integration_test/sidecar"
)

// Smoke test of the demo: run for about 5s with 2s tokens, and check that
// it narrated at least one refresh, one persisted rotation and one replay,
// and that every request was answered 200.
func TestDemoShowsRefreshAndReplay(t *testing.T) {
	cfg := defaultConfig()
	cfg.duration = 5 * time.Second
	cfg.interval = 200 * time.Millisecond
	cfg.lifespan = 2 * time.Second
	var out bytes.Buffer
	if err := run(t.Context(), cfg, &out); err != nil {
		t.Fatalf("run() = %v\n%s", err, out.String())
	}
	text := out.String()
	for _, want := range []string{sidecar.MsgRefreshed, "rotation persisted", sidecar.MsgReplaying, "← 401 Unauthorized", "← 200 OK"} {
		if !strings.Contains(text, want) {
			t.Errorf("demo output has no %q:\n%s", want, text)
		}
	}
	if strings.Contains(text, "DIFFERS") {
		t.Errorf("a replayed body differed:\n%s", text)
	}
	t.Logf("demo output:\n%s", text)
}
