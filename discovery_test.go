package oauth2upstream

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/oauth2upstream/caddy-oauth2-upstream/credential"
	"github.com/oauth2upstream/caddy-oauth2-upstream/credential/credentialtest"
	"github.com/oauth2upstream/caddy-oauth2-upstream/internal/discovery/discoverytest"
)

// provisionIn provisions h, with a file keystore of its own, in ctx, and
// cleans it up when the test ends. It returns Provision's error, else
// Validate's.
func provisionIn(t *testing.T, ctx caddy.Context, h *Handler) error {
	t.Helper()
	raw, _ := json.Marshal(map[string]string{"backend": "file", "path": t.TempDir()})
	h.KeystoreRaw = raw
	provisionMu.Lock()
	err := h.Provision(ctx)
	provisionMu.Unlock()
	if err != nil {
		return err
	}
	t.Cleanup(func() { h.Cleanup() })
	return h.Validate()
}

// A handler given only an issuer takes the token endpoint and the client
// authentication from its metadata, and grants there.
func TestDiscoveryConfiguresTheHandler(t *testing.T) {
	t.Parallel()
	te := credentialtest.NewTokenEndpoint(t, "rt-0")
	te.Respond = func(w http.ResponseWriter, r *http.Request) bool {
		if _, _, basic := r.BasicAuth(); basic || r.PostFormValue("client_secret") != "s" {
			http.Error(w, `{"error":"invalid_client"}`, http.StatusUnauthorized)
			return true
		}
		return false
	}
	as := discoverytest.NewServer(t, map[string]any{"token_endpoint": te.URL(),
		"token_endpoint_auth_methods_supported": []string{"client_secret_post", "private_key_jwt"}})
	api := newAPIServer(t, "Bearer at-1")
	s := newSidecar(t, &Handler{DiscoveryOptions: DiscoveryOptions{Issuer: as.Issuer()}, ClientID: "c", ClientSecret: "s", RefreshToken: "rt-0"},
		hostPort(t, api.server.URL))
	if s.handler.TokenURL != te.URL() || s.handler.ClientAuth != credential.ClientAuthSecretPost {
		t.Errorf("from the metadata: token_url %q, client_auth %q; want %q, secret_post", s.handler.TokenURL, s.handler.ClientAuth, te.URL())
	}
	if resp, body := s.get(t, "/x"); resp.StatusCode != http.StatusOK {
		t.Fatalf("GET through the sidecar = %d %s; want 200", resp.StatusCode, body)
	}
	if n := te.Grants.Load(); n != 1 {
		t.Errorf("grants at the discovered token endpoint = %d; want 1", n)
	}
}

