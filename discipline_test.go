package oauth2upstream

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/oauth2upstream/caddy-oauth2-upstream/credential/credentialtest"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
)

// storeInUse stores generation 1 of key set name, an hour old, with access
// token at-old valid for another hour and refresh token rt-0: a key set that
// has been in use for a while.
func (s *sidecar) storeInUse(t *testing.T, name string, now time.Time) {
	t.Helper()
	ks := &keystore.KeySet{Name: name, Generation: 1, UpdatedAt: now.Add(-time.Hour), Expiry: now.Add(time.Hour), Token: keystore.Token{}, Client: s.client()}
	ks.Token.SetString(keystore.FieldAccessToken, "at-old")
	ks.Token.SetString(keystore.FieldRefreshToken, "rt-0")
	if err := s.store.Save(context.Background(), ks); err != nil {
		t.Fatalf("Save(%q) = %v", name, err)
	}
}

// An API path that answers 401 to every token must not make a grant per
// request, rotating the refresh token each time: 100 requests within
// min_refresh_interval (the clock does not move) make at most 2 grants, and
// the 401s go to the client unchanged, counted as too_recent. With
// min_refresh_interval off, every request grants.
func TestAlwaysRejectedPathMakesNoGrantStorm(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name           string
		minInterval    caddy.Duration // the option; 0: the default
		requests       int
		wantGrants     int64
		wantTooRecent  float64
		wantReplayed   float64
		wantUpstreamTo int // requests the upstream saw
	}{
		// The first 401 is to the hour-old at-old: one grant, one replay.
		{name: "default", requests: 100, wantGrants: 1, wantTooRecent: 99, wantReplayed: 1, wantUpstreamTo: 101},
		{name: "off", minInterval: -1, requests: 20, wantGrants: 20, wantReplayed: 20, wantUpstreamTo: 40},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			te := credentialtest.NewTokenEndpoint(t, "rt-0")
			api := newAPIServer(t, "")
			api.alwaysReject = true
			h := &Handler{TokenURL: te.URL(), ClientID: "c", KeySet: "storm", GrantOptions: GrantOptions{MinRefreshInterval: tt.minInterval}}
			s := newSidecar(t, h, hostPort(t, api.server.URL))
			clock := credentialtest.NewClock()
			s.useClock(clock)
			s.storeInUse(t, "storm", clock.Now())

			for i := range tt.requests {
				resp, body := s.get(t, "/always-401")
				if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("X-Rejected") != "yes" || string(body) != "token rejected\n" {
					t.Fatalf("request %d = %d %v %q; want the upstream's 401 unchanged", i+1, resp.StatusCode, resp.Header, body)
				}
			}
			if g := te.Grants.Load(); g != tt.wantGrants {
				t.Errorf("grants for %d requests = %d; want %d", tt.requests, g, tt.wantGrants)
			}
			if n := len(api.seen()); n != tt.wantUpstreamTo {
				t.Errorf("upstream saw %d requests; want %d", n, tt.wantUpstreamTo)
			}
			text := scrape(t, s.ctx.GetMetricsRegistry())
			for outcome, want := range map[string]float64{"too_recent": tt.wantTooRecent, "replayed": tt.wantReplayed} {
				series := `caddy_oauth2_upstream_replays_total{key_set="storm",outcome="` + outcome + `"}`
				if got, _ := sample(text, series); got != want {
					t.Errorf("%s = %v; want %v", series, got, want)
				}
			}
		})
	}
}

