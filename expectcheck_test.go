package oauth2upstream

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
)

// expectWarning is the start of the line a handler logs when a
// reverse_proxy after it would send bodies before the upstream's 100.
const expectWarning = "reverse_proxy after oauth2_upstream has no expect_continue_timeout"

// A Caddyfile whose reverse_proxy sends bodies without waiting for 100
// Continue, while upstream_expect can ask for it, gets one warning naming
// the option at load; one that sets the timeout, or turns upstream_expect
// off, gets none. Without the timeout, 401s to uploads made right after a
// revocation turned into 502s (Go's transport was still writing the body
// when the API answered unread and closed). Only a handler whose
// reverse_proxy waits for the 100 takes the zero-copy path.
func TestExpectWithoutTimeoutWarns(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		handler   string // lines inside oauth2_upstream
		transport string // reverse_proxy's block
		warn      bool
		zeroCopy  bool
	}{
		{name: "default transport", warn: true},
		{name: "transport http without the timeout", transport: "transport http {\n\t\t\tkeepalive 30s\n\t\t}", warn: true},
		{name: "upstream_expect on", handler: "upstream_expect on", warn: true},
		{name: "timeout set", transport: "transport http {\n\t\t\texpect_continue_timeout 1s\n\t\t}", zeroCopy: true},
		{name: "timeout set, zero_copy_min off", handler: "zero_copy_min off", transport: "transport http {\n\t\t\texpect_continue_timeout 1s\n\t\t}"},
		{name: "upstream_expect off", handler: "upstream_expect off", transport: "transport http {\n\t\t\texpect_continue_timeout 1s\n\t\t}"},
		{name: "fastcgi", transport: "transport fastcgi"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			caddyfile := fmt.Sprintf(`{
	admin off
}
:0 {
	oauth2_upstream {
		token_url https://login.example.com/token
		client_id c
		keystore file %s
		%s
	}
	reverse_proxy 127.0.0.1:9 {
		%s
	}
}
`, filepath.Join(dir, "keys"), tt.handler, tt.transport)
			logged := loadLogging(t, caddyfile, filepath.Join(dir, "caddy.log"))
			if got := strings.Count(logged, expectWarning); got != map[bool]int{true: 1, false: 0}[tt.warn] {
				t.Errorf("warnings %q in the log = %d; want warned %t. Log:\n%s", expectWarning, got, tt.warn, logged)
			}
			if got := strings.Contains(logged, zeroCopyOn); got != tt.zeroCopy {
				t.Errorf("zero-copy path taken = %t; want %t. Log:\n%s", got, tt.zeroCopy, logged)
			}
		})
	}
}

// loadLogging adapts caddyfile, provisions it without listening, and
// returns what the oauth2_upstream handler logged.
func loadLogging(t *testing.T, caddyfile, logPath string) string {
	t.Helper()
	adapted, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), nil)
	if err != nil {
		t.Fatalf("Adapt() = %v", err)
	}
	var cfg caddy.Config
	if err := json.Unmarshal(adapted, &cfg); err != nil {
		t.Fatal(err)
	}
	writer, _ := json.Marshal(map[string]string{"output": "file", "filename": logPath})
	// A log of the handler's own: the "default" one would redirect Caddy's
	// process-wide default logger.
	cfg.Logging = &caddy.Logging{Logs: map[string]*caddy.CustomLog{"handler": {
		BaseLog: caddy.BaseLog{WriterRaw: writer, EncoderRaw: json.RawMessage(`{"format":"json"}`), Level: "DEBUG"},
		Include: []string{"http.handlers.oauth2_upstream"}}}}
	provisionMu.Lock()
	err = caddy.Validate(&cfg)
	provisionMu.Unlock()
	if err != nil {
		t.Fatalf("caddy.Validate() = %v", err)
	}
	return (&logFile{path: logPath}).text(t)
}
