package selfproxy_test

import (
	"encoding/json"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/oauth2upstream/caddy-oauth2-upstream" // the oauth2_upstream handler, which runs the check
	"github.com/oauth2upstream/caddy-oauth2-upstream/internal/selfproxy"
)

// selfProxyPort is the port of the servers below. caddy.Validate provisions a config without
// listening, so nothing needs to be free.
const selfProxyPort = 18443

// A sidecar that serves the API's host name (transparent mode) loops when its upstream
// reaches its own listener: each request comes back to oauth2_upstream. Such a config is
// refused when it is provisioned; configs that reach elsewhere, or whose upstream is known
// only per request, load.
func TestSelfProxyRefused(t *testing.T) {
	t.Parallel()
	hop := func(dial string, transport string) string {
		rp := fmt.Sprintf(`{"handler":"reverse_proxy","upstreams":[{"dial":%q}]`, dial)
		if transport != "" {
			rp += `,"transport":` + transport
		}
		return rp + "}"
	}
	own := fmt.Sprintf("127.0.0.1:%d", selfProxyPort)
	socket := filepath.Join(t.TempDir(), "sidecar.sock")
	tests := []struct {
		name   string
		listen string
		routes func(handler string) string // the server's routes, around the oauth2_upstream handler's JSON
		refuse bool
	}{
		{"the listener's address", own, chain(hop(own, "")), true},
		// As the API's name does through the pod's hostAliases entry.
		{"a name /etc/hosts maps to the listener", own, chain(hop(fmt.Sprintf("localhost:%d", selfProxyPort), "")), true},
		// Go's resolver reads /etc/hosts before asking any server, the transport's own too.
		{"a name /etc/hosts maps, with the transport's resolver", own,
			chain(hop(fmt.Sprintf("localhost:%d", selfProxyPort), `{"protocol":"http","resolver":{"addresses":["127.0.0.1:1"]}}`)), true},
		{"another loopback address of a wildcard listener", fmt.Sprintf(":%d", selfProxyPort),
			chain(hop(fmt.Sprintf("127.0.0.2:%d", selfProxyPort), "")), true},
		{"https upstream in a host site's subroute, as the Caddyfile adapts it", own, func(handler string) string {
			return `[{"match":[{"host":["api.test"]}],"terminal":true,"handle":[{"handler":"subroute","routes":` +
				chain(hop(own, `{"protocol":"http","tls":{"server_name":"api.test"}}`))(handler) + `}]}]`
		}, true},
		{"the listener's unix socket", "unix/" + socket, chain(hop("unix/"+socket, "")), true},
		// Dialing the unspecified address reaches this host: every local address.
		{"0.0.0.0 to a specific listener", own, chain(hop(fmt.Sprintf("0.0.0.0:%d", selfProxyPort), "")), true},
		{"[::] to a specific listener", own, chain(hop(fmt.Sprintf("[::]:%d", selfProxyPort), "")), true},

		{"another port", own, chain(hop(fmt.Sprintf("127.0.0.1:%d", selfProxyPort+1), "")), false},
		{"another loopback address of a specific listener", own, chain(hop(fmt.Sprintf("127.0.0.2:%d", selfProxyPort), "")), false},
		{"an upstream known per request", own, chain(hop("{http.oauth2_upstream.extra.instance_url.hostport}", "")), false},
		{"a name that does not resolve", own, chain(hop(fmt.Sprintf("sidecar.invalid:%d", selfProxyPort), "")), false},
		{"through a forward proxy, which resolves the name", own,
			chain(hop(fmt.Sprintf("localhost:%d", selfProxyPort), `{"protocol":"http","network_proxy":{"from":"url","url":"http://127.0.0.1:3128"}}`)), false},
		{"a reverse_proxy no oauth2_upstream precedes", own, func(handler string) string {
			return `[{"match":[{"path":["/self"]}],"handle":[` + hop(own, "") + `]},{"handle":[` + handler + `,` + hop("127.0.0.1:1", "") + `]}]`
		}, false},
	}
	if ip := interfaceIP(); ip != "" {
		tests = append(tests, struct {
			name   string
			listen string
			routes func(handler string) string
			refuse bool
		}{"an interface's address, wildcard listener", fmt.Sprintf(":%d", selfProxyPort),
			chain(hop(net.JoinHostPort(ip, fmt.Sprint(selfProxyPort)), "")), true})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			routes := tt.routes(selfProxyHandler(t))
			err := validateConfig(t, fmt.Sprintf(`{"apps":{"http":{"servers":{"srv0":{"listen":[%q],"routes":%s,"automatic_https":{"disable":true}}}}}}`, tt.listen, routes))
			if refused := err != nil && strings.Contains(err.Error(), "would proxy to itself"); refused != tt.refuse {
				t.Errorf("caddy.Validate(%s) = %v; want refused %t", routes, err, tt.refuse)
			}
		})
	}
}

// The loop is refused as users write it: a Caddyfile site for the API's host name whose
// upstream resolves to the site's own listener.
func TestSelfProxyRefusedFromCaddyfile(t *testing.T) {
	t.Parallel()
	caddyfile := fmt.Sprintf(`http://api.test:%[1]d {
	bind 127.0.0.1
	oauth2_upstream {
		token_url http://127.0.0.1:1/token
		client_id c
		keystore file %[2]s
	}
	reverse_proxy localhost:%[1]d
}
`, selfProxyPort, t.TempDir())
	adapted, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), map[string]any{"filename": "Caddyfile"})
	if err != nil {
		t.Fatalf("adapting: %v", err)
	}
	err = validateConfig(t, string(adapted))
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf(`would proxy to itself: it dials 127.0.0.1:%d`, selfProxyPort)) {
		t.Errorf("caddy.Validate(%s) = %v; want the self-proxy refused", caddyfile, err)
	}
}

// chain is a server's routes: one route running the oauth2_upstream handler, then next.
func chain(next string) func(handler string) string {
	return func(handler string) string { return `[{"handle":[` + handler + `,` + next + `]}]` }
}

// selfProxyHandler is an oauth2_upstream handler's JSON, its keystore in a temporary directory.
func selfProxyHandler(t *testing.T) string {
	raw, err := json.Marshal(map[string]any{
		"handler": "oauth2_upstream", "token_url": "http://127.0.0.1:1/token", "client_id": "c",
		"keystore": map[string]string{"backend": "file", "path": t.TempDir()},
	})
	if err != nil {
		t.Fatal(err)
	}
	return string(raw)
}

// provisionMu serialises Caddy provisioning across parallel tests:
// caddy.Validate and reverse_proxy's Provision set package-level state
// without a lock.
var provisionMu sync.Mutex

// validateConfig provisions the JSON config as Caddy would load it, without listening, with
// the admin endpoint off (the handler refuses one on TCP).
func validateConfig(t *testing.T, config string) error {
	t.Helper()
	var cfg caddy.Config
	if err := json.Unmarshal([]byte(config), &cfg); err != nil {
		t.Fatalf("decoding %s: %v", config, err)
	}
	cfg.Admin = &caddy.AdminConfig{Disabled: true}
	provisionMu.Lock()
	defer provisionMu.Unlock()
	return caddy.Validate(&cfg)
}

// interfaceIP returns an address of a non-loopback interface, "" without one.
func interfaceIP() string {
	for _, ip := range selfproxy.LocalIPs() {
		if !ip.IsLoopback() && !ip.IsLinkLocalUnicast() {
			return ip.String()
		}
	}
	return ""
}
