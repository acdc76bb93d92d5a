package authserver

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"
)

func newServer(t *testing.T, cfg Config) *Server {
	t.Helper()
	s, err := New(cfg)
	if err != nil {
		t.Fatalf("New() = %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close() = %v", err)
		}
	})
	return s
}

// clientContext gives each test its own HTTP client, so that no test shares
// pooled connections with another.
func clientContext(t *testing.T) context.Context {
	t.Helper()
	transport := &http.Transport{}
	t.Cleanup(transport.CloseIdleConnections)
	client := &http.Client{Transport: transport, Timeout: 10 * time.Second}
	return context.WithValue(t.Context(), oauth2.HTTPClient, client)
}

func oauthConfig(s *Server, id, secret string, style oauth2.AuthStyle) *oauth2.Config {
	return &oauth2.Config{
		ClientID:     id,
		ClientSecret: secret,
		Endpoint:     oauth2.Endpoint{TokenURL: s.TokenURL(), AuthStyle: style},
	}
}

func defaultConfig(s *Server) *oauth2.Config {
	return oauthConfig(s, DefaultClientID, DefaultClientSecret, oauth2.AuthStyleInHeader)
}

// refresh runs one refresh_token grant, as a client holding only a refresh token.
func refresh(ctx context.Context, conf *oauth2.Config, refreshToken string) (*oauth2.Token, error) {
	return conf.TokenSource(ctx, &oauth2.Token{RefreshToken: refreshToken}).Token()
}

func mustSeed(t *testing.T, s *Server, clientID string) string {
	t.Helper()
	rt, err := s.Seed(t.Context(), clientID, "api", "refresh_token")
	if err != nil {
		t.Fatalf("Seed(%q) = %v", clientID, err)
	}
	return rt
}

func mustRefresh(t *testing.T, ctx context.Context, conf *oauth2.Config, refreshToken string) *oauth2.Token {
	t.Helper()
	tok, err := refresh(ctx, conf, refreshToken)
	if err != nil {
		t.Fatalf("refresh() = %v", err)
	}
	return tok
}

func errorCode(err error) string {
	var re *oauth2.RetrieveError
	if errors.As(err, &re) {
		return re.ErrorCode
	}
	return ""
}

