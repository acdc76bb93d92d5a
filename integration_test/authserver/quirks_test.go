package authserver

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/oauth2"
)

// fakeClock is the grace ledger's clock in tests.
type fakeClock struct {
	mu  sync.Mutex // guards now
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// withFakeGraceClock makes s's grace ledger read a clock the test moves.
func withFakeGraceClock(s *Server) *fakeClock {
	c := &fakeClock{now: time.Now()}
	s.store.grace.mu.Lock()
	s.store.grace.now = c.Now
	s.store.grace.mu.Unlock()
	return c
}

// tokenAnswer is a token endpoint's answer to postRefresh.
type tokenAnswer struct {
	status       int
	errorCode    string
	refreshToken string
}

// postRefresh sends a refresh_token grant as the default client (HTTP
// Basic) to tokenURL, with scope when it is not "": x/oauth2 sends none.
func postRefresh(t *testing.T, ctx context.Context, tokenURL, refreshToken, scope string) tokenAnswer {
	t.Helper()
	form := url.Values{"grant_type": {GrantRefreshToken}, "refresh_token": {refreshToken}}
	if scope != "" {
		form.Set("scope", scope)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, tokenURL, strings.NewReader(form.Encode()))
	if err != nil {
		t.Fatalf("NewRequest() = %v", err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(DefaultClientID, DefaultClientSecret)
	resp, err := ctx.Value(oauth2.HTTPClient).(*http.Client).Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", tokenURL, err)
	}
	defer resp.Body.Close()
	var body struct {
		Error        string `json:"error"`
		RefreshToken string `json:"refresh_token"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&body) // a 404 has a text body
	return tokenAnswer{status: resp.StatusCode, errorCode: body.Error, refreshToken: body.RefreshToken}
}

// Scenario: rotation with a grace period (Okta, Xero): the refresh token
// that a grant replaced works again within the period, without revoking
// anything, and after it is a reuse that revokes the family.
func TestRefreshGracePeriod(t *testing.T) {
	t.Parallel()
	const grace = 30 * time.Second
	tests := []struct {
		name      string
		after     time.Duration // since the seed was first spent
		wantReuse bool
	}{
		{name: "within the period", after: grace - time.Second},
		{name: "at its end", after: grace, wantReuse: true},
		{name: "after it", after: time.Hour, wantReuse: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := newServer(t, Config{Profile: Profile{Quirks: Quirks{RefreshGracePeriod: grace}}})
			clock := withFakeGraceClock(s)
			ctx := clientContext(t)
			conf := defaultConfig(s)
			seed := mustSeed(t, s, DefaultClientID)
			first := mustRefresh(t, ctx, conf, seed)
			if first.RefreshToken == "" || first.RefreshToken == seed {
				t.Fatalf("first refresh: refresh token rotated %t; want a new one", first.RefreshToken != seed)
			}
			clock.Advance(tt.after)

			again, err := refresh(ctx, conf, seed)
			if tt.wantReuse {
				if got := errorCode(err); got != "invalid_grant" {
					t.Fatalf("refresh(seed, %s after) error = %v; want invalid_grant", tt.after, err)
				}
				if got := s.ReuseDetections(); got != 1 {
					t.Errorf("ReuseDetections() = %d; want 1", got)
				}
				// The family is revoked: the newest token too.
				if _, err := refresh(ctx, conf, first.RefreshToken); errorCode(err) != "invalid_grant" {
					t.Errorf("refresh(newest after reuse) error = %v; want invalid_grant", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("refresh(seed, %s after) = %v; want a grant within the grace period", tt.after, err)
			}
			if again.RefreshToken == "" || again.RefreshToken == first.RefreshToken {
				t.Errorf("grace grant: refresh token new %t; want another new one", again.RefreshToken != first.RefreshToken)
			}
			// The token the first grant issued is untouched.
			mustRefresh(t, ctx, conf, first.RefreshToken)
			if got := s.ReuseDetections(); got != 0 {
				t.Errorf("ReuseDetections() = %d; want 0", got)
			}
		})
	}
}

// Scenario: revoking a family reaches the refresh tokens a grace period
// kept active, not only its newest one.
func TestRevokeReachesGraceTokens(t *testing.T) {
	t.Parallel()
	s := newServer(t, Config{Profile: Profile{Quirks: Quirks{RefreshGracePeriod: time.Hour}}})
	ctx := clientContext(t)
	conf := defaultConfig(s)
	seed := mustSeed(t, s, DefaultClientID)
	newest := mustRefresh(t, ctx, conf, seed)
	if err := s.Revoke(t.Context(), newest.RefreshToken); err != nil {
		t.Fatalf("Revoke(newest) = %v", err)
	}
	if _, err := refresh(ctx, conf, seed); errorCode(err) != "invalid_grant" {
		t.Errorf("refresh(seed within the grace period, family revoked) error = %v; want invalid_grant", err)
	}
}

// Scenario: a provider that needs the scope resent on refresh (Microsoft's
// v2.0 endpoint for some clients) refuses a refresh without it, leaving the
// refresh token unspent; one that does not takes either.
func TestRequireScopeOnRefresh(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		require    bool
		scope      string
		wantStatus int
		wantCode   string
	}{
		{name: "required, sent", require: true, scope: "api", wantStatus: http.StatusOK},
		{name: "required, missing", require: true, wantStatus: http.StatusBadRequest, wantCode: "invalid_request"},
		{name: "required, blank", require: true, scope: " ", wantStatus: http.StatusBadRequest, wantCode: "invalid_request"},
		{name: "not required, missing", wantStatus: http.StatusOK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := newServer(t, Config{Profile: Profile{Quirks: Quirks{RequireScopeOnRefresh: tt.require}}})
			ctx := clientContext(t)
			seed := mustSeed(t, s, DefaultClientID)
			got := postRefresh(t, ctx, s.TokenURL(), seed, tt.scope)
			if got.status != tt.wantStatus || got.errorCode != tt.wantCode {
				t.Fatalf("refresh(scope %q) = %d %q; want %d %q", tt.scope, got.status, got.errorCode, tt.wantStatus, tt.wantCode)
			}
			if got.status == http.StatusOK {
				return
			}
			// Refused before fosite: the seed is unspent, and counted as
			// an attempt only.
			if ok := postRefresh(t, ctx, s.TokenURL(), seed, "api"); ok.status != http.StatusOK {
				t.Errorf("refresh(seed, with scope, after the refusal) = %d %q; want 200", ok.status, ok.errorCode)
			}
			if ok, attempts := s.GrantCounts(GrantRefreshToken); ok != 1 || attempts != 2 {
				t.Errorf("GrantCounts() = %d of %d; want 1 of 2", ok, attempts)
			}
		})
	}
}

// Scenario: a token URL that names a tenant (Microsoft's
// /{tenant}/oauth2/v2.0/token): the configured tenant's path grants,
// another tenant's and /token answer 404 and count no attempt.
func TestTokenPath(t *testing.T) {
	t.Parallel()
	const path = "/contoso/oauth2/v2.0/token"
	s := newServer(t, Config{Profile: Profile{Quirks: Quirks{TokenPath: path}}})
	ctx := clientContext(t)
	if got := s.TokenURL(); !strings.HasSuffix(got, path) {
		t.Fatalf("TokenURL() = %q; want it to end in %q", got, path)
	}
	base := strings.TrimSuffix(s.TokenURL(), path)
	tests := []struct {
		name       string
		path       string
		wantStatus int
	}{
		{name: "the tenant", path: path, wantStatus: http.StatusOK},
		{name: "another tenant", path: "/fabrikam/oauth2/v2.0/token", wantStatus: http.StatusNotFound},
		{name: "no tenant", path: "/token", wantStatus: http.StatusNotFound},
		{name: "the tenant's path, longer", path: path + "/x", wantStatus: http.StatusNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			seed := mustSeed(t, s, DefaultClientID)
			if got := postRefresh(t, ctx, base+tt.path, seed, ""); got.status != tt.wantStatus {
				t.Errorf("POST %s = %d %q; want %d", tt.path, got.status, got.errorCode, tt.wantStatus)
			}
		})
	}
	if ok, attempts := s.GrantCounts(GrantRefreshToken); ok != 1 || attempts != 1 {
		t.Errorf("GrantCounts() = %d of %d; want 1 of 1 (a 404 is no attempt)", ok, attempts)
	}
}

// Scenario: an access token revoked alone (a session that ended) is
// inactive, and the refresh token it came with still grants.
func TestRevokeAccessToken(t *testing.T) {
	t.Parallel()
	s := newServer(t, Config{})
	ctx := clientContext(t)
	conf := defaultConfig(s)
	tok := mustRefresh(t, ctx, conf, mustSeed(t, s, DefaultClientID))
	if err := s.RevokeAccessToken(t.Context(), tok.AccessToken); err != nil {
		t.Fatalf("RevokeAccessToken() = %v", err)
	}
	if introspect(t, ctx, s, tok.AccessToken) {
		t.Errorf("introspect(revoked access token) = active; want inactive")
	}
	next := mustRefresh(t, ctx, conf, tok.RefreshToken)
	if !introspect(t, ctx, s, next.AccessToken) {
		t.Errorf("introspect(access token of the next grant) = inactive; want active")
	}
	if err := s.RevokeAccessToken(t.Context(), tok.AccessToken); !errors.Is(err, ErrUnknownAccessToken) {
		t.Errorf("RevokeAccessToken(already revoked) = %v; want ErrUnknownAccessToken", err)
	}
	if got := s.ReuseDetections(); got != 0 {
		t.Errorf("ReuseDetections() = %d; want 0", got)
	}
}
