package integration_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/oauth2upstream/caddy-oauth2-upstream/credential"
	"github.com/oauth2upstream/caddy-oauth2-upstream/integration_test/authserver"
)

// Token endpoints that say more than RFC 6749 asks, against the real binary.

// statusOf is `caddy oauth2-upstream status <name> --json` against o.
func statusOf(t *testing.T, o *operatorSidecar, name string) credential.Status {
	t.Helper()
	out := mustCLI(t, "", "status", name, "--json", "--address", o.adminAddr)
	var s credential.Status
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatalf("status %s --json = %s: %v", name, out, err)
	}
	return s
}

// A token endpoint shaped like Slack's answers a dead refresh token with
// HTTP 200 and {"ok": false, "error": "invalid_refresh_token"}: the key set
// needs reauthorization after that one grant, and the requests that follow
// get the same 502 naming the code, with no other grant.
func TestErrorInOKBodyNeedsReauthorization(t *testing.T) {
	t.Parallel()
	port, redirectURI := connectPort(t)
	auth := newConnectAuthServer(t, redirectURI)
	auth.SetProfile(authserver.Slack())
	rs := newResourceServer(t, auth)
	o := startOperatorSidecar(t, auth, hostport(rs.URL()), port)
	// A refresh token the provider does not know: revoked, say.
	mustCLI(t, "xoxe-1-revoked\n", "seed", keySetName, "--address", o.adminAddr)

	c := newClient(t, 1)
	for i := range 3 {
		r := get(c, "http://"+o.Addr+"/chat.postMessage")
		if r.status != http.StatusBadGateway {
			t.Fatalf("request %d = %s; want 502", i+1, r)
		}
		if p := r.problem(t); p.OAuthError != "invalid_refresh_token" || p.KeySet != keySetName {
			t.Errorf("request %d problem = %+v; want key set %s, oauth_error invalid_refresh_token", i+1, p, keySetName)
		}
	}
	if n := auth.GrantAttempts(); n != 1 {
		t.Errorf("grant attempts = %d; want 1: a dead grant is not retried", n)
	}
	if s := statusOf(t, o, keySetName); s.State != credential.StateNeedsReauthorization || s.ErrorCode != "invalid_refresh_token" {
		t.Errorf("status = %+v; want needs_reauthorization with error_code invalid_refresh_token", s)
	}
}

// A token endpoint that announces the refresh token's lifetime (Keycloak's
// refresh_expires_in): the key set's status shows when the refresh token
// dies; once a refresh does not move that later (the provider's cap came
// closer), the status flags it and the notify receiver gets
// key_set.expiring for that generation, holding no token value.
func TestRefreshLifetimeShowsAndWarns(t *testing.T) {
	t.Parallel()
	expiring := make(chan []byte, 1)
	receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			t.Errorf("reading a notification: %v", err)
		}
		if strings.Contains(string(body), `"type":"key_set.expiring"`) {
			select {
			case expiring <- body:
			default:
				t.Errorf("a second key_set.expiring: %s", body)
			}
		}
	}))
	t.Cleanup(receiver.Close)

	port, redirectURI := connectPort(t)
	auth := newConnectAuthServer(t, redirectURI)
	sessionEnd := time.Now().Add(time.Hour).Truncate(time.Second)
	auth.SetProfile(authserver.Profile{RefreshLifetimeField: "refresh_expires_in", RefreshExpiresAt: sessionEnd})
	rs := newResourceServer(t, auth)
	o := startOperatorSidecar(t, auth, hostport(rs.URL()), port,
		"notify "+receiver.URL, "notify_secret "+webhookSecret)
	mustCLI(t, seedToken(t, auth)+"\n", "seed", keySetName, "--address", o.adminAddr)

	if r := get(newClient(t, 1), "http://"+o.Addr+"/x"); r.status != http.StatusOK { // grant 1
		t.Fatalf("request: %s; want 200", r)
	}
	s := statusOf(t, o, keySetName)
	if s.RefreshExpiry == nil || s.RefreshExpiry.Sub(sessionEnd).Abs() > 2*time.Second || s.RefreshExpiring {
		t.Fatalf("status after the first grant = %+v; want refresh_expiry about %v, not expiring", s, sessionEnd)
	}

	// The provider's session maximum comes closer: the next refresh
	// announces an end no later than the last.
	sessionEnd = sessionEnd.Add(-10 * time.Minute)
	auth.SetProfile(authserver.Profile{RefreshLifetimeField: "refresh_expires_in", RefreshExpiresAt: sessionEnd})
	mustCLI(t, "", "refresh", keySetName, "--json", "--address", o.adminAddr) // grant 2
	s = statusOf(t, o, keySetName)
	if s.Generation != 3 || s.RefreshExpiry == nil || s.RefreshExpiry.Sub(sessionEnd).Abs() > 2*time.Second || !s.RefreshExpiring || s.State != credential.StateOK {
		t.Errorf("status after the capped refresh = %+v; want generation 3, state ok, refresh_expiring, refresh_expiry about %v", s, sessionEnd)
	}

	select {
	case body := <-expiring:
		var n struct {
			Name          string    `json:"name"`
			Generation    int64     `json:"generation"`
			RefreshExpiry time.Time `json:"refresh_expiry"`
		}
		if err := json.Unmarshal(body, &n); err != nil {
			t.Fatalf("key_set.expiring %s: %v", body, err)
		}
		if n.Name != keySetName || n.Generation != 3 || n.RefreshExpiry.Sub(sessionEnd).Abs() > 2*time.Second {
			t.Errorf("key_set.expiring = %s; want key set %s, generation 3, refresh_expiry about %v", body, keySetName, sessionEnd)
		}
		for _, value := range auth.TokenValues() {
			if strings.Contains(string(body), value) {
				t.Errorf("key_set.expiring %s holds a token value", body)
			}
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no key_set.expiring notification")
	}
}