// Explicit options win over the metadata; client_auth is chosen from it
// only when none is set, the default first when the server takes it.
func TestDiscoveryPrecedence(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name           string
		methods        []string
		handler        Handler
		wantTokenURL   string // "" for the metadata's
		wantClientAuth string
	}{
		{name: "token_url set", methods: []string{"client_secret_basic"},
			handler:      Handler{TokenURL: "https://login.example.com/token", ClientSecret: "s"},
			wantTokenURL: "https://login.example.com/token", wantClientAuth: credential.ClientAuthSecretBasic},
		{name: "client_auth set", methods: []string{"client_secret_post"},
			handler: Handler{ClientSecret: "s", ClientAuthOptions: ClientAuthOptions{ClientAuth: credential.ClientAuthSecretBasic}}, wantClientAuth: credential.ClientAuthSecretBasic},
		{name: "auth_style set", methods: []string{"client_secret_basic"},
			handler: Handler{ClientSecret: "s", AuthStyle: authStylePost}, wantClientAuth: ""},
		{name: "the default, listed", methods: []string{"client_secret_post", "client_secret_basic"},
			handler: Handler{ClientSecret: "s"}, wantClientAuth: credential.ClientAuthSecretBasic},
		{name: "post, the only secret method listed", methods: []string{"private_key_jwt", "client_secret_post"},
			handler: Handler{ClientSecret: "s"}, wantClientAuth: credential.ClientAuthSecretPost},
		{name: "a public client", methods: []string{"client_secret_basic", "none"},
			handler: Handler{}, wantClientAuth: credential.ClientAuthNone},
		{name: "no methods listed", handler: Handler{ClientSecret: "s"}, wantClientAuth: credential.ClientAuthSecretBasic},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			doc := map[string]any{"token_endpoint": "https://as.example.com/token"}
			if tt.methods != nil {
				doc["token_endpoint_auth_methods_supported"] = tt.methods
			}
			as := discoverytest.NewServer(t, doc)
			h := tt.handler
			h.Issuer, h.ClientID = as.Issuer(), "c"
			if err := provisionIn(t, provisionContext(t), &h); err != nil {
				t.Fatalf("Provision() = %v", err)
			}
			want := tt.wantTokenURL
			if want == "" {
				want = "https://as.example.com/token"
			}
			if h.TokenURL != want || h.ClientAuth != tt.wantClientAuth {
				t.Errorf("token_url %q, client_auth %q; want %q, %q", h.TokenURL, h.ClientAuth, want, tt.wantClientAuth)
			}
		})
	}
}

// What the metadata refuses stops the handler, naming what to fix: a
// document of another issuer (RFC 8414 section 3.3), an http issuer off
// loopback, no token endpoint, no client authentication the credentials
// allow, a DPoP algorithm the server does not take (RFC 9449 section 5.1).
func TestDiscoveryRefusals(t *testing.T) {
	t.Parallel()
	dpopKey := func(t *testing.T) *DPoPConfig {
		_, path := newECKeyFile(t, t.TempDir(), "dpop.pem")
		return &DPoPConfig{Resource: "https://api.example.com", Key: path}
	}
	tests := []struct {
		name    string
		doc     map[string]any // served at a loopback issuer; nil: issuer is used as it is
		issuer  string
		dpop    bool
		wantErr []string
	}{
		{name: "another issuer", doc: map[string]any{"issuer": "https://evil.example.com", "token_endpoint": "https://evil.example.com/token"},
			wantErr: []string{`"https://evil.example.com"`, "must be identical"}},
		{name: "http off loopback", issuer: "http://as.example.com", wantErr: []string{"issuer", "must be https"}},
		{name: "no token endpoint", doc: map[string]any{}, wantErr: []string{"names no token_endpoint", "set token_url"}},
		{name: "no client authentication allowed", doc: map[string]any{"token_endpoint": "https://as.example.com/token",
			"token_endpoint_auth_methods_supported": []string{"private_key_jwt"}}, wantErr: []string{"private_key_jwt", "set client_auth"}},
		{name: "a DPoP algorithm not taken", dpop: true, doc: map[string]any{"token_endpoint": "https://as.example.com/token",
			"dpop_signing_alg_values_supported": []string{"RS256", "PS256"}}, wantErr: []string{"dpop", "ES256", "RS256, PS256"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			issuer := tt.issuer
			if tt.doc != nil {
				issuer = discoverytest.NewServer(t, tt.doc).Issuer()
			}
			h := &Handler{DiscoveryOptions: DiscoveryOptions{Issuer: issuer}, ClientID: "c", ClientSecret: "s"}
			if tt.dpop {
				h.DPoP = dpopKey(t)
			}
			err := provisionIn(t, provisionContext(t), h)
			for _, want := range tt.wantErr {
				if err == nil || !strings.Contains(err.Error(), want) {
					t.Errorf("Provision() = %v; want an error with %q", err, want)
				}
			}
		})
	}
}

