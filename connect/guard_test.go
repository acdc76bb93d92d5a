package connect_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/oauth2upstream/caddy-oauth2-upstream" // the oauth2_upstream handler of the proxy site
)

// Ports of the configs below. caddy.Validate provisions a config without
// listening, so nothing needs to be free.
const (
	proxyPort   = 18080
	connectPort = 19443
)

// Handlers' JSON, as the Caddyfile adapts basic_auth and forward_auth.
const (
	pageJSON   = `{"handler":"oauth2_upstream_connect","authorize_url":"https://login.example.com/authorize"}`
	optInJSON  = `{"handler":"oauth2_upstream_connect","authorize_url":"https://login.example.com/authorize","allow_unauthenticated":true}`
	basicAuth  = `{"handler":"authentication","providers":{"http_basic":{"accounts":[{"username":"operator","password":"$2a$14$Zkx19XLiW6VYouLHR5NmfOFU0z2GTNmpkT/5qqR7hx4IjWJPDhjvG"}],"hash":{"algorithm":"bcrypt"}}}}`
	respondOK  = `{"handler":"static_response","body":"ok"}`
	denyOthers = `{"handler":"reverse_proxy","upstreams":[{"dial":"127.0.0.1:1"}],"handle_response":[{"match":{"status_code":[4]},"routes":[{"handle":[{"handler":"vars"}]}]}]}`
)

// forwardAuth is what forward_auth adapts to: a reverse_proxy to the auth
// service whose handle_response goes on to the next handler on a 2xx.
var forwardAuth = `{"handler":"reverse_proxy","upstreams":[{"dial":"127.0.0.1:1"}],"rewrite":{"method":"GET","uri":"/verify"},` +
	`"handle_response":[{"match":{"status_code":[2]},"routes":[{"handle":[{"handler":"vars"}]}]}]}`

// A connect page starts only behind an authenticating handler that runs
// for every request reaching it: earlier in its route, or in an earlier
// route no matcher or group narrows, at its level or in a subroute; in
// error and named routes, one before it there. A page the check cannot
// place is refused too; allow_unauthenticated lets any page start.
func TestConnectRefusedWithoutAuthenticationInFront(t *testing.T) {
	t.Parallel()
	route := func(handlers ...string) string { return `{"handle":[` + strings.Join(handlers, ",") + `]}` }
	subroute := func(routes ...string) string {
		return `{"handler":"subroute","routes":[` + strings.Join(routes, ",") + `]}`
	}
	routes := func(routes ...string) string { return `"routes":[` + strings.Join(routes, ",") + `]` }
	const unguarded, unplaced = "authenticates no one", "cannot be told"
	tests := []struct {
		name   string
		server string // the server's JSON but its listener
		want   string // in the refusal; "" for none
	}{
		{"nothing in front", routes(route(pageJSON)), unguarded},
		{"basic_auth after the page", routes(route(pageJSON, basicAuth)), unguarded},
		{"basic_auth in a route with a matcher", routes(`{"match":[{"path":["/admin/*"]}],"handle":[`+basicAuth+`]}`, route(pageJSON)), unguarded},
		{"basic_auth in a route of a group", routes(`{"match":[{"path":["/x"]}],"group":"g","handle":[`+respondOK+`]}`,
			`{"group":"g","handle":[`+basicAuth+`]}`, route(pageJSON)), unguarded},
		{"basic_auth in a subroute's route with a matcher", routes(route(subroute(`{"match":[{"path":["/x"]}],"handle":[`+basicAuth+`]}`)), route(pageJSON)), unguarded},
		{"a reverse_proxy going on for 4xx", routes(route(denyOthers, pageJSON)), unguarded},
		{"basic_auth in another server", routes(route(pageJSON)) + `},"other":{"listen":[":18444"],` + routes(route(basicAuth)), unguarded},
		{"in handle_errors, basic_auth in the routes", routes(route(basicAuth, respondOK)) + `,"errors":{` + routes(route(pageJSON)) + `}`, unguarded},
		{"in a named route without basic_auth", `"named_routes":{"connect":` + route(pageJSON) + `}`, unguarded},
		{"in a reverse_proxy's handle_response", routes(route(basicAuth, `{"handler":"reverse_proxy","upstreams":[{"dial":"127.0.0.1:1"}],`+
			`"handle_response":[{"routes":[`+route(pageJSON)+`]}]}`)), unplaced},

		{"basic_auth before, same route", routes(route(basicAuth, pageJSON)), ""},
		{"basic_auth in an earlier route", routes(route(basicAuth), route(pageJSON)), ""},
		{"basic_auth in a host site's subroute", routes(`{"match":[{"host":["ops.test"]}],"terminal":true,"handle":[` +
			subroute(route(basicAuth), route(pageJSON)) + `]}`), ""},
		{"basic_auth in an earlier route's subroute", routes(route(subroute(route(basicAuth))), route(pageJSON)), ""},
		{"basic_auth before a matched route", routes(route(basicAuth), `{"match":[{"path":["/*"]}],"handle":[`+subroute(route(pageJSON))+`]}`), ""},
		{"forward_auth before", routes(route(forwardAuth, pageJSON)), ""},
		{"forward_auth in an earlier route", routes(route(forwardAuth), route(pageJSON)), ""},
		{"in handle_errors behind basic_auth there", routes(route(respondOK)) + `,"errors":{` + routes(route(basicAuth, pageJSON)) + `}`, ""},
		{"in a named route behind basic_auth", `"named_routes":{"connect":` + route(basicAuth, pageJSON) + `}`, ""},
		{"allow_unauthenticated", routes(route(optInJSON)), ""},
		// Each page judges itself.
		{"an opted-in page beside a guarded one", routes(route(optInJSON), route(basicAuth, pageJSON)), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			config := fmt.Sprintf(`{"apps":{"http":{"servers":{"srv0":{"listen":[":%d"],"automatic_https":{"disable":true},%s}}}}}`, connectPort, tt.server)
			err := validate(t, []byte(config))
			if refused := err != nil; refused != (tt.want != "") || (refused && !strings.Contains(err.Error(), tt.want)) {
				t.Errorf("caddy.Validate(%s) = %v; want refused saying %q", config, err, tt.want)
			}
		})
	}
}