// introspect asks the server whether token is an active access token, as the
// resource server does.
func introspect(t *testing.T, ctx context.Context, s *Server, token string) bool {
	t.Helper()
	form := url.Values{"token": {token}, "token_type_hint": {"access_token"}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.IntrospectURL(), strings.NewReader(form.Encode()))
	if err != nil {
		t.Fatalf("NewRequest() = %v", err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(ResourceServerClientID, ResourceServerClientSecret)
	resp, err := ctx.Value(oauth2.HTTPClient).(*http.Client).Do(req)
	if err != nil {
		t.Fatalf("introspect: %v", err)
	}
	defer resp.Body.Close()
	var body struct {
		Active bool `json:"active"`
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("introspect: status %d; want 200", resp.StatusCode)
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatalf("introspect: decode: %v", err)
	}
	return body.Active
}

// Scenario: a seeded refresh token buys an active bearer access token.
func TestSeedThenRefresh(t *testing.T) {
	t.Parallel()
	s := newServer(t, Config{})
	ctx := clientContext(t)
	seed := mustSeed(t, s, DefaultClientID)

	tok := mustRefresh(t, ctx, defaultConfig(s), seed)
	if tok.AccessToken == "" || tok.Type() != "Bearer" || tok.Expiry.IsZero() {
		t.Errorf("refresh() = access token %t, type %q, expiry %v; want a Bearer token with an expiry",
			tok.AccessToken != "", tok.Type(), tok.Expiry)
	}
	if got, want := tok.Extra("scope"), "api refresh_token"; got != want {
		t.Errorf("scope = %v; want %q", got, want)
	}
	if !introspect(t, ctx, s, tok.AccessToken) {
		t.Errorf("introspect(new access token) = inactive; want active")
	}
	if got := s.Grants(); got != 1 {
		t.Errorf("Grants() = %d; want 1", got)
	}
	if got := s.GrantAttempts(); got != 1 {
		t.Errorf("GrantAttempts() = %d; want 1", got)
	}
}

// Scenario: each grant rotates the refresh token (Microsoft, Okta, Hydra);
// nothing is taken for reuse while each new token is used in turn.
func TestRotationIssuesANewRefreshTokenEachGrant(t *testing.T) {
	t.Parallel()
	s := newServer(t, Config{})
	ctx := clientContext(t)
	conf := defaultConfig(s)

	seen := map[string]bool{}
	rt := mustSeed(t, s, DefaultClientID)
	for i := range 3 {
		seen[rt] = true
		tok := mustRefresh(t, ctx, conf, rt)
		if tok.RefreshToken == "" || seen[tok.RefreshToken] {
			t.Fatalf("grant %d: refresh token is empty or repeated; want a new one", i)
		}
		rt = tok.RefreshToken
	}
	if got := s.Grants(); got != 3 {
		t.Errorf("Grants() = %d; want 3", got)
	}
	if got := s.ReuseDetections(); got != 0 {
		t.Errorf("ReuseDetections() = %d; want 0", got)
	}
}

// Scenario: a spent refresh token presented again is refused and fosite
// revokes the whole family (RFC 6819 section 5.2.2.3): the newest refresh
// token and its access token die too.
func TestReuseOfSpentRefreshTokenRevokesFamily(t *testing.T) {
	t.Parallel()
	s := newServer(t, Config{})
	ctx := clientContext(t)
	conf := defaultConfig(s)
	seed := mustSeed(t, s, DefaultClientID)
	newest := mustRefresh(t, ctx, conf, seed)

	_, err := refresh(ctx, conf, seed)
	if got := errorCode(err); got != "invalid_grant" {
		t.Fatalf("refresh(spent token) error = %v; want invalid_grant", err)
	}
	if got := s.ReuseDetections(); got != 1 {
		t.Errorf("ReuseDetections() = %d; want 1", got)
	}
	if introspect(t, ctx, s, newest.AccessToken) {
		t.Errorf("introspect(family's access token) = active; want revoked")
	}
	_, err = refresh(ctx, conf, newest.RefreshToken)
	if got := errorCode(err); got != "invalid_grant" {
		t.Errorf("refresh(newest token after reuse) error = %v; want invalid_grant", err)
	}
	_, err = refresh(ctx, conf, seed)
	if got := errorCode(err); got != "invalid_grant" {
		t.Errorf("refresh(spent token, third time) error = %v; want invalid_grant", err)
	}
	// Only the spent token's return was a reuse; the others were revoked.
	if got := s.ReuseDetections(); got != 1 {
		t.Errorf("ReuseDetections() after revoked tokens = %d; want 1", got)
	}
	if got, want := s.Grants(), 1; got != want {
		t.Errorf("Grants() = %d; want %d", got, want)
	}
	if got, want := s.GrantAttempts(), 4; got != want {
		t.Errorf("GrantAttempts() = %d; want %d", got, want)
	}
}

// Scenario: several clients spend one refresh token at once (the
// invalid_grant storm a sidecar without single-flight causes): exactly one
// wins, and the reuse that follows kills the winner's new token too.
func TestConcurrentSpendOfOneRefreshToken(t *testing.T) {
	t.Parallel()
	s := newServer(t, Config{})
	ctx := clientContext(t)
	conf := defaultConfig(s)
	seed := mustSeed(t, s, DefaultClientID)

	const clients = 4
	var (
		wg      sync.WaitGroup
		start   = make(chan struct{})
		mu      sync.Mutex
		winners []*oauth2.Token
		refused int
		others  []error
	)
	for range clients {
		wg.Go(func() {
			<-start
			tok, err := refresh(ctx, conf, seed)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				winners = append(winners, tok)
			case errorCode(err) == "invalid_grant":
				refused++
			default:
				others = append(others, err)
			}
		})
	}
	close(start)
	wg.Wait()

	if len(winners) != 1 || refused != clients-1 || len(others) != 0 {
		t.Fatalf("concurrent refresh: %d succeeded, %d invalid_grant, other errors %v; want 1, %d, none",
			len(winners), refused, others, clients-1)
	}
	if got := s.ReuseDetections(); got != 1 {
		t.Errorf("ReuseDetections() = %d; want 1", got)
	}
	_, err := refresh(ctx, conf, winners[0].RefreshToken)
	if got := errorCode(err); got != "invalid_grant" {
		t.Errorf("refresh(winner's token) error = %v; want invalid_grant (family revoked)", err)
	}
}

// Scenario: an access token stops being active once its lifespan is over.
func TestAccessTokenExpiresAfterLifespan(t *testing.T) {
	t.Parallel()
	const lifespan = time.Second
	s := newServer(t, Config{AccessTokenLifespan: lifespan})
	ctx := clientContext(t)
	issued := time.Now()
	tok := mustRefresh(t, ctx, defaultConfig(s), mustSeed(t, s, DefaultClientID))
	if !introspect(t, ctx, s, tok.AccessToken) {
		t.Fatalf("introspect(fresh token) = inactive; want active")
	}

	// fosite rounds expiry to the second, so allow lifespan + 1s, and more
	// for a slow -race run.
	deadline := issued.Add(lifespan + 5*time.Second)
	ticker := time.NewTicker(50 * time.Millisecond)
	defer ticker.Stop()
	for introspect(t, ctx, s, tok.AccessToken) {
		if time.Now().After(deadline) {
			t.Fatalf("access token still active %v after issue; want inactive after about %v", time.Since(issued), lifespan)
		}
		<-ticker.C
	}
	if elapsed := time.Since(issued); elapsed < lifespan/2 {
		t.Errorf("access token inactive after %v; want it active for about %v", elapsed, lifespan)
	}
}

// Scenario: provider profiles shape the token response. A profile without
// refresh_token also keeps the presented refresh token valid (no rotation).
func TestProfiles(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name          string
		profile       Profile
		wantRefresh   bool // response carries refresh_token
		wantExpiresIn bool
		wantExtra     map[string]string
	}{
		{name: "Microsoft rotates", profile: Microsoft(), wantRefresh: true, wantExpiresIn: true},
		{name: "Google keeps the refresh token", profile: Google(), wantExpiresIn: true},
		{
			name:      "Salesforce keeps the refresh token, no expires_in, instance_url",
			profile:   Salesforce("http://127.0.0.1:1234"),
			wantExtra: map[string]string{"instance_url": "http://127.0.0.1:1234"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := newServer(t, Config{Profile: tt.profile})
			ctx := clientContext(t)
			conf := defaultConfig(s)
			seed := mustSeed(t, s, DefaultClientID)

			tok := mustRefresh(t, ctx, conf, seed)
			if got := tok.Extra("refresh_token") != nil; got != tt.wantRefresh {
				t.Errorf("response has refresh_token = %t; want %t", got, tt.wantRefresh)
			}
			if got := tok.Extra("expires_in") != nil; got != tt.wantExpiresIn {
				t.Errorf("response has expires_in = %t; want %t", got, tt.wantExpiresIn)
			}
			for name, want := range tt.wantExtra {
				if got := tok.Extra(name); got != want {
					t.Errorf("response %s = %v; want %q", name, got, want)
				}
			}
			if !introspect(t, ctx, s, tok.AccessToken) {
				t.Errorf("introspect(access token) = inactive; want active")
			}

			// The seed again: spent on a rotating provider, still valid otherwise.
			again, err := refresh(ctx, conf, seed)
			if tt.wantRefresh {
				if got := errorCode(err); got != "invalid_grant" {
					t.Errorf("refresh(seed again) error = %v; want invalid_grant", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("refresh(seed again) = %v; want success (no rotation)", err)
			}
			if introspect(t, ctx, s, tok.AccessToken) {
				t.Errorf("introspect(previous access token) = active; want revoked by the new grant")
			}
			if !introspect(t, ctx, s, again.AccessToken) {
				t.Errorf("introspect(new access token) = inactive; want active")
			}
			if got := s.ReuseDetections(); got != 0 {
				t.Errorf("ReuseDetections() = %d; want 0", got)
			}
		})
	}
}

// Scenario: the instance_url of a resource server started after the auth
// server reaches token responses through SetProfile.
func TestSetProfileAppliesToNextGrant(t *testing.T) {
	t.Parallel()
	s := newServer(t, Config{Profile: Google()})
	ctx := clientContext(t)
	conf := defaultConfig(s)
	seed := mustSeed(t, s, DefaultClientID)

	if got := mustRefresh(t, ctx, conf, seed).Extra("instance_url"); got != nil {
		t.Errorf("instance_url before SetProfile = %v; want none", got)
	}
	s.SetProfile(Salesforce("http://127.0.0.1:4321"))
	if got, want := mustRefresh(t, ctx, conf, seed).Extra("instance_url"), "http://127.0.0.1:4321"; got != want {
		t.Errorf("instance_url after SetProfile = %v; want %q", got, want)
	}
}

// Scenario: the token endpoint accepts only the client authentication method
// a client is registered with; a refused attempt spends nothing.
func TestClientAuthMethods(t *testing.T) {
	t.Parallel()
	// Secrets with characters that Basic auth must URL-encode (RFC 6749 section 2.3.1).
	registered := map[string]struct {
		secret string
		style  oauth2.AuthStyle
	}{
		"basic-client": {"basic secret/+&", oauth2.AuthStyleInHeader},
		"post-client":  {"post secret/+&", oauth2.AuthStyleInParams},
	}
	s := newServer(t, Config{Clients: []Client{
		{ID: "basic-client", Secret: registered["basic-client"].secret, AuthMethod: AuthMethodBasic},
		{ID: "post-client", Secret: registered["post-client"].secret, AuthMethod: AuthMethodPost},
	}})
	tests := []struct {
		name        string
		clientID    string
		wrongSecret bool
		style       oauth2.AuthStyle
		wantCode    string // "" for success
	}{
		{"basic client, basic auth", "basic-client", false, oauth2.AuthStyleInHeader, ""},
		{"basic client, post auth", "basic-client", false, oauth2.AuthStyleInParams, "invalid_client"},
		{"post client, post auth", "post-client", false, oauth2.AuthStyleInParams, ""},
		{"post client, basic auth", "post-client", false, oauth2.AuthStyleInHeader, "invalid_client"},
		{"basic client, wrong secret", "basic-client", true, oauth2.AuthStyleInHeader, "invalid_client"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := clientContext(t)
			client := registered[tt.clientID]
			secret := client.secret
			if tt.wrongSecret {
				secret = "wrong"
			}
			seed := mustSeed(t, s, tt.clientID)
			_, err := refresh(ctx, oauthConfig(s, tt.clientID, secret, tt.style), seed)
			if got := errorCode(err); got != tt.wantCode || (tt.wantCode == "" && err != nil) {
				t.Fatalf("refresh() error = %v; want code %q", err, tt.wantCode)
			}
			if tt.wantCode == "" {
				return
			}
			// The refused request must not have spent the seed.
			if _, err := refresh(ctx, oauthConfig(s, tt.clientID, client.secret, client.style), seed); err != nil {
				t.Errorf("refresh() with the registered method after a refused one = %v; want success", err)
			}
		})
	}
}

// Scenario: the identity provider goes down (connection refused) and comes
// back on the same URL; introspection keeps working meanwhile.
func TestStopThenStartOnSamePort(t *testing.T) {
	t.Parallel()
	s := newServer(t, Config{})
	ctx := clientContext(t)
	conf := defaultConfig(s)
	seed := mustSeed(t, s, DefaultClientID)
	tok := mustRefresh(t, ctx, conf, seed)
	tokenURL := s.TokenURL()

	if err := s.Stop(); err != nil {
		t.Fatalf("Stop() = %v", err)
	}
	// A pooled connection that Stop closed fails with EOF or a reset when
	// the client has not yet noticed; only a new dial is refused.
	ctx.Value(oauth2.HTTPClient).(*http.Client).CloseIdleConnections()
	_, err := refresh(ctx, conf, tok.RefreshToken)
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("refresh() while stopped error = %v; want connection refused", err)
	}
	if !introspect(t, ctx, s, tok.AccessToken) {
		t.Errorf("introspect() while token endpoint stopped = inactive; want active")
	}

	if err := s.Start(); err != nil {
		t.Fatalf("Start() = %v", err)
	}
	if got := s.TokenURL(); got != tokenURL {
		t.Errorf("TokenURL() after Start = %q; want %q", got, tokenURL)
	}
	if _, err := refresh(ctx, conf, tok.RefreshToken); err != nil {
		t.Errorf("refresh() after Start = %v; want success", err)
	}
	if got, want := s.GrantAttempts(), 2; got != want {
		t.Errorf("GrantAttempts() = %d; want %d (none while stopped)", got, want)
	}
}

