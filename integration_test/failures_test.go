package integration_test

import (
	"bytes"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/oauth2upstream/caddy-oauth2-upstream/integration_test/authserver"
)

// recoveryTimeout bounds how long traffic may take to recover once the
// failed dependency is back: the sidecar's failure backoff is at most 30s.
const recoveryTimeout = 45 * time.Second

// Scenario 7a: the provider revoked the refresh token (a user withdrew
// consent). The client gets 502 problem+json naming the key set and
// invalid_grant; the stored key set stays byte for byte as it was
// (invariant 6); and the failure is remembered: no further grant.
func TestRevokedRefreshTokenGives502AndKeepsKeySet(t *testing.T) {
	t.Parallel()
	auth := newAuthServer(t, authserver.Config{})
	api := newResourceServer(t, auth)
	dir, ksOption := fileKeystore(t)
	sc := startSidecar(t, spec{
		auth: auth, upstream: hostport(api.URL()), keystore: ksOption, seed: seedToken(t, auth),
		options: []string{"expiry_skew " + expirySkew.String()},
	})
	c := newClient(t, 2)
	if r := get(c, sc.URL()+"/before"); r.status != http.StatusOK {
		t.Fatalf("request before the revocation: %s; want 200", r)
	}
	ks, stored := readKeySet(t, dir, keySetName)
	// The token in use gets older than min_refresh_interval, so that its
	// rejection makes a grant.
	time.Sleep(minRefreshInterval)
	// Revoking the refresh token revokes its family: the access token too,
	// so the next request meets a 401 and the sidecar tries to refresh.
	if err := auth.Revoke(t.Context(), ks.Token.RefreshToken()); err != nil {
		t.Fatalf("Revoke() = %v", err)
	}
	attempts := auth.GrantAttempts()

	for i := range 3 {
		r := get(c, sc.URL()+"/after")
		if r.status != http.StatusBadGateway {
			t.Fatalf("request %d after the revocation: %s; want 502", i+1, r)
		}
		p := r.problem(t)
		if p.Status != http.StatusBadGateway || p.KeySet != keySetName || p.OAuthError != "invalid_grant" {
			t.Errorf("request %d: problem %+v; want status 502, key_set %q, oauth_error invalid_grant", i+1, p, keySetName)
		}
		if ra := r.header.Get("Retry-After"); ra != "" {
			t.Errorf("request %d: Retry-After %q on a permanent failure; want none", i+1, ra)
		}
	}
	if got := auth.GrantAttempts() - attempts; got != 1 {
		t.Errorf("grant attempts after the revocation = %d; want 1 (the failure is remembered)", got)
	}
	if _, after := readKeySet(t, dir, keySetName); !bytes.Equal(after, stored) {
		t.Errorf("stored key set changed after invalid_grant:\nbefore %s\nafter  %s", stored, after)
	}
	if got := auth.ReuseDetections(); got != 0 {
		t.Errorf("reuse detections = %d; want 0", got)
	}
}

