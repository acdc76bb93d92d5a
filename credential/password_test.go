package credential

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
)

// passwordEndpoint is a token endpoint of the password grant: it grants
// grant_type=password for one username and password, and refresh_token
// for the newest refresh token it issued, rotating it; refreshDead makes
// it refuse every refresh token, and refreshAnswer answer refreshes
// itself. Descriptions echo the username and password, as a careless
// provider's might.
type passwordEndpoint struct {
	*recordingTokenEndpoint

	mu            sync.Mutex // guards the fields below
	password      string
	issued        int
	refreshToken  string
	refreshDead   bool
	refreshAnswer http.HandlerFunc
}

func newPasswordEndpoint(t *testing.T) *passwordEndpoint {
	p := &passwordEndpoint{password: "hunter2-correct-horse"}
	var te *recordingTokenEndpoint
	te = newRecordingTokenEndpoint(t, func(w http.ResponseWriter, r *http.Request) {
		seen := te.seen()
		p.serve(w, r, seen[len(seen)-1].form)
	})
	p.recordingTokenEndpoint = te
	return p
}

func (p *passwordEndpoint) serve(w http.ResponseWriter, r *http.Request, form map[string][]string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	get := func(k string) string {
		if v := form[k]; len(v) > 0 {
			return v[0]
		}
		return ""
	}
	switch get("grant_type") {
	case "password":
		if get("username") != "svc-user@example.com" || get("password") != p.password {
			answerJSON(http.StatusBadRequest, `{"error":"invalid_grant","error_description":"bad credentials for `+
				get("username")+` / `+get("password")+`"}`)(w, r)
			return
		}
	case "refresh_token":
		if p.refreshAnswer != nil {
			p.refreshAnswer(w, r)
			return
		}
		if p.refreshDead || get("refresh_token") != p.refreshToken {
			answerJSON(http.StatusBadRequest, `{"error":"invalid_grant","error_description":"refresh token revoked"}`)(w, r)
			return
		}
	default:
		answerJSON(http.StatusBadRequest, `{"error":"unsupported_grant_type"}`)(w, r)
		return
	}
	p.issued++
	p.refreshToken = fmt.Sprintf("rt-%d", p.issued)
	answerJSON(http.StatusOK, fmt.Sprintf(`{"access_token":"at-%d","token_type":"Bearer","expires_in":3600,"refresh_token":%q}`,
		p.issued, p.refreshToken))(w, r)
}

func (p *passwordEndpoint) set(change func(p *passwordEndpoint)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	change(p)
}

// grantTypes are the grant_type of every request the endpoint saw.
func (p *passwordEndpoint) grantTypes() []string {
	var types []string
	for _, req := range p.seen() {
		types = append(types, req.form.Get("grant_type"))
	}
	return types
}

func newPasswordClient(tokenURL string) *tokenClient {
	c := newTestTokenClient(tokenURL)
	c.Grant, c.Username, c.Password = GrantPassword, "svc-user@example.com", "hunter2-correct-horse"
	c.Scopes = []string{"api"}
	return c
}