// Scenario: an administrator revokes a grant; the client's refresh token and
// the family's access token stop working, and this is no reuse detection.
func TestRevoke(t *testing.T) {
	t.Parallel()
	s := newServer(t, Config{})
	ctx := clientContext(t)
	conf := defaultConfig(s)

	t.Run("current token", func(t *testing.T) {
		seed := mustSeed(t, s, DefaultClientID)
		if err := s.Revoke(t.Context(), seed); err != nil {
			t.Fatalf("Revoke(seed) = %v", err)
		}
		_, err := refresh(ctx, conf, seed)
		if got := errorCode(err); got != "invalid_grant" {
			t.Errorf("refresh(revoked) error = %v; want invalid_grant", err)
		}
	})
	t.Run("family by a spent token", func(t *testing.T) {
		seed := mustSeed(t, s, DefaultClientID)
		newest := mustRefresh(t, ctx, conf, seed)
		if err := s.Revoke(t.Context(), seed); err != nil {
			t.Fatalf("Revoke(spent seed) = %v", err)
		}
		_, err := refresh(ctx, conf, newest.RefreshToken)
		if got := errorCode(err); got != "invalid_grant" {
			t.Errorf("refresh(newest after family revoke) error = %v; want invalid_grant", err)
		}
		if introspect(t, ctx, s, newest.AccessToken) {
			t.Errorf("introspect(family's access token) = active; want revoked")
		}
	})
	t.Run("unknown token", func(t *testing.T) {
		if err := s.Revoke(t.Context(), "ory_rt_unknown.token"); !errors.Is(err, ErrUnknownRefreshToken) {
			t.Errorf("Revoke(unknown) = %v; want ErrUnknownRefreshToken", err)
		}
	})
	if got := s.ReuseDetections(); got != 0 {
		t.Errorf("ReuseDetections() = %d; want 0", got)
	}
}