// Scenario 7b: the authorization server is down. Requests that need a new
// token get 503 with Retry-After (requests that do not keep the valid one),
// nothing is stored meanwhile, and traffic recovers by itself once the
// token endpoint is back.
func TestTokenEndpointDownGives503ThenRecovers(t *testing.T) {
	t.Parallel()
	auth := newAuthServer(t, authserver.Config{})
	api := newResourceServer(t, auth)
	dir, ksOption := fileKeystore(t)
	sc := startSidecar(t, spec{
		auth: auth, upstream: hostport(api.URL()), keystore: ksOption, seed: seedToken(t, auth),
		options: []string{"expiry_skew " + expirySkew.String()},
	})
	c := newClient(t, 2)
	if r := get(c, sc.URL()+"/before"); r.status != http.StatusOK {
		t.Fatalf("request before the outage: %s; want 200", r)
	}
	ks, stored := readKeySet(t, dir, keySetName)
	if err := auth.Stop(); err != nil {
		t.Fatal(err)
	}
	down := time.Now()

	// Until the sidecar's token expires, requests keep it (200); then 503.
	var during tally
	unavailable := 0
	waitFor(t, time.Until(ks.Expiry)+10*time.Second, "a 503 while the token endpoint is down", func() bool {
		r := get(c, sc.URL()+"/during")
		during.add(r)
		if r.status == http.StatusServiceUnavailable {
			checkUnavailable(t, r, "token_endpoint_unavailable")
			unavailable++
		} else if r.status != http.StatusOK {
			t.Fatalf("request during the outage: %s; want 200 or 503", r)
		}
		return unavailable >= 3
	})
	if _, now := readKeySet(t, dir, keySetName); !bytes.Equal(now, stored) {
		t.Errorf("stored key set changed while the token endpoint was down")
	}
	if err := auth.Start(); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	waitFor(t, recoveryTimeout, "traffic recovering after the token endpoint is back", func() bool {
		r := get(c, sc.URL()+"/after")
		if r.status == http.StatusServiceUnavailable {
			checkUnavailable(t, r, "token_endpoint_unavailable")
		} else if r.status != http.StatusOK {
			t.Fatalf("request after the outage: %s; want 200 or 503", r)
		}
		return r.status == http.StatusOK
	})
	t.Logf("outage of %s: %v; recovered %s after the token endpoint came back",
		back.Sub(down).Round(time.Millisecond), during.byStatus, time.Since(back).Round(time.Millisecond))
	if after, _ := readKeySet(t, dir, keySetName); after.Generation != ks.Generation+1 {
		t.Errorf("stored generation after recovery = %d; want %d", after.Generation, ks.Generation+1)
	}
	if got := auth.ReuseDetections(); got != 0 {
		t.Errorf("reuse detections = %d; want 0", got)
	}
}

// checkUnavailable checks a 503: problem+json with the expected code and a
// Retry-After in whole positive seconds.
func checkUnavailable(t *testing.T, r response, code string) {
	t.Helper()
	p := r.problem(t)
	if p.Status != http.StatusServiceUnavailable || p.OAuthError != code || p.KeySet != keySetName {
		t.Errorf("503 problem %+v; want status 503, key_set %q, oauth_error %q", p, keySetName, code)
	}
	if secs, err := strconv.Atoi(r.header.Get("Retry-After")); err != nil || secs < 1 {
		t.Errorf("503 Retry-After %q; want whole seconds, at least 1", r.header.Get("Retry-After"))
	}
}

// Scenario 8: an upstream that still answers 401 with the refreshed token:
// the client gets that 401 (the upstream's own answer), after exactly one
// replay (invariant 2): the resource server saw exactly 2 requests.
func TestStillUnauthorizedAfterRefreshReachesClient(t *testing.T) {
	t.Parallel()
	auth := newAuthServer(t, authserver.Config{})
	api := newResourceServer(t, auth)
	_, ksOption := fileKeystore(t)
	sc := startSidecar(t, spec{
		auth: auth, upstream: hostport(api.URL()), keystore: ksOption, seed: seedToken(t, auth),
		options: []string{"expiry_skew " + expirySkew.String()},
	})
	c := newClient(t, 2)
	if r := get(c, sc.URL()+"/before"); r.status != http.StatusOK {
		t.Fatalf("request before: %s; want 200", r)
	}
	time.Sleep(minRefreshInterval) // the token in use gets old enough for its rejection to grant
	api.AlwaysUnauthorized(true)
	requests, grants := api.Requests(), auth.Grants()

	req, err := http.NewRequest(http.MethodPost, sc.URL()+"/rejected", strings.NewReader("a body to replay"))
	if err != nil {
		t.Fatal(err)
	}
	r := do(c, req)
	if r.status != http.StatusUnauthorized {
		t.Fatalf("request to an upstream that always answers 401: %s; want 401", r)
	}
	if got := r.header.Get("WWW-Authenticate"); !strings.Contains(got, `error="invalid_token"`) {
		t.Errorf("WWW-Authenticate %q; want the upstream's challenge", got)
	}
	if !strings.Contains(string(r.body), "invalid_token") {
		t.Errorf("body %q; want the upstream's", r.body)
	}
	if got := api.Requests() - requests; got != 2 {
		t.Errorf("resource server saw %d requests; want 2 (the request and one replay)", got)
	}
	if got := auth.Grants() - grants; got != 1 {
		t.Errorf("grants = %d; want 1 (the refresh before the replay)", got)
	}
}
