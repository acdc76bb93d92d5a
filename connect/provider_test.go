package connect

import (
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/oauth2upstream/caddy-oauth2-upstream/provider"
)

// A connect page naming a provider sends the browser to the entry's
// authorization URL with its authorize parameters, an authorize_param
// given replacing the entry's of the same name, and requests the entry's
// scopes when neither the page nor the handler names any.
func TestConnectProviderFillsUnset(t *testing.T) {
	t.Parallel()
	rig := newConnectRig(t, func(c *Connect) {
		c.AuthorizeURL = ""
		c.AuthorizeParams = map[string]string{"prompt": "select_account"}
		c.Provider = "atlassian"
	})
	rig.handler.Scopes = nil // before any request: the page reads it per flow
	auth := rig.start(t, "crm")
	q := auth.Query()
	if got := auth.Scheme + "://" + auth.Host + auth.Path; got != "https://auth.atlassian.com/authorize" {
		t.Errorf("authorization request goes to %s; want the entry's https://auth.atlassian.com/authorize", got)
	}
	want := map[string]string{"audience": "api.atlassian.com", "prompt": "select_account", "scope": "offline_access"}
	for k, v := range want {
		if got := q.Get(k); got != v {
			t.Errorf("authorization request %s = %q; want %q", k, got, v)
		}
	}
}

// The handler's scopes come before the entry's.
func TestConnectProviderHandlerScopesWin(t *testing.T) {
	t.Parallel()
	rig := newConnectRig(t, func(c *Connect) {
		c.AuthorizeURL, c.AuthorizeParams, c.Provider = "", nil, "atlassian"
	})
	if got := rig.start(t, "crm").Query().Get("scope"); got != "api" {
		t.Errorf("authorization request scope = %q; want the handler's %q", got, "api")
	}
}

// A bad provider configuration fails the page's start, naming the entry
// and the parameter.
func TestConnectProviderErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		c    Connect
		want string
	}{
		{name: "unknown provider", c: Connect{Provider: "salesfroce"}, want: `unknown provider "salesfroce"`},
		{name: "missing parameter", c: Connect{Provider: "zendesk"}, want: "provider zendesk: parameter subdomain is required"},
		{name: "injected path", c: Connect{Provider: "microsoft", ProviderParams: map[string]string{"tenant": "x/../y"}}, want: `provider microsoft: parameter tenant="x/../y"`},
		{name: "params without provider", c: Connect{ProviderParams: map[string]string{"tenant": "x"}}, want: "provider_params without provider"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if err := provisionPage(t, &tt.c); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Provision(%+v) = %v; want an error containing %q", tt.c, err, tt.want)
			}
		})
	}
}

// Every catalog entry, with its example parameters, makes a page that
// validates: an https authorization URL, and authorize parameters the flow
// does not set itself.
func TestConnectProviderEntriesValidate(t *testing.T) {
	t.Parallel()
	catalog, err := provider.Builtin()
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range catalog.Entries() {
		t.Run(e.Name, func(t *testing.T) {
			t.Parallel()
			c := &Connect{Provider: e.Name, ProviderParams: e.ExampleParams()}
			if err := provisionPage(t, c); err != nil {
				t.Fatalf("Provision() = %v", err)
			}
			if err := c.Validate(); err != nil {
				t.Errorf("Validate() of provider %s = %v", e.Name, err)
			}
		})
	}
}

// The Caddyfile's provider option, and its mistakes.
func TestConnectProviderCaddyfile(t *testing.T) {
	t.Parallel()
	var c Connect
	if err := c.UnmarshalCaddyfile(caddyfile.NewTestDispenser("oauth2_upstream_connect {\n provider okta domain=example.okta.com\n}")); err != nil {
		t.Fatalf("UnmarshalCaddyfile(provider okta ...) = %v", err)
	}
	if c.Provider != "okta" || c.ProviderParams["domain"] != "example.okta.com" {
		t.Errorf("UnmarshalCaddyfile(provider okta domain=example.okta.com) = %q %v", c.Provider, c.ProviderParams)
	}
	for input, want := range map[string]string{
		"oauth2_upstream_connect {\n provider\n}":                        "provider: want <name>",
		"oauth2_upstream_connect {\n provider nope\n}":                   `unknown provider "nope"`,
		"oauth2_upstream_connect {\n provider okta example\n}":           `"example" is not <key>=<value>`,
		"oauth2_upstream_connect {\n provider okta\n provider google\n}": "provider given twice",
	} {
		var c Connect
		if err := c.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("UnmarshalCaddyfile(%q) = %v; want an error containing %q", input, err, want)
		}
	}
}
