package oauth2upstream

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddytest"
	_ "github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/oauth2upstream/caddy-oauth2-upstream/credential"
	"github.com/oauth2upstream/caddy-oauth2-upstream/internal/live"
)

// The Caddyfile adapts to the JSON in testdata/caddyfile_adapt (golden
// files: Caddyfile, a line of dashes, the expected JSON). The directive
// needs no `order` option: it registers its place before reverse_proxy.
func TestCaddyfileAdapt(t *testing.T) {
	files, err := filepath.Glob("testdata/caddyfile_adapt/*.caddyfiletest")
	if err != nil || len(files) == 0 {
		t.Fatalf("no golden files: %v", err)
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			input, want, ok := strings.Cut(string(data), "----------")
			if !ok {
				t.Fatalf("%s has no ---------- separator", file)
			}
			input, want = strings.TrimSpace(input)+"\n", strings.TrimSpace(want)
			if !caddytest.CompareAdapt(t, file, input, "caddyfile", want) {
				t.Errorf("%s: adapted JSON differs from the golden file", file)
			}
		})
	}
}

// caddyfile.example adapts, and the handler in it provisions and validates.
func TestCaddyfileExampleValidates(t *testing.T) {
	data, err := os.ReadFile("caddyfile.example")
	if err != nil {
		t.Fatal(err)
	}
	adapted, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt(data, map[string]any{"filename": "caddyfile.example"})
	if err != nil {
		t.Fatalf("adapting caddyfile.example: %v", err)
	}
	for _, w := range warnings {
		t.Errorf("adapting caddyfile.example: warning %s", w.Message)
	}
	// The example's handler, provisioned with its keystore in a temporary
	// directory rather than Caddy's data directory.
	var cfg struct {
		Apps struct {
			HTTP struct {
				Servers map[string]struct {
					Routes []struct {
						Handle []json.RawMessage `json:"handle"`
					} `json:"routes"`
				} `json:"servers"`
			} `json:"http"`
		} `json:"apps"`
	}
	if err := json.Unmarshal(adapted, &cfg); err != nil {
		t.Fatal(err)
	}
	raw := findHandler(t, cfg.Apps.HTTP.Servers["srv0"].Routes[0].Handle)
	var h Handler
	if err := json.Unmarshal(raw, &h); err != nil {
		t.Fatalf("decoding the example's handler: %v", err)
	}
	h.KeystoreRaw = json.RawMessage(`{"backend":"file","path":` + strconvQuote(t.TempDir()) + `}`)
	ctx, err := caddy.ProvisionContext(adminOff())
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Provision(ctx); err != nil {
		t.Fatalf("Provision() = %v", err)
	}
	if err := h.Validate(); err != nil {
		t.Fatalf("Validate() = %v", err)
	}
}

// findHandler digs the oauth2_upstream handler out of a route's handlers,
// looking into subroutes.
func findHandler(t *testing.T, handlers []json.RawMessage) json.RawMessage {
	t.Helper()
	for _, raw := range handlers {
		var h struct {
			Handler string `json:"handler"`
			Routes  []struct {
				Handle []json.RawMessage `json:"handle"`
			} `json:"routes"`
		}
		json.Unmarshal(raw, &h)
		if h.Handler == "oauth2_upstream" {
			return raw
		}
		for _, r := range h.Routes {
			if found := findHandlerOrNil(r.Handle); found != nil {
				return found
			}
		}
	}
	t.Fatal("no oauth2_upstream handler in the adapted config")
	return nil
}

func findHandlerOrNil(handlers []json.RawMessage) json.RawMessage {
	for _, raw := range handlers {
		if strings.Contains(string(raw), `"handler":"oauth2_upstream"`) {
			return raw
		}
	}
	return nil
}

