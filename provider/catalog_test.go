package provider

import (
	"strings"
	"testing"
)

// The providers the catalog must have (issue: providers by name).
var wantEntries = []string{
	"microsoft", "salesforce", "google", "hubspot", "slack", "zoho", "quickbooks", "xero", "dropbox",
	"box", "atlassian", "github_app", "gitlab", "okta", "auth0", "keycloak", "docusign", "pipedrive",
	"zendesk", "asana",
}

// The embedded catalog loads (every entry validates, sources included),
// has the providers it promises, and every entry expands with its
// example parameters.
func TestBuiltinCatalog(t *testing.T) {
	t.Parallel()
	c, err := Builtin()
	if err != nil {
		t.Fatalf("Builtin() = %v", err)
	}
	if n := len(c.Entries()); n < 20 {
		t.Errorf("len(Entries()) = %d; want at least 20", n)
	}
	for _, name := range wantEntries {
		e, err := Lookup(name)
		if err != nil {
			t.Errorf("Lookup(%q) = %v", name, err)
			continue
		}
		if len(e.Sources) == 0 {
			t.Errorf("Lookup(%q).Sources is empty; want the provider's documentation", name)
		}
		if _, err := e.Expand(e.ExampleParams()); err != nil {
			t.Errorf("%s.Expand(%v) = %v", name, e.ExampleParams(), err)
		}
	}
}

// Lookup names the known entries when the name is unknown.
func TestLookupUnknown(t *testing.T) {
	t.Parallel()
	_, err := Lookup("salesfroce")
	if err == nil || !strings.Contains(err.Error(), `unknown provider "salesfroce"`) || !strings.Contains(err.Error(), "salesforce") {
		t.Errorf("Lookup(%q) = %v; want an error naming the known providers", "salesfroce", err)
	}
}

// A catalog is refused when an entry is malformed: the checks that make
// the embedded one trustworthy.
func TestParseRefuses(t *testing.T) {
	t.Parallel()
	src := `"sources": [{"url": "https://docs.example.com/oauth", "for": ["token_url"]}]`
	tests := []struct {
		name, entry, want string
	}{
		{name: "unknown field", entry: `"name": "x", "title": "X", "token_url": "https://x.example/t", "tokenurl": "y", ` + src, want: `unknown field "tokenurl"`},
		{name: "no sources", entry: `"name": "x", "title": "X", "token_url": "https://x.example/t"`, want: "sources: every entry cites"},
		{name: "field without source", entry: `"name": "x", "title": "X", "token_url": "https://x.example/t", "client_auth": "secret_post", ` + src, want: "client_auth is set but no source supports it"},
		{name: "source for an unset field", entry: `"name": "x", "title": "X", "token_url": "https://x.example/t", "sources": [{"url": "https://d.example", "for": ["token_url", "scopes"]}]`, want: `"scopes" is no field this entry sets`},
		{name: "http source", entry: `"name": "x", "title": "X", "token_url": "https://x.example/t", "sources": [{"url": "http://d.example", "for": ["token_url"]}]`, want: "want an https url"},
		{name: "note without source", entry: `"name": "x", "title": "X", "token_url": "https://x.example/t", "notes": [{"text": "t"}], ` + src, want: "notes[0]"},
		{name: "undeclared template", entry: `"name": "x", "title": "X", "token_url": "https://{tenant}.example/t", ` + src, want: `template "{tenant}" names no parameter`},
		{name: "unused parameter", entry: `"name": "x", "title": "X", "token_url": "https://x.example/t", "params": {"tenant": {"kind": "label", "default": "a", "doc": "d"}}, ` + src, want: "params.tenant: no template uses it"},
		{name: "unknown kind", entry: `"name": "x", "title": "X", "token_url": "https://{t}.example/t", "params": {"t": {"kind": "word", "default": "a", "doc": "d"}}, ` + src, want: `kind "word"`},
		{name: "bad default", entry: `"name": "x", "title": "X", "token_url": "https://{t}.example/t", "params": {"t": {"kind": "label", "default": "a.b", "doc": "d"}}, ` + src, want: `"a.b": must be a DNS label`},
		{name: "required without example", entry: `"name": "x", "title": "X", "token_url": "https://{t}.example/t", "params": {"t": {"kind": "label", "doc": "d"}}, ` + src, want: "want a default, or"},
		{name: "unknown rotation", entry: `"name": "x", "title": "X", "token_url": "https://x.example/t", "refresh": {"rotation": "sometimes"}, ` + src, want: `refresh.rotation "sometimes"`},
		{name: "http token_url", entry: `"name": "x", "title": "X", "token_url": "http://x.example/t", ` + src, want: `token_url "http://x.example/t": not a plain https URL`},
		{name: "bad name", entry: `"name": "X-1", "title": "X", "token_url": "https://x.example/t", ` + src, want: "name: want lower-case"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := Parse([]byte(`{"providers": [{` + tt.entry + `}]}`))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Parse(%s) = %v; want an error containing %q", tt.name, err, tt.want)
			}
		})
	}
	dup := `{"name": "x", "title": "X", "token_url": "https://x.example/t", ` + src + `}`
	if _, err := Parse([]byte(`{"providers": [` + dup + `, ` + dup + `]}`)); err == nil || !strings.Contains(err.Error(), "listed twice") {
		t.Errorf("Parse(two entries named x) = %v; want listed twice", err)
	}
}

// ParseArgs reads `provider <name> [<key>=<value>...]` and refuses what is
// not of that shape.
func TestParseArgs(t *testing.T) {
	t.Parallel()
	name, params, err := ParseArgs([]string{"okta", "domain=example.okta.com", "authorization_server=aus1"})
	if err != nil || name != "okta" || params["domain"] != "example.okta.com" || params["authorization_server"] != "aus1" || len(params) != 2 {
		t.Errorf("ParseArgs(okta ...) = %q, %v, %v; want okta and two parameters", name, params, err)
	}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{name: "nothing", args: nil, want: "want <name>"},
		{name: "no equals", args: []string{"okta", "example.okta.com"}, want: `"example.okta.com" is not <key>=<value>`},
		{name: "empty key", args: []string{"okta", "=x"}, want: "is not <key>=<value>"},
		{name: "empty value", args: []string{"okta", "domain="}, want: "is not <key>=<value>"},
		{name: "twice", args: []string{"okta", "domain=a", "domain=b"}, want: `parameter "domain" given twice`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if _, _, err := ParseArgs(tt.args); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("ParseArgs(%q) = %v; want an error containing %q", tt.args, err, tt.want)
			}
		})
	}
}