// TestTokenClientPasswordGrant: the password grant (RFC 6749 section 4.3)
// sends grant_type=password, the username, the password and the scopes
// with the client's authentication when the key set has no refresh
// token; with one it spends the refresh token instead (the password
// stays home), and a refresh token the endpoint calls dead (a permanent
// invalid_grant) is replaced by one password grant within the same
// grant. Other refresh failures are the grant's: no password is sent.
func TestTokenClientPasswordGrant(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name         string
		refreshToken string // the key set's
		change       func(p *passwordEndpoint)
		wantTypes    []string
		wantCode     string // "" for success
		wantAccess   string
	}{
		{name: "no refresh token: password", wantTypes: []string{"password"}, wantAccess: "at-1"},
		{name: "refresh token kept and spent", refreshToken: "rt-5", change: func(p *passwordEndpoint) { p.refreshToken, p.issued = "rt-5", 5 },
			wantTypes: []string{"refresh_token"}, wantAccess: "at-6"},
		{name: "dead refresh token: one password grant", refreshToken: "rt-old", change: func(p *passwordEndpoint) { p.refreshDead = true },
			wantTypes: []string{"refresh_token", "password"}, wantAccess: "at-1"},
		{name: "dead refresh token and wrong password: one of each", refreshToken: "rt-old",
			change:    func(p *passwordEndpoint) { p.refreshDead, p.password = true, "changed-by-the-owner" },
			wantTypes: []string{"refresh_token", "password"}, wantCode: "invalid_grant"},
		{name: "endpoint down on refresh: no password", refreshToken: "rt-5",
			change: func(p *passwordEndpoint) {
				p.refreshAnswer = answerJSON(http.StatusServiceUnavailable, `{"error":"temporarily_unavailable"}`)
			},
			wantTypes: []string{"refresh_token"}, wantCode: "temporarily_unavailable"},
		{name: "client refused on refresh: no password", refreshToken: "rt-5",
			change: func(p *passwordEndpoint) {
				p.refreshAnswer = answerJSON(http.StatusUnauthorized, `{"error":"invalid_client"}`)
			},
			wantTypes: []string{"refresh_token"}, wantCode: "invalid_client"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p := newPasswordEndpoint(t)
			if tt.change != nil {
				p.set(tt.change)
			}
			c := newPasswordClient(p.URL())
			res, err := c.grant(context.Background(), "legacy", tt.refreshToken)
			if got := p.grantTypes(); strings.Join(got, ",") != strings.Join(tt.wantTypes, ",") {
				t.Errorf("grant(%q) sent grant types %q; want %q", "legacy", got, tt.wantTypes)
			}
			if tt.wantCode != "" {
				if re := asError(t, err); re.Code != tt.wantCode {
					t.Errorf("grant(%q) = %v; want %s", "legacy", err, tt.wantCode)
				}
				return
			}
			if err != nil || res.token.AccessToken() != tt.wantAccess || res.token.RefreshToken() == "" {
				t.Fatalf("grant(%q) = %q (refresh token %t), %v; want %s with a refresh token",
					"legacy", res.token.AccessToken(), res.token.RefreshToken() != "", err, tt.wantAccess)
			}
			for _, req := range p.seen() {
				if req.form.Get("scope") != "api" || req.header.Get("Authorization") == "" {
					t.Errorf("%s request: scope %q, Authorization %t; want scope api and the client's Basic authentication",
						req.form.Get("grant_type"), req.form.Get("scope"), req.header.Get("Authorization") != "")
				}
				hasPassword := req.form.Has("password") || req.form.Has("username")
				if want := req.form.Get("grant_type") == "password"; hasPassword != want {
					t.Errorf("%s request carries the username or password: %t; want %t", req.form.Get("grant_type"), hasPassword, want)
				}
			}
		})
	}
}

// TestTokenClientPasswordGrantErrorsHoldNoCredentials: a token endpoint
// that echoes the username and password in its error description gets
// both redacted, and its error code (invalid_grant: the password is
// wrong) is passed on as permanent.
func TestTokenClientPasswordGrantErrorsHoldNoCredentials(t *testing.T) {
	t.Parallel()
	p := newPasswordEndpoint(t)
	c := newPasswordClient(p.URL())
	p.set(func(p *passwordEndpoint) { p.password = "the-owner-changed-it" })
	_, err := c.grant(context.Background(), "legacy", "")
	re := asError(t, err)
	if re.Code != "invalid_grant" || re.Temporary {
		t.Errorf("grant(%q) = %v (temporary %t); want permanent invalid_grant", "legacy", err, re.Temporary)
	}
	for _, secret := range []string{c.Password, c.Username} {
		if strings.Contains(err.Error(), secret) {
			t.Errorf("grant(%q) = %q; it holds %q", "legacy", err, secret)
		}
	}
	if !strings.Contains(err.Error(), "[redacted]") {
		t.Errorf("grant(%q) = %q; want the echoed credentials [redacted]", "legacy", err)
	}
}

// TestEnginePasswordGrantKeepsRefreshToken: a password key set starts
// empty, with no seed; its first grant sends the password, and the
// refresh token it issued is stored and spent by the next grant, a
// rejection of the token, with no password sent.
func TestEnginePasswordGrantKeepsRefreshToken(t *testing.T) {
	t.Parallel()
	f := newEngineFixture(t, "")
	p := newPasswordEndpoint(t)
	f.r.client.URL, f.r.client.Grant = p.URL(), GrantPassword
	f.r.client.Username, f.r.client.Password = "svc-user@example.com", "hunter2-correct-horse"
	cred := f.mustCurrent(t, "legacy")
	if cred.Header != "Bearer at-1" || cred.KeySet.Token.RefreshToken() != "rt-1" {
		t.Fatalf("Current(%q) = %s; want Bearer at-1 with refresh token rt-1", "legacy", credString(cred))
	}
	f.clock.Advance(DefaultMinRefreshInterval)
	again, err := f.r.Rejected(context.Background(), "legacy", cred.KeySet.Generation)
	if err != nil || again.Header != "Bearer at-2" {
		t.Fatalf("Rejected(%q) = %s, %v; want Bearer at-2", "legacy", credString(again), err)
	}
	if got := p.grantTypes(); strings.Join(got, ",") != "password,refresh_token" {
		t.Errorf("grant types = %q; want password, then refresh_token", got)
	}
	if stored := loadKeySet(t, f.store, "legacy"); stored.Token.RefreshToken() != "rt-2" {
		t.Errorf("stored refresh token = %q; want rt-2", stored.Token.RefreshToken())
	}
}