func strconvQuote(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// Caddyfile mistakes are reported with the option's name.
func TestCaddyfileErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, input, want string
	}{
		{name: "unknown option", input: "oauth2_upstream {\n tokenurl x\n}", want: `unrecognized oauth2_upstream option "tokenurl"`},
		{name: "token_url without value", input: "oauth2_upstream {\n token_url\n}", want: "token_url: want one argument, got 0"},
		{name: "two token urls", input: "oauth2_upstream {\n token_url a b\n}", want: "token_url: want one argument, got 2"},
		{name: "bad duration", input: "oauth2_upstream {\n expiry_skew soon\n}", want: `expiry_skew: "soon" is not a duration`},
		{name: "bad size", input: "oauth2_upstream {\n max_replay_body lots\n}", want: `max_replay_body: "lots" is not a size`},
		{name: "zero_copy_min 0", input: "oauth2_upstream {\n zero_copy_min 0\n}", want: "zero_copy_min: must be a positive size, or off"},
		{name: "bad status", input: "oauth2_upstream {\n refresh_on unauthorized\n}", want: `refresh_on: "unauthorized" is neither a status code nor invalid_token`},
		{name: "refresh_on misspelt", input: "oauth2_upstream {\n refresh_on invalid-token\n}", want: `refresh_on: "invalid-token" is neither a status code nor invalid_token`},
		{name: "min_refresh_interval 0", input: "oauth2_upstream {\n min_refresh_interval 0s\n}", want: `min_refresh_interval must be a positive duration, got "0s"`},
		{name: "min_refresh_interval without value", input: "oauth2_upstream {\n min_refresh_interval\n}", want: "wrong argument count"},
		{name: "keepalive 0", input: "oauth2_upstream {\n keepalive 0s\n}", want: `keepalive must be a positive duration, got "0s"`},
		{name: "reauthorize_warning 0", input: "oauth2_upstream {\n reauthorize_warning 0s\n}", want: `reauthorize_warning must be a positive duration, got "0s"`},
		{name: "max_concurrent_grants 0", input: "oauth2_upstream {\n max_concurrent_grants 0\n}", want: `max_concurrent_grants must be a positive whole number or off, got "0"`},
		{name: "max_concurrent_grants words", input: "oauth2_upstream {\n max_concurrent_grants many\n}", want: `max_concurrent_grants must be a positive whole number or off, got "many"`},
		{name: "max_retry_after 0", input: "oauth2_upstream {\n max_retry_after 0\n}", want: `max_retry_after must be a positive duration, got "0"`},
		{name: "max_retry_after off", input: "oauth2_upstream {\n max_retry_after off\n}", want: `max_retry_after: "off" is not a duration`},
		{name: "bind_unbound with an argument", input: "oauth2_upstream {\n bind_unbound yes\n}", want: "wrong argument count"},
		{name: "param without value", input: "oauth2_upstream {\n param resource\n}", want: "param: want <name> <value...>"},
		{name: "extra_fields without names", input: "oauth2_upstream {\n extra_fields\n}", want: "extra_fields: want <name...>"},
		{name: "unknown keystore", input: "oauth2_upstream {\n keystore floppy\n}", want: "floppy"},
		{name: "argument on the directive", input: "oauth2_upstream extra {\n}", want: "wrong argument count"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var h Handler
			err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tt.input))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("UnmarshalCaddyfile(%q) = %v; want an error containing %q", tt.input, err, tt.want)
			}
		})
	}
}

