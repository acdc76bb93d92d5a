package connect

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"

	"github.com/oauth2upstream/caddy-oauth2-upstream/internal/discovery/discoverytest"
	"github.com/oauth2upstream/caddy-oauth2-upstream/internal/live"
)

// A page given an issuer and no authorize_url sends the browser to the
// metadata's authorization endpoint. A redirect back must carry iss when
// the metadata says the server sends it (RFC 9207 section 2.4), and may
// lack it otherwise; an iss it carries must be the issuer's.
func TestConnectDiscoversAuthorizeURL(t *testing.T) {
	t.Parallel()
	const endpoint = "https://login.example.com/oauth2/authorize"
	for _, issSupported := range []bool{true, false} {
		t.Run(map[bool]string{true: "iss supported", false: "iss not supported"}[issSupported], func(t *testing.T) {
			t.Parallel()
			as := discoverytest.NewServer(t, map[string]any{"authorization_endpoint": endpoint,
				"authorization_response_iss_parameter_supported": issSupported})
			rig := newConnectRig(t, func(c *Connect) { c.AuthorizeURL, c.Issuer = "", as.Issuer() })
			auth := rig.start(t, "crm")
			if got := auth.Scheme + "://" + auth.Host + auth.Path; got != endpoint {
				t.Fatalf("Connect sent the browser to %s; want the metadata's %s", got, endpoint)
			}
			p := rig.callback(t, url.Values{"code": {"code-1"}, "state": {auth.Query().Get("state")}})
			if accepted := p.status == http.StatusSeeOther; accepted == issSupported {
				t.Errorf("a redirect back without iss = %d; want accepted %v:\n%s", p.status, !issSupported, p.body)
			}
			auth = rig.start(t, "crm")
			p = rig.callback(t, url.Values{"code": {"code-1"}, "state": {auth.Query().Get("state")}, "iss": {"https://evil.example.com"}})
			if p.status != http.StatusBadRequest {
				t.Errorf("a redirect back from another iss = %d; want 400:\n%s", p.status, p.body)
			}
			auth = rig.start(t, "crm")
			p = rig.callback(t, url.Values{"code": {"code-1"}, "state": {auth.Query().Get("state")}, "iss": {as.Issuer()}})
			if p.status != http.StatusSeeOther {
				t.Errorf("a redirect back with the issuer's iss = %d; want 303:\n%s", p.status, p.body)
			}
		})
	}
}

// provisionPage provisions c in a registry of its own and returns
// Provision's error, else Validate's.
func provisionPage(t *testing.T, c *Connect) error {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: t.Context()})
	t.Cleanup(cancel)
	ctx = live.WithRegistry(ctx, new(live.Registry))
	if err := c.Provision(ctx); err != nil {
		return err
	}
	t.Cleanup(func() { c.Cleanup() })
	return c.Validate()
}

// A page that needs the authorization endpoint from an issuer it cannot
// read, or whose metadata names none, does not start, naming the issuer
// and authorize_url; with authorize_url set it reads no metadata at all.
func TestConnectDiscoveryFailures(t *testing.T) {
	t.Parallel()
	gone := httptest.NewServer(http.NotFoundHandler())
	gone.Close()
	noEndpoint := discoverytest.NewServer(t, map[string]any{"token_endpoint": "https://login.example.com/token"})
	tests := []struct {
		name, issuer, authorizeURL string
		wantErr                    []string // none: it starts
	}{
		{"unreachable", gone.URL, "", []string{gone.URL, "set authorize_url"}},
		{"no authorization_endpoint", noEndpoint.Issuer(), "", []string{"names no authorization_endpoint", "set authorize_url"}},
		{"unreachable, authorize_url set", gone.URL, "https://login.example.com/authorize", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := provisionPage(t, &Connect{Issuer: tt.issuer, AuthorizeURL: tt.authorizeURL})
			if tt.wantErr == nil && err != nil {
				t.Errorf("Provision() = %v; want it to start", err)
			}
			for _, want := range tt.wantErr {
				if err == nil || !strings.Contains(err.Error(), want) {
					t.Errorf("Provision() = %v; want an error with %q", err, want)
				}
			}
		})
	}
}