// Scenario: grant client_credentials (design: grant client_credentials) is
// served and counted apart from refresh_token grants.
func TestClientCredentialsGrant(t *testing.T) {
	t.Parallel()
	s := newServer(t, Config{})
	ctx := clientContext(t)
	conf := clientcredentials.Config{
		ClientID:     DefaultClientID,
		ClientSecret: DefaultClientSecret,
		TokenURL:     s.TokenURL(),
		Scopes:       []string{"api"},
		AuthStyle:    oauth2.AuthStyleInHeader,
	}
	tok, err := conf.Token(ctx)
	if err != nil {
		t.Fatalf("client_credentials Token() = %v", err)
	}
	if tok.RefreshToken != "" {
		t.Errorf("client_credentials issued a refresh token; want none (RFC 6749 section 4.4.3)")
	}
	if !introspect(t, ctx, s, tok.AccessToken) {
		t.Errorf("introspect(client_credentials token) = inactive; want active")
	}
	succeeded, attempted := s.GrantCounts(GrantClientCredentials)
	if succeeded != 1 || attempted != 1 {
		t.Errorf("GrantCounts(client_credentials) = %d, %d; want 1, 1", succeeded, attempted)
	}
	if got := s.Grants(); got != 0 {
		t.Errorf("Grants() = %d; want 0 refresh_token grants", got)
	}
}

