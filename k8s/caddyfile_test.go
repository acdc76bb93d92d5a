package k8s_test

import (
	"encoding/json"
	"strconv"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"

	// The sidecar's Caddy: the standard modules and oauth2_upstream, as cmd/caddy builds it.
	_ "github.com/caddyserver/caddy/v2/modules/standard"
	_ "github.com/oauth2upstream/caddy-oauth2-upstream"
)

// TestCaddyfilesLoad covers a sidecar in CrashLoopBackOff on a Caddyfile the module does not
// accept: the Caddyfile in each kustomization's ConfigMap adapts and passes caddy.Validate,
// which provisions every module without starting a listener. It reads the environment, so
// it cannot run in parallel.
func TestCaddyfilesLoad(t *testing.T) {
	// The values the Secrets and ConfigMaps would give; see kustomization.yaml.
	for name, value := range map[string]string{
		"TOKEN_URL":          "https://login.example.com/oauth2/token",
		"UPSTREAM":           "https://api.example.com",
		"API_HOST":           "api.example.com",
		"CLIENT_ID":          "client",
		"CLIENT_SECRET":      "secret",
		"SEED_REFRESH_TOKEN": "seed",
		"KEYSTORE_KEY":       testKeystoreKey,
		"REDIS_PASSWORD":     "password",
	} {
		t.Setenv(name, value)
	}
	adapter := caddyconfig.GetAdapter("caddyfile")
	if adapter == nil {
		t.Fatal(`caddyconfig.GetAdapter("caddyfile") = nil`)
	}
	for _, dir := range kustomizations {
		t.Run(dir, func(t *testing.T) {
			m := mustRender(t, dir)
			configPath, text := sidecarCaddyfile(t, m)
			adapted, warnings, err := adapter.Adapt([]byte(text), map[string]any{"filename": configPath})
			if err != nil {
				t.Fatalf("Adapt(%s) = %v", configPath, err)
			}
			for _, w := range warnings {
				t.Errorf("Adapt(%s) warns: %s", configPath, w.String())
			}
			var cfg caddy.Config
			if err := json.Unmarshal(moveFileKeystores(t, adapted), &cfg); err != nil {
				t.Fatalf("decoding the adapted config: %v", err)
			}
			// Caddy's storage (the internal CA of tls internal) in a temporary directory too.
			cfg.StorageRaw = json.RawMessage(`{"module":"file_system","root":` + strconv.Quote(t.TempDir()) + `}`)
			if err := caddy.Validate(&cfg); err != nil {
				t.Errorf("caddy.Validate(%s) = %v", configPath, err)
			}
		})
	}
}

// testKeystoreKey stands for the KEYSTORE_KEY Secret: 32 bytes, base64.
const testKeystoreKey = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="

// moveFileKeystores points every file keystore of the adapted JSON config into a temporary
// directory: provisioning creates the keystore's directory, and this test must not write to
// /data on the machine that runs it. Everything else is validated as adapted.
func moveFileKeystores(t *testing.T, adapted []byte) []byte {
	t.Helper()
	var cfg any
	if err := json.Unmarshal(adapted, &cfg); err != nil {
		t.Fatalf("decoding the adapted config: %v", err)
	}
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			if v["backend"] == "file" {
				if _, ok := v["path"]; ok {
					v["path"] = t.TempDir()
				}
			}
			for _, child := range v {
				walk(child)
			}
		case []any:
			for _, child := range v {
				walk(child)
			}
		}
	}
	walk(cfg)
	out, err := json.Marshal(cfg)
	if err != nil {
		t.Fatalf("encoding the config: %v", err)
	}
	return out
}
