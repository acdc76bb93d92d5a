package provider

import (
	"strings"
	"testing"
)

func mustLookup(t *testing.T, name string) *Entry {
	t.Helper()
	e, err := Lookup(name)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// Parameters land in their templates; defaults fill the ones not given;
// a choice stands for its value.
func TestExpand(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, provider         string
		params                 map[string]string
		tokenURL, authorizeURL string
	}{
		{name: "microsoft default tenant", provider: "microsoft",
			tokenURL:     "https://login.microsoftonline.com/common/oauth2/v2.0/token",
			authorizeURL: "https://login.microsoftonline.com/common/oauth2/v2.0/authorize"},
		{name: "microsoft tenant", provider: "microsoft", params: map[string]string{"tenant": "contoso.onmicrosoft.com"},
			tokenURL:     "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token",
			authorizeURL: "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/authorize"},
		{name: "salesforce sandbox", provider: "salesforce", params: map[string]string{"domain": "test.salesforce.com"},
			tokenURL:     "https://test.salesforce.com/services/oauth2/token",
			authorizeURL: "https://test.salesforce.com/services/oauth2/authorize"},
		{name: "salesforce my domain", provider: "salesforce", params: map[string]string{"domain": "acme--uat.sandbox.my.salesforce.com"},
			tokenURL:     "https://acme--uat.sandbox.my.salesforce.com/services/oauth2/token",
			authorizeURL: "https://acme--uat.sandbox.my.salesforce.com/services/oauth2/authorize"},
		{name: "zoho region", provider: "zoho", params: map[string]string{"region": "eu"},
			tokenURL: "https://accounts.zoho.eu/oauth/v2/token", authorizeURL: "https://accounts.zoho.com/oauth/v2/auth"},
		{name: "zoho canada", provider: "zoho", params: map[string]string{"region": "ca"},
			tokenURL: "https://accounts.zohocloud.ca/oauth/v2/token", authorizeURL: "https://accounts.zoho.com/oauth/v2/auth"},
		{name: "okta default server", provider: "okta", params: map[string]string{"domain": "example.okta.com"},
			tokenURL:     "https://example.okta.com/oauth2/default/v1/token",
			authorizeURL: "https://example.okta.com/oauth2/default/v1/authorize"},
		{name: "keycloak with port", provider: "keycloak", params: map[string]string{"host": "sso.example.com:8443", "realm": "acme"},
			tokenURL:     "https://sso.example.com:8443/realms/acme/protocol/openid-connect/token",
			authorizeURL: "https://sso.example.com:8443/realms/acme/protocol/openid-connect/auth"},
		{name: "zendesk", provider: "zendesk", params: map[string]string{"subdomain": "acme"},
			tokenURL: "https://acme.zendesk.com/oauth/tokens", authorizeURL: "https://acme.zendesk.com/oauth/authorizations/new"},
		{name: "docusign developer", provider: "docusign", params: map[string]string{"environment": "developer"},
			tokenURL: "https://account-d.docusign.com/oauth/token", authorizeURL: "https://account-d.docusign.com/oauth/auth"},
		{name: "gitlab self-managed", provider: "gitlab", params: map[string]string{"domain": "gitlab.example.com"},
			tokenURL: "https://gitlab.example.com/oauth/token", authorizeURL: "https://gitlab.example.com/oauth/authorize"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s, err := mustLookup(t, tt.provider).Expand(tt.params)
			if err != nil {
				t.Fatalf("Expand(%v) = %v", tt.params, err)
			}
			if s.TokenURL != tt.tokenURL || s.AuthorizeURL != tt.authorizeURL {
				t.Errorf("Expand(%v) = %q, %q; want %q, %q", tt.params, s.TokenURL, s.AuthorizeURL, tt.tokenURL, tt.authorizeURL)
			}
		})
	}
}