// Validate rejects bad configuration with a message naming the option.
func TestValidateErrors(t *testing.T) {
	t.Parallel()
	valid := func() Handler {
		return Handler{TokenURL: "https://login.example.com/token", ClientID: "c"}
	}
	tests := []struct {
		name   string
		modify func(h *Handler)
		want   string
	}{
		{name: "missing token_url", modify: func(h *Handler) { h.TokenURL = "" }, want: "token_url is required"},
		{name: "relative token_url", modify: func(h *Handler) { h.TokenURL = "/token" }, want: "token_url \"/token\": must be an absolute http(s) URL"},
		{name: "not a URL", modify: func(h *Handler) { h.TokenURL = "::nope" }, want: "must be an absolute http(s) URL"},
		{name: "plain http elsewhere", modify: func(h *Handler) { h.TokenURL = "http://login.example.com/token" }, want: "must be https"},
		{name: "credentials in token_url", modify: func(h *Handler) { h.TokenURL = "https://u:p@login.example.com/token" }, want: "must not carry credentials"},
		{name: "missing client_id", modify: func(h *Handler) { h.ClientID = "" }, want: "client_id is required"},
		{name: "auth_style", modify: func(h *Handler) { h.AuthStyle = "auto" }, want: `auth_style "auto"`},
		{name: "grant", modify: func(h *Handler) { h.Grant = "implicit" }, want: `grant "implicit": must be "refresh_token", "client_credentials", "jwt_bearer" or "password"`},
		{name: "refresh", modify: func(h *Handler) { h.Refresh = "sometimes" }, want: `refresh "sometimes"`},
		{name: "key_set", modify: func(h *Handler) { h.KeySet = "../x" }, want: "key_set: invalid key set name"},
		{name: "seed with placeholder key_set", modify: func(h *Handler) { h.KeySet = "{http.request.header.X}"; h.RefreshToken = "rt" }, want: "refresh_token seeds one key set"},
		{name: "bind_unbound with placeholder key_set", modify: func(h *Handler) { h.KeySet = "{http.request.header.X}"; h.KeySetAllow = "a.*"; h.BindUnbound = true }, want: "bind_unbound binds the one key set a fixed key_set names"},
		{name: "seed with client_credentials", modify: func(h *Handler) { h.Grant = credential.GrantClientCredentials; h.RefreshToken = "rt" }, want: "client_credentials grant needs none"},
		{name: "placeholder key_set with client_credentials", modify: func(h *Handler) { h.KeySet = "{http.request.header.X}"; h.Grant = credential.GrantClientCredentials }, want: "client_credentials grant cannot use"},
		{name: "placeholder key_set without key_set_allow", modify: func(h *Handler) { h.KeySet = "{http.request.header.X}" }, want: "key_set_allow <regexp> must say which names"},
		{name: "key_set_allow without placeholders", modify: func(h *Handler) { h.KeySetAllow = "a.*" }, want: "key_set_allow is for a key_set with placeholders"},
		{name: "reserved param", modify: func(h *Handler) { h.Params = map[string][]string{"grant_type": {"password"}} }, want: "param grant_type: set by the grant itself"},
		{name: "scope as param", modify: func(h *Handler) { h.Params = map[string][]string{"scope": {"x"}} }, want: "param scope"},
		{name: "negative body_timeout", modify: func(h *Handler) { h.BodyTimeout = -5 }, want: "body_timeout"},
		{name: "refresh_on 200", modify: func(h *Handler) { h.RefreshOn = []int{200} }, want: "refresh_on 200"},
		{name: "negative skew", modify: func(h *Handler) { h.ExpirySkew = -1 }, want: "expiry_skew"},
		{name: "refresh_on 401 and invalid_token", modify: func(h *Handler) { h.RefreshOn = []int{401}; h.RefreshOnInvalidToken = true }, want: "refresh_on: 401 triggers on every 401"},
		{name: "min_refresh_interval", modify: func(h *Handler) { h.MinRefreshInterval = -5 }, want: "min_refresh_interval -5ns: must be positive, or -1 to disable"},
		{name: "keepalive", modify: func(h *Handler) { h.Keepalive = -5 }, want: "keepalive -5ns: must be positive, or -1 to disable"},
		{name: "reauthorize_warning", modify: func(h *Handler) { h.ReauthorizeWarning = -5 }, want: "reauthorize_warning -5ns: must be positive, or -1 to disable"},
		{name: "max_concurrent_grants", modify: func(h *Handler) { h.MaxConcurrentGrants = -2 }, want: "max_concurrent_grants -2: must be positive, or -1 for no bound"},
		{name: "max_retry_after", modify: func(h *Handler) { h.MaxRetryAfter = -1 }, want: "max_retry_after -1ns: must be positive"},
		{name: "header name", modify: func(h *Handler) { h.HeaderName = "Bad Header" }, want: `header_name "Bad Header"`},
		{name: "header scheme", modify: func(h *Handler) { h.HeaderScheme = "Two words" }, want: "header_scheme"},
		{name: "replay_memory", modify: func(h *Handler) { h.ReplayMemory = -5 }, want: "replay_memory -5"},
		{name: "max_replay_body", modify: func(h *Handler) { h.MaxReplayBody = -2 }, want: "max_replay_body -2"},
		{name: "zero_copy_min", modify: func(h *Handler) { h.ZeroCopyMin = -2 }, want: "zero_copy_min -2"},
		{name: "zero_copy_min with upstream_expect off", modify: func(h *Handler) { h.ZeroCopyMin = 1 << 20; h.UpstreamExpect = "off" }, want: "zero_copy_min needs Expect upstream"},
		{name: "extra_fields id_token", modify: func(h *Handler) { h.ExtraFields = []string{"instance_url", "id_token"} }, want: `extra_fields: field "id_token" is named like a credential`},
		{name: "extra_fields access_token", modify: func(h *Handler) { h.ExtraFields = []string{"access_token"} }, want: `extra_fields: field "access_token" is named like a credential`},
		{name: "extra_fields refresh_token", modify: func(h *Handler) { h.ExtraFields = []string{"refresh_token"} }, want: `extra_fields: field "refresh_token" is named like a credential`},
		{name: "extra_fields api_key", modify: func(h *Handler) { h.ExtraFields = []string{"api_key"} }, want: `extra_fields: field "api_key" is named like a credential`},
		{name: "extra_fields tokens", modify: func(h *Handler) { h.ExtraFields = []string{"tokens"} }, want: `extra_fields: field "tokens" is named like a credential`},
		{name: "extra_fields client_secret", modify: func(h *Handler) { h.ExtraFields = []string{"client_secret"} }, want: `extra_fields: field "client_secret" is named like a credential`},
		{name: "extra_fields empty name", modify: func(h *Handler) { h.ExtraFields = []string{""} }, want: "extra_fields: an empty field name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := valid()
			tt.modify(&h)
			h.setDefaults()
			h.keySets = live.KeySetRule{Name: h.KeySet}
			err := h.Validate()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Validate() = %v; want an error containing %q", err, tt.want)
			}
		})
	}
	t.Run("loopback http allowed", func(t *testing.T) {
		h := valid()
		h.TokenURL = "http://127.0.0.1:9/token"
		h.setDefaults()
		if err := h.Validate(); err != nil {
			t.Errorf("Validate() = %v; want nil for a loopback token endpoint", err)
		}
	})
	t.Run("insecure_http allowed", func(t *testing.T) {
		h := valid()
		h.TokenURL, h.InsecureHTTP = "http://login.internal/token", true
		h.setDefaults()
		if err := h.Validate(); err != nil {
			t.Errorf("Validate() = %v; want nil with insecure_http", err)
		}
	})
}