// The server's DPoP algorithms list ES256, the proofs': the handler starts.
func TestDiscoveryDPoPAlgTaken(t *testing.T) {
	t.Parallel()
	_, key := newECKeyFile(t, t.TempDir(), "dpop.pem")
	as := discoverytest.NewServer(t, map[string]any{"token_endpoint": "https://as.example.com/token",
		"dpop_signing_alg_values_supported": []string{"RS256", "ES256"}})
	h := &Handler{DiscoveryOptions: DiscoveryOptions{Issuer: as.Issuer()}, ClientID: "c", ClientSecret: "s",
		DPoPOptions: DPoPOptions{DPoP: &DPoPConfig{Resource: "https://api.example.com", Key: key}}}
	if err := provisionIn(t, provisionContext(t), h); err != nil {
		t.Errorf("Provision() with ES256 listed = %v; want it to start", err)
	}
}

// An issuer that cannot be reached stops a handler that needs its token
// endpoint, with a message naming the issuer and the option to set; one
// with token_url set starts, with its configured options.
func TestDiscoveryUnreachableIssuer(t *testing.T) {
	t.Parallel()
	gone := httptest.NewServer(http.NotFoundHandler())
	gone.Close() // nothing listens there now
	h := &Handler{DiscoveryOptions: DiscoveryOptions{Issuer: gone.URL}, ClientID: "c", ClientSecret: "s"}
	err := provisionIn(t, provisionContext(t), h)
	if err == nil || !strings.Contains(err.Error(), gone.URL) || !strings.Contains(err.Error(), "set token_url") {
		t.Errorf("Provision() with an unreachable issuer = %v; want an error naming %s and token_url", err, gone.URL)
	}
	h = &Handler{DiscoveryOptions: DiscoveryOptions{Issuer: gone.URL}, TokenURL: "https://login.example.com/token", ClientID: "c", ClientSecret: "s"}
	if err := provisionIn(t, provisionContext(t), h); err != nil || h.ClientAuth != "" {
		t.Errorf("Provision() with an unreachable issuer and token_url = %v, client_auth %q; want it to start as configured", err, h.ClientAuth)
	}
}

// discovery_timeout bounds reading the metadata: an issuer that never
// answers stops the handler once it passes.
func TestDiscoveryTimeout(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	stuck := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { <-release }))
	t.Cleanup(stuck.Close)
	t.Cleanup(func() { close(release) }) // runs first, so Close can end
	h := &Handler{DiscoveryOptions: DiscoveryOptions{Issuer: stuck.URL, DiscoveryTimeout: caddy.Duration(50 * time.Millisecond)},
		ClientID: "c", ClientSecret: "s"}
	err := provisionIn(t, provisionContext(t), h)
	if err == nil || !strings.Contains(err.Error(), "no answer within 50ms") || !strings.Contains(err.Error(), stuck.URL) {
		t.Errorf("Provision() with an issuer that never answers = %v; want an error naming it: no answer within 50ms", err)
	}
}

// Two handlers of one config that name one issuer read its metadata once,
// and so does a reload (a new config) soon after.
func TestDiscoveryReadOnce(t *testing.T) {
	t.Parallel()
	as := discoverytest.NewServer(t, map[string]any{"token_endpoint": "https://as.example.com/token"})
	ctx := provisionContext(t)
	for _, name := range []string{"one", "two"} {
		h := &Handler{DiscoveryOptions: DiscoveryOptions{Issuer: as.Issuer()}, ClientID: "c", ClientSecret: "s", KeySet: name}
		if err := provisionIn(t, ctx, h); err != nil {
			t.Fatalf("Provision(%s) = %v", name, err)
		}
	}
	reloaded := &Handler{DiscoveryOptions: DiscoveryOptions{Issuer: as.Issuer()}, ClientID: "c", ClientSecret: "s"}
	if err := provisionIn(t, provisionContext(t), reloaded); err != nil {
		t.Fatalf("Provision(reloaded) = %v", err)
	}
	if n := as.Requests(); n != 1 {
		t.Errorf("metadata requests for three handlers, two configs = %d; want 1", n)
	}
}