// The settings besides the URLs come through, and are copies: expanding
// twice, or changing one expansion, leaves the entry alone.
func TestExpandSettings(t *testing.T) {
	t.Parallel()
	e := mustLookup(t, "zoho")
	s, err := e.Expand(nil)
	if err != nil {
		t.Fatal(err)
	}
	if s.ClientAuth != "secret_post" || s.HeaderScheme != "Zoho-oauthtoken" || s.AuthorizeParams["access_type"] != "offline" ||
		len(s.ExtraFields) != 1 || s.ExtraFields[0] != "api_domain" || len(s.CallbackFields) != 2 {
		t.Errorf("zoho.Expand(nil) = %+v; want the entry's settings", s)
	}
	s.AuthorizeParams["access_type"] = "online"
	s.ExtraFields[0] = "changed"
	again, _ := e.Expand(nil)
	if again.AuthorizeParams["access_type"] != "offline" || again.ExtraFields[0] != "api_domain" {
		t.Errorf("zoho.Expand after changing an expansion = %+v; want the entry unchanged", again)
	}
}

// Unknown and missing parameters are errors naming the entry and the
// parameter.
func TestExpandParameterErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, provider string
		params         map[string]string
		want           string
	}{
		{name: "unknown", provider: "microsoft", params: map[string]string{"tennant": "x"}, want: `provider microsoft: unknown parameter "tennant" (it takes tenant)`},
		{name: "none taken", provider: "google", params: map[string]string{"tenant": "x"}, want: `provider google: unknown parameter "tenant" (it takes none)`},
		{name: "missing", provider: "zendesk", want: "provider zendesk: parameter subdomain is required"},
		{name: "missing one of two", provider: "keycloak", params: map[string]string{"host": "sso.example.com"}, want: "provider keycloak: parameter realm is required"},
		{name: "bad choice", provider: "zoho", params: map[string]string{"region": "accounts.zoho.eu"}, want: `provider zoho: parameter region="accounts.zoho.eu": must be one of au, ca, cn, eu, in, jp, sa, uk, us`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if _, err := mustLookup(t, tt.provider).Expand(tt.params); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("%s.Expand(%v) = %v; want an error containing %q", tt.provider, tt.params, err, tt.want)
			}
		})
	}
}

// A parameter's value cannot add a path, a query, a fragment,
// credentials, another host, or leave its path segment: the allow-lists
// refuse every character that would.
func TestExpandRefusesInjection(t *testing.T) {
	t.Parallel()
	tests := []struct {
		provider, key string
		values        []string
	}{
		{provider: "microsoft", key: "tenant", values: []string{
			"..", ".", "a/b", "common/../evil", "a?x=1", "a#f", "a@evil.example", "a%2Fb", "a b", "a\\b", "évil", ""}},
		{provider: "zendesk", key: "subdomain", values: []string{
			"evil.example/x", "a.b", "a:443", "a@b", "-a", "a-", "a_b", strings.Repeat("a", 64)}},
		{provider: "okta", key: "domain", values: []string{
			"evil.example/x", "user@evil.example", "evil.example?x", "evil.example#x", "evil.example:0", "evil.example:65536",
			"evil.example:08", "evil.example.", ".evil.example", "evil..example", "[::1]", "evil example", "evil.example:443/x"}},
		{provider: "keycloak", key: "realm", values: []string{"..", "a/b", "a?b", "a#b", "%2e%2e"}},
	}
	for _, tt := range tests {
		for _, v := range tt.values {
			t.Run(tt.provider+"/"+v, func(t *testing.T) {
				t.Parallel()
				e := mustLookup(t, tt.provider)
				params := e.ExampleParams()
				params[tt.key] = v
				s, err := e.Expand(params)
				if err == nil {
					t.Fatalf("%s.Expand(%s=%q) = %q, nil; want the value refused", tt.provider, tt.key, v, s.TokenURL)
				}
				if v != "" && !strings.Contains(err.Error(), "provider "+tt.provider+": parameter "+tt.key) {
					t.Errorf("%s.Expand(%s=%q) = %v; want an error naming the entry and the parameter", tt.provider, tt.key, v, err)
				}
			})
		}
	}
}