// With refresh_on invalid_token, only a 401 whose WWW-Authenticate says
// error="invalid_token" (RFC 6750 section 3.1) refreshes and replays; a
// 401 for insufficient_scope, or without an error, goes to the client with
// no grant. Statuses listed beside it keep triggering.
func TestRefreshOnInvalidToken(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name            string
		status          int
		challenge       string
		wantStatus      int
		wantGrants      int64
		wantUpstreamHit int64
	}{
		{"invalid_token", http.StatusUnauthorized, `Bearer realm="api", error="invalid_token", error_description="The access token expired"`, http.StatusOK, 1, 2},
		{"DPoP invalid_token", http.StatusUnauthorized, `DPoP algs="ES256", error="invalid_token"`, http.StatusOK, 1, 2},
		{"insufficient_scope", http.StatusUnauthorized, `Bearer realm="api", error="insufficient_scope", scope="admin"`, http.StatusUnauthorized, 0, 1},
		{"no error", http.StatusUnauthorized, `Bearer realm="api"`, http.StatusUnauthorized, 0, 1},
		{"no challenge", http.StatusUnauthorized, "", http.StatusUnauthorized, 0, 1},
		{"invalid_token quoted in a description", http.StatusUnauthorized, `Bearer error="invalid_request", error_description="error=\"invalid_token\""`, http.StatusUnauthorized, 0, 1},
		{"listed status", http.StatusForbidden, "", http.StatusOK, 1, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			te := credentialtest.NewTokenEndpoint(t, "rt-0")
			var hits atomic.Int64
			api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if hits.Add(1) == 1 {
					if tt.challenge != "" {
						w.Header().Set("WWW-Authenticate", tt.challenge)
					}
					http.Error(w, "rejected", tt.status)
				}
			}))
			t.Cleanup(api.Close)
			h := &Handler{TokenURL: te.URL(), ClientID: "c", KeySet: "scoped", RefreshOn: []int{http.StatusForbidden},
				GrantOptions: GrantOptions{RefreshOnInvalidToken: true}}
			s := newSidecar(t, h, hostPort(t, api.URL))
			clock := credentialtest.NewClock()
			s.useClock(clock)
			s.storeInUse(t, "scoped", clock.Now())

			resp, _ := s.get(t, "/")
			if resp.StatusCode != tt.wantStatus {
				t.Errorf("status = %d; want %d", resp.StatusCode, tt.wantStatus)
			}
			if got := te.Grants.Load(); got != tt.wantGrants {
				t.Errorf("grants = %d; want %d", got, tt.wantGrants)
			}
			if got := hits.Load(); got != tt.wantUpstreamHit {
				t.Errorf("upstream requests = %d; want %d", got, tt.wantUpstreamHit)
			}
		})
	}
}

// rejectsToken finds error="invalid_token" in any challenge of any
// WWW-Authenticate field, and nowhere else.
func TestRejectsToken(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		fields []string
		want   bool
	}{
		{"RFC 6750 example", []string{`Bearer realm="example", error="invalid_token", error_description="The access token expired"`}, true},
		{"token value", []string{`Bearer error=invalid_token`}, true},
		{"spaces around =", []string{`Bearer error = "invalid_token"`}, true},
		{"name in capitals", []string{`Bearer ERROR="invalid_token"`}, true},
		{"second challenge", []string{`Basic realm="x", Bearer error="invalid_token"`}, true},
		{"second field", []string{`Basic realm="x"`, `Bearer error="invalid_token"`}, true},
		{"after a token68", []string{`Negotiate abc/+def==, Bearer error="invalid_token"`}, true},
		{"escaped quotes before", []string{`Bearer realm="a \"quoted\", realm", error="invalid_token"`}, true},
		{"insufficient_scope", []string{`Bearer error="insufficient_scope"`}, false},
		{"no error", []string{`Bearer realm="example"`}, false},
		{"inside a quoted value", []string{`Bearer error_description="error=\"invalid_token\""`}, false},
		{"other parameter", []string{`Bearer kind="invalid_token"`}, false},
		{"value case differs", []string{`Bearer error="Invalid_Token"`}, false},
		{"unterminated quote", []string{`Bearer realm="open, error="invalid_token`}, false},
		{"garbage", []string{`(((=,,="`}, false},
		{"none", nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := http.Header{}
			for _, f := range tt.fields {
				h.Add("WWW-Authenticate", f)
			}
			if got := rejectsToken(h); got != tt.want {
				t.Errorf("rejectsToken(%q) = %v; want %v", tt.fields, got, tt.want)
			}
		})
	}
}

// refresh_on invalid_token alone leaves no status trigger: the default 401
// would trigger on every 401, which invalid_token narrows.
func TestRefreshOnInvalidTokenAlone(t *testing.T) {
	t.Parallel()
	h := Handler{TokenURL: "https://login.example.com/token", ClientID: "c", GrantOptions: GrantOptions{RefreshOnInvalidToken: true}}
	h.setDefaults()
	if len(h.RefreshOn) != 0 {
		t.Errorf("RefreshOn after setDefaults = %v; want none beside invalid_token", h.RefreshOn)
	}
	if err := h.Validate(); err != nil {
		t.Errorf("Validate() = %v; want nil", err)
	}
}