// Scenario: a refresh token sent as a bearer credential is not an access
// token; the resource server must see it inactive.
func TestRefreshTokenIsNotActiveAsAccessToken(t *testing.T) {
	t.Parallel()
	s := newServer(t, Config{})
	ctx := clientContext(t)
	tok := mustRefresh(t, ctx, defaultConfig(s), mustSeed(t, s, DefaultClientID))
	if introspect(t, ctx, s, tok.RefreshToken) {
		t.Errorf("introspect(refresh token) = active; want inactive")
	}
}

func TestNewRejectsBadClients(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		clients []Client
	}{
		{"missing secret", []Client{{ID: "a"}}},
		{"duplicate", []Client{{ID: "a", Secret: "x"}, {ID: "a", Secret: "y"}}},
		{"reserved resource server id", []Client{{ID: ResourceServerClientID, Secret: "x"}}},
		{"unknown auth method", []Client{{ID: "a", Secret: "x", AuthMethod: "private_key_jwt"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := New(Config{Clients: tt.clients})
			if err == nil {
				s.Close()
				t.Fatalf("New(%s) = nil error; want an error", tt.name)
			}
		})
	}
}

// Scenario: every token the server hands out is recorded, with the
// expires_in the client was told, so that tests can time grants and look
// for token values in logs.
func TestIssuedRecordsEveryToken(t *testing.T) {
	t.Parallel()
	s := newServer(t, Config{AccessTokenLifespan: 3 * time.Second})
	ctx := clientContext(t)
	seed := mustSeed(t, s, DefaultClientID)
	tok := mustRefresh(t, ctx, defaultConfig(s), seed)

	issued := s.Issued()
	if len(issued) != 2 {
		t.Fatalf("Issued() has %d entries; want 2 (the seed's exchange and one refresh)", len(issued))
	}
	if issued[0].GrantType != "authorization_code" || issued[0].RefreshToken != seed {
		t.Errorf("Issued()[0] = grant %q, seed recorded %t; want authorization_code with the seed", issued[0].GrantType, issued[0].RefreshToken == seed)
	}
	got := issued[1]
	if got.GrantType != GrantRefreshToken || got.AccessToken != tok.AccessToken || got.RefreshToken != tok.RefreshToken {
		t.Errorf("Issued()[1] = grant %q, tokens match %t; want the refresh grant's tokens", got.GrantType, got.AccessToken == tok.AccessToken && got.RefreshToken == tok.RefreshToken)
	}
	// fosite rounds the expiry to the second: a 3s lifespan is announced as 2s or 3s.
	if got.ExpiresIn != 2*time.Second && got.ExpiresIn != 3*time.Second {
		t.Errorf("Issued()[1].ExpiresIn = %s; want 2s or 3s", got.ExpiresIn)
	}
	values := s.TokenValues()
	for _, v := range []string{seed, tok.AccessToken, tok.RefreshToken} {
		if !slices.Contains(values, v) {
			t.Errorf("TokenValues() misses an issued token")
		}
	}
	if n := s.TokenRequestsInFlight(); n != 0 {
		t.Errorf("TokenRequestsInFlight() = %d after the answers; want 0", n)
	}
}

// Scenario: client secrets verified once are not bcrypt-checked again, but a
// wrong secret is still refused after the right one was accepted.
func TestWrongSecretRefusedAfterRightOne(t *testing.T) {
	t.Parallel()
	s := newServer(t, Config{})
	ctx := clientContext(t)
	mustRefresh(t, ctx, defaultConfig(s), mustSeed(t, s, DefaultClientID))
	seed := mustSeed(t, s, DefaultClientID)
	_, err := refresh(ctx, oauthConfig(s, DefaultClientID, "wrong", oauth2.AuthStyleInHeader), seed)
	if got := errorCode(err); got != "invalid_client" {
		t.Errorf("refresh() with a wrong secret error = %v; want invalid_client", err)
	}
}