// The whole sidecar, as caddyfile.example has it (a proxy site and the
// connect page's site), provisions with basic_auth or forward_auth before
// the page, or allow_unauthenticated; without them, or with basic_auth
// narrowed by a matcher, it is refused with a message naming the fix.
func TestConnectCaddyfileNeedsAuthenticationInFront(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, before, option string
		refused              bool
	}{
		{"nothing in front", "", "", true},
		{"basic_auth on one path", "basic_auth /admin/* {\n\t\toperator $2a$14$Zkx19XLiW6VYouLHR5NmfOFU0z2GTNmpkT/5qqR7hx4IjWJPDhjvG\n\t}", "", true},
		{"basic_auth", "basic_auth {\n\t\toperator $2a$14$Zkx19XLiW6VYouLHR5NmfOFU0z2GTNmpkT/5qqR7hx4IjWJPDhjvG\n\t}", "", false},
		{"forward_auth", "forward_auth 127.0.0.1:1 {\n\t\turi /verify\n\t\tcopy_headers Remote-User\n\t}", "", false},
		{"allow_unauthenticated", "", "allow_unauthenticated", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			caddyfile := fmt.Sprintf(`http://127.0.0.1:%d {
	bind 127.0.0.1
	oauth2_upstream {
		token_url http://127.0.0.1:1/token
		client_id c
		keystore file %s
	}
	reverse_proxy 127.0.0.1:1
}

http://127.0.0.1:%d {
	bind 127.0.0.1
	%s
	oauth2_upstream_connect {
		authorize_url https://login.example.com/authorize
		%s
	}
}
`, proxyPort, t.TempDir(), connectPort, tt.before, tt.option)
			adapted, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), map[string]any{"filename": "Caddyfile"})
			if err != nil {
				t.Fatalf("adapting:\n%s\n%v", caddyfile, err)
			}
			err = validate(t, adapted)
			fix := "put basic_auth or forward_auth before it"
			if tt.refused && (err == nil || !strings.Contains(err.Error(), fix) || !strings.Contains(err.Error(), "allow_unauthenticated")) {
				t.Errorf("caddy.Validate(%s) = %v; want refused naming the fix (%q, allow_unauthenticated)", caddyfile, err, fix)
			}
			if !tt.refused && err != nil {
				t.Errorf("caddy.Validate(%s) = %v; want it to provision", caddyfile, err)
			}
		})
	}
}

// provisionMu serialises Caddy provisioning across parallel tests:
// caddy.Validate and reverse_proxy's Provision set package-level state
// without a lock.
var provisionMu sync.Mutex

// validate provisions the JSON config as Caddy would load it, without
// listening, with the admin endpoint off (the oauth2_upstream handler
// refuses one on TCP).
func validate(t *testing.T, config []byte) error {
	t.Helper()
	var cfg caddy.Config
	if err := json.Unmarshal(config, &cfg); err != nil {
		t.Fatalf("decoding %s: %v", config, err)
	}
	cfg.Admin = &caddy.AdminConfig{Disabled: true}
	provisionMu.Lock()
	defer provisionMu.Unlock()
	return caddy.Validate(&cfg)
}
