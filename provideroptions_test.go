package oauth2upstream

import (
	"encoding/json"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/oauth2upstream/caddy-oauth2-upstream/internal/live"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
	"github.com/oauth2upstream/caddy-oauth2-upstream/provider"
)

// applyTestProvider applies h's provider with a logger the test reads.
func applyTestProvider(t *testing.T, h *Handler) (*observer.ObservedLogs, error) {
	t.Helper()
	core, logs := observer.New(zapcore.InfoLevel)
	h.logger = zap.New(core)
	return logs, h.applyProvider(caddy.NewReplacer())
}

// A provider fills the options left unset, and one info line names the
// provider and the options it set.
func TestProviderFillsUnsetOptions(t *testing.T) {
	t.Parallel()
	h := &Handler{ClientID: "c", ProviderOptions: ProviderOptions{Provider: "salesforce", ProviderParams: map[string]string{"domain": "acme.my.salesforce.com"}}}
	logs, err := applyTestProvider(t, h)
	if err != nil {
		t.Fatalf("applyProvider() = %v", err)
	}
	want := Handler{
		TokenURL: "https://acme.my.salesforce.com/services/oauth2/token", Scopes: []string{"api", "refresh_token"},
		Refresh: "reactive", ExtraFields: keystore.DefaultExtraFields(), ClientAuthOptions: ClientAuthOptions{ClientAuth: "secret_post"},
	}
	if h.TokenURL != want.TokenURL || !slices.Equal(h.Scopes, want.Scopes) || h.Refresh != want.Refresh ||
		h.ClientAuth != want.ClientAuth || !slices.Equal(h.ExtraFields, want.ExtraFields) {
		t.Errorf("applyProvider(salesforce) = token_url %q scopes %q refresh %q client_auth %q extra_fields %q; want %q %q %q %q %q",
			h.TokenURL, h.Scopes, h.Refresh, h.ClientAuth, h.ExtraFields, want.TokenURL, want.Scopes, want.Refresh, want.ClientAuth, want.ExtraFields)
	}
	entries := logs.FilterMessage("options set by the provider catalog").All()
	if len(entries) != 1 {
		t.Fatalf("applyProvider() logged %d info lines; want 1", len(entries))
	}
	fields := entries[0].ContextMap()
	wantSet := []any{"token_url", "client_auth", "refresh", "scopes", "extra_fields"}
	if fields["provider"] != "salesforce" || !reflect.DeepEqual(fields["set"], wantSet) {
		t.Errorf("applyProvider() logged %v; want provider salesforce and set %v", fields, wantSet)
	}
}

// An option that is set always wins over the entry's: each one the entry
// would set, given explicitly, stays as given.
func TestProviderExplicitOptionsWin(t *testing.T) {
	t.Parallel()
	explicit := func() *Handler {
		return &Handler{
			TokenURL: "https://login.example.com/token", Scopes: []string{"read"}, Refresh: "proactive",
			HeaderScheme: "Bearer", ExtraFields: []string{"id"},
			Params:            map[string][]string{"resource": {"https://api.example.com"}},
			ClientAuthOptions: ClientAuthOptions{ClientAuth: "secret_basic"},
		}
	}
	for _, name := range []string{"salesforce", "zoho", "microsoft", "atlassian"} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			h := explicit()
			h.ProviderOptions = ProviderOptions{Provider: name}
			logs, err := applyTestProvider(t, h)
			if err != nil {
				t.Fatalf("applyProvider() = %v", err)
			}
			want := explicit()
			want.ProviderOptions, want.logger = h.ProviderOptions, h.logger
			if !reflect.DeepEqual(h, want) {
				t.Errorf("applyProvider(%s) over explicit options = %+v; want them unchanged %+v", name, h, want)
			}
			if set := logs.All()[0].ContextMap()["set"]; !reflect.DeepEqual(set, []any{}) {
				t.Errorf("applyProvider(%s) logged set %v; want nothing set", name, set)
			}
		})
	}
	t.Run("auth_style", func(t *testing.T) {
		t.Parallel()
		h := &Handler{AuthStyle: "basic", ProviderOptions: ProviderOptions{Provider: "salesforce"}}
		if _, err := applyTestProvider(t, h); err != nil || h.ClientAuth != "" {
			t.Errorf("applyProvider(salesforce) with auth_style basic = client_auth %q, %v; want auth_style to stand", h.ClientAuth, err)
		}
	})
	t.Run("param of the same name", func(t *testing.T) {
		t.Parallel()
		// No entry has token params today: a handler test of the rule
		// against a settings value.
		h := &Handler{Params: map[string][]string{"audience": {"mine"}}}
		set := h.fillFromProvider(provider.Settings{TokenParams: map[string]string{"audience": "entry", "resource": "entry"}})
		want := map[string][]string{"audience": {"mine"}, "resource": {"entry"}}
		if !reflect.DeepEqual(h.Params, want) || !slices.Equal(set, []string{"param resource"}) {
			t.Errorf("fillFromProvider() = %v, set %q; want %v, set [param resource]", h.Params, set, want)
		}
	})
}

