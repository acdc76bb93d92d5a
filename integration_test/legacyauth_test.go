package integration_test

import (
	"bytes"
	"net/http"
	"os"
	"strings"
	"testing"

	"github.com/oauth2upstream/caddy-oauth2-upstream/integration_test/authserver"
)

// secretJWTClient is a client registered for client_secret_jwt, its secret
// long enough for HS256 (32 bytes or more).
var secretJWTClient = authserver.Client{ID: "hs-client", Secret: "hs-client-secret-0123456789abcdef-0123", AuthMethod: authserver.AuthMethodSecretJWT}

// client_secret_jwt end to end (OpenID Connect Core section 9): the test
// server authenticates the sidecar by an HS256 client assertion over its
// secret (fosite has no client_secret_jwt; the server verifies it with
// go-jose and keeps fosite's jti check), on the first refresh and again
// when the resource server rejects the expired token, each assertion new;
// the body of the rejected POST is replayed byte for byte. The secret
// itself is never sent: the server refuses it from this client.
func TestClientSecretJWTEndToEnd(t *testing.T) {
	t.Parallel()
	client := secretJWTClient
	auth := newAuthServer(t, authserver.Config{Clients: []authserver.Client{client}, Profile: authserver.Profile{OmitExpiresIn: true}})
	api := newResourceServer(t, auth)
	seed := seedFor(t, auth, client.ID)
	dir, ksOption := fileKeystore(t)
	sc := startSidecar(t, spec{
		auth: auth, upstream: hostport(api.URL()), keystore: ksOption, seed: seed, client: &client,
		options: []string{"client_auth client_secret_jwt", "refresh reactive"},
	})
	c := newClient(t, 2)
	if r := get(c, sc.URL()+"/first"); r.err != nil || r.status != http.StatusOK {
		t.Fatalf("GET /first: %s; want 200", r)
	}
	expireThenReplay(t, c, sc.URL(), api.Unauthorized(), api.Unauthorized)
	if ok, attempts := auth.GrantCounts(authserver.GrantRefreshToken); ok != 2 || attempts != 2 {
		t.Errorf("refresh_token grants = %d of %d attempts; want 2 of 2", ok, attempts)
	}
	if ks, _ := readKeySet(t, dir, keySetName); ks.Generation != 3 || ks.Token.RefreshToken() == seed {
		t.Errorf("stored key set: generation %d, refresh token rotated %v; want generation 3, rotated", ks.Generation, ks.Token.RefreshToken() != seed)
	}
}

// A client_secret shorter than HS256's 32 bytes (RFC 7518 section 3.2)
// stops the sidecar from starting with client_secret_jwt, in a message
// naming the option and the rule but not the secret.
func TestClientSecretJWTShortSecretRefused(t *testing.T) {
	t.Parallel()
	client := authserver.Client{ID: "short", Secret: "only-20-bytes-secret", AuthMethod: authserver.AuthMethodSecretJWT}
	auth := newAuthServer(t, authserver.Config{Clients: []authserver.Client{client}})
	_, ksOption := fileKeystore(t)
	p := newSidecar(t, spec{auth: auth, upstream: "127.0.0.1:1", keystore: ksOption, client: &client,
		options: []string{"client_auth client_secret_jwt"}})
	err := p.Start(t.Context())
	if err == nil || !strings.Contains(err.Error(), "client_secret: the client secret is shorter than 32 bytes") {
		t.Fatalf("starting with a 20-byte secret: %v; want a provisioning error naming client_secret and 32 bytes", err)
	}
	if strings.Contains(err.Error(), client.Secret) {
		t.Errorf("the provisioning error quotes the client secret: %v", err)
	}
}

// Resource owner credentials of the password grant scenario.
const (
	ownerName     = "legacy-owner@example.com"
	ownerPassword = "owner-password-7f3c9e1a"
)