// A provider's parameters may hold placeholders, replaced before the
// values are checked.
func TestProviderParamPlaceholders(t *testing.T) {
	t.Setenv("TEST_PROVIDER_TENANT", "contoso.onmicrosoft.com")
	h := &Handler{ProviderOptions: ProviderOptions{Provider: "microsoft", ProviderParams: map[string]string{"tenant": "{env.TEST_PROVIDER_TENANT}"}}}
	if _, err := applyTestProvider(t, h); err != nil {
		t.Fatalf("applyProvider() = %v", err)
	}
	if want := "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"; h.TokenURL != want {
		t.Errorf("applyProvider(tenant={env.TEST_PROVIDER_TENANT}) = token_url %q; want %q", h.TokenURL, want)
	}
	t.Setenv("TEST_PROVIDER_TENANT", "evil.example/x?")
	h = &Handler{ProviderOptions: ProviderOptions{Provider: "microsoft", ProviderParams: map[string]string{"tenant": "{env.TEST_PROVIDER_TENANT}"}}}
	if _, err := applyTestProvider(t, h); err == nil || !strings.Contains(err.Error(), "provider microsoft: parameter tenant") {
		t.Errorf("applyProvider(tenant from the environment = %q) = %v; want it refused", "evil.example/x?", err)
	}
}

// Provisioning a handler with a provider: the entry fills what is unset,
// an explicit option wins, and a bad provider configuration fails the
// start, naming the entry and the parameter.
func TestProviderProvision(t *testing.T) {
	t.Parallel()
	h := &Handler{
		ClientID: "c", ClientSecret: "s", Scopes: []string{"https://graph.microsoft.com/Mail.Read", "offline_access"},
		ProviderOptions: ProviderOptions{Provider: "microsoft", ProviderParams: map[string]string{"tenant": "contoso.onmicrosoft.com"}},
		KeystoreRaw:     json.RawMessage(`{"backend":"file","path":` + strconvQuote(t.TempDir()) + `}`),
	}
	if err := h.Provision(provisionContext(t)); err != nil {
		t.Fatalf("Provision() = %v", err)
	}
	defer h.Cleanup()
	if err := h.Validate(); err != nil {
		t.Fatalf("Validate() = %v", err)
	}
	if want := "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"; h.TokenURL != want {
		t.Errorf("Provision(provider microsoft) = token_url %q; want %q", h.TokenURL, want)
	}
	if want := []string{"https://graph.microsoft.com/Mail.Read", "offline_access"}; !slices.Equal(h.Scopes, want) || h.ClientAuth != "secret_post" {
		t.Errorf("Provision(provider microsoft, scopes given) = scopes %q client_auth %q; want %q secret_post", h.Scopes, h.ClientAuth, want)
	}

	tests := []struct {
		name    string
		options ProviderOptions
		want    string
	}{
		{name: "unknown provider", options: ProviderOptions{Provider: "salesfroce"}, want: `unknown provider "salesfroce"`},
		{name: "unknown parameter", options: ProviderOptions{Provider: "okta", ProviderParams: map[string]string{"domain": "example.okta.com", "org": "x"}}, want: `provider okta: unknown parameter "org"`},
		{name: "missing parameter", options: ProviderOptions{Provider: "okta"}, want: "provider okta: parameter domain is required"},
		{name: "injected host", options: ProviderOptions{Provider: "zendesk", ProviderParams: map[string]string{"subdomain": "evil.example/x"}}, want: `provider zendesk: parameter subdomain="evil.example/x"`},
		{name: "params without provider", options: ProviderOptions{ProviderParams: map[string]string{"tenant": "x"}}, want: "provider_params without provider"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := &Handler{ClientID: "c", ProviderOptions: tt.options}
			err := h.Provision(provisionContext(t))
			if err == nil {
				h.Cleanup()
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Provision(%+v) = %v; want an error containing %q", tt.options, err, tt.want)
			}
		})
	}
}

// Every catalog entry, expanded with its example parameters, makes a
// handler that validates: its client_auth, params, URLs and extra fields
// are ones the handler takes.
func TestProviderEntriesValidate(t *testing.T) {
	t.Parallel()
	catalog, err := provider.Builtin()
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range catalog.Entries() {
		t.Run(e.Name, func(t *testing.T) {
			t.Parallel()
			h := &Handler{ClientID: "c", ClientSecret: "s", ProviderOptions: ProviderOptions{Provider: e.Name, ProviderParams: e.ExampleParams()}}
			if _, err := applyTestProvider(t, h); err != nil {
				t.Fatalf("applyProvider() = %v", err)
			}
			h.setDefaults()
			h.keySets = live.KeySetRule{Name: h.KeySet}
			if err := h.Validate(); err != nil {
				t.Errorf("Validate() of provider %s = %v", e.Name, err)
			}
		})
	}
}

// Caddyfile mistakes in the provider option name it.
func TestProviderCaddyfileErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, input, want string
	}{
		{name: "no name", input: "oauth2_upstream {\n provider\n}", want: "provider: want <name>"},
		{name: "unknown", input: "oauth2_upstream {\n provider salesfroce\n}", want: `unknown provider "salesfroce"`},
		{name: "not key=value", input: "oauth2_upstream {\n provider microsoft contoso\n}", want: `provider microsoft: "contoso" is not <key>=<value>`},
		{name: "twice", input: "oauth2_upstream {\n provider microsoft\n provider google\n}", want: "provider given twice"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var h Handler
			if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tt.input)); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("UnmarshalCaddyfile(%q) = %v; want an error containing %q", tt.input, err, tt.want)
			}
		})
	}
}

// The README's Providers table has a row for every catalog entry.
func TestReadmeListsEveryProvider(t *testing.T) {
	t.Parallel()
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	catalog, err := provider.Builtin()
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range catalog.Entries() {
		if !strings.Contains(string(readme), "\n| `"+e.Name+"` |") {
			t.Errorf("README.md has no Providers row for %s", e.Name)
		}
	}
}