// grant password end to end (RFC 6749 section 4.3), through fosite's own
// handler: with no seed, the first request makes a password grant, and
// the refresh token it issued is stored; when the resource server rejects
// the expired token, the sidecar spends that refresh token (no password
// sent) and replays the body. Once the refresh token is revoked, the
// next rejection's refresh fails with invalid_grant, and the same grant
// makes one password grant in its place: the request is still answered,
// after exactly one refresh attempt and one password grant. The sidecar's
// log holds neither the username nor the password.
func TestPasswordGrantEndToEnd(t *testing.T) {
	t.Parallel()
	auth := newAuthServer(t, authserver.Config{Users: map[string]string{ownerName: ownerPassword},
		Profile: authserver.Profile{OmitExpiresIn: true}})
	api := newResourceServer(t, auth)
	dir, ksOption := fileKeystore(t)
	sc := startSidecar(t, spec{
		auth: auth, upstream: hostport(api.URL()), keystore: ksOption,
		options: []string{"grant password", "username {env.API_USER}", "password {env.API_PASSWORD}", "scopes api",
			"refresh reactive", "min_refresh_interval off"},
		env: []string{"API_USER=" + ownerName, "API_PASSWORD=" + ownerPassword},
	})
	c := newClient(t, 2)
	if r := get(c, sc.URL()+"/first"); r.err != nil || r.status != http.StatusOK {
		t.Fatalf("GET /first: %s; want 200", r)
	}
	first, _ := readKeySet(t, dir, keySetName)
	if first.Generation != 1 || first.Token.RefreshToken() == "" {
		t.Fatalf("stored key set after the password grant: generation %d, refresh token %t; want generation 1 with one",
			first.Generation, first.Token.RefreshToken() != "")
	}
	expireThenReplay(t, c, sc.URL(), api.Unauthorized(), api.Unauthorized)
	checkGrants(t, auth, "after the expiry", 1, 1, 1, 1)
	second, _ := readKeySet(t, dir, keySetName)
	if second.Generation != 2 || second.Token.RefreshToken() == first.Token.RefreshToken() {
		t.Errorf("stored key set after the refresh: generation %d, refresh token rotated %t; want generation 2, rotated",
			second.Generation, second.Token.RefreshToken() != first.Token.RefreshToken())
	}

	// The refresh token dies (an administrator revoked the family, the
	// access token with it): the next 401 is cured by a password grant.
	if err := auth.Revoke(t.Context(), second.Token.RefreshToken()); err != nil {
		t.Fatalf("Revoke() = %v", err)
	}
	rejected := api.Unauthorized()
	postThrough(t, c, sc.URL()+"/after-revocation", bytes.Repeat([]byte("after revocation "), 1<<10))
	if got := api.Unauthorized(); got != rejected+1 {
		t.Errorf("resource server 401s = %d; want %d (the revoked token, once)", got, rejected+1)
	}
	checkGrants(t, auth, "after the revocation", 2, 2, 1, 2)
	if third, _ := readKeySet(t, dir, keySetName); third.Generation != 3 || third.Token.RefreshToken() == "" {
		t.Errorf("stored key set after the password grant: generation %d, refresh token %t; want generation 3 with one",
			third.Generation, third.Token.RefreshToken() != "")
	}
	log, err := os.ReadFile(sc.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, secret := range []string{ownerName, ownerPassword} {
		if bytes.Contains(log, []byte(secret)) {
			t.Errorf("the sidecar's log holds %q", secret)
		}
	}
}

// checkGrants compares the password and refresh_token grants the server
// counted (succeeded, attempted) with what a scenario expects by then.
func checkGrants(t *testing.T, auth *authserver.Server, when string, passwordOK, passwordAttempts, refreshOK, refreshAttempts int) {
	t.Helper()
	if ok, attempts := auth.GrantCounts(authserver.GrantPassword); ok != passwordOK || attempts != passwordAttempts {
		t.Errorf("%s: password grants = %d of %d attempts; want %d of %d", when, ok, attempts, passwordOK, passwordAttempts)
	}
	if ok, attempts := auth.GrantCounts(authserver.GrantRefreshToken); ok != refreshOK || attempts != refreshAttempts {
		t.Errorf("%s: refresh_token grants = %d of %d attempts; want %d of %d", when, ok, attempts, refreshOK, refreshAttempts)
	}
}
