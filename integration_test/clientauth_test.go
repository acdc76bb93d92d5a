package integration_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/oauth2upstream/caddy-oauth2-upstream/integration_test/authserver"
)

// newKeyFile makes an EC P-256 key, written as PKCS #8 PEM (0600) into a
// temporary directory.
func newKeyFile(t *testing.T) (*ecdsa.PrivateKey, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "client.key")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return key, path
}

// postThrough POSTs body through the sidecar and checks that the resource
// server received it byte for byte with one Authorization header.
func postThrough(t *testing.T, c *http.Client, url string, body []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	r := do(c, req)
	if r.err != nil || r.status != http.StatusOK {
		t.Fatalf("POST %s: %s; want 200", url, r)
	}
	sum := sha256.Sum256(body)
	if e := r.echo(t); e.SHA256 != hex.EncodeToString(sum[:]) || e.Length != int64(len(body)) || e.AuthorizationCount != 1 {
		t.Errorf("upstream got %d bytes (sha256 %s) with %d Authorization headers; want the %d bytes sent, 1 header",
			e.Length, e.SHA256, e.AuthorizationCount, len(body))
	}
}

// expireThenReplay waits out the access token the sidecar holds, which it
// cannot see expire (the provider sends no expires_in, as Salesforce), and
// POSTs a body: the resource server answers 401, the sidecar makes a grant
// and replays the body.
func expireThenReplay(t *testing.T, c *http.Client, sidecarURL string, rejectedBefore int, unauthorized func() int) {
	t.Helper()
	// fosite rounds a jwt-bearer token's expiry to the second.
	time.Sleep(tokenLifespan + time.Second)
	body := bytes.Repeat([]byte("replayed body "), 20<<10) // 280 KiB
	postThrough(t, c, sidecarURL+"/upload", body)
	if got := unauthorized(); got != rejectedBefore+1 {
		t.Errorf("resource server 401s = %d; want %d (the expired token, once)", got, rejectedBefore+1)
	}
}

// private_key_jwt end to end (RFC 7523 section 2.2): fosite authenticates
// the sidecar by a client assertion signed with its key, on the first
// refresh and again when the resource server rejects the expired token
// (fosite refuses a jti it saw, so each assertion is new), and the body of
// the rejected POST is replayed byte for byte. No client secret exists.
func TestPrivateKeyJWTClientEndToEnd(t *testing.T) {
	t.Parallel()
	key, keyFile := newKeyFile(t)
	client := authserver.Client{ID: "jwt-client", AuthMethod: authserver.AuthMethodPrivateKeyJWT, Key: key}
	auth := newAuthServer(t, authserver.Config{Clients: []authserver.Client{client}, Profile: authserver.Profile{OmitExpiresIn: true}})
	api := newResourceServer(t, auth)
	seed, err := auth.Seed(t.Context(), client.ID, "api", "refresh_token")
	if err != nil {
		t.Fatalf("Seed() = %v", err)
	}
	dir, ksOption := fileKeystore(t)
	sc := startSidecar(t, spec{
		auth: auth, upstream: hostport(api.URL()), keystore: ksOption, seed: seed, client: &client,
		options: []string{"client_auth private_key_jwt", "signing_key " + keyFile, "refresh reactive"},
	})
	c := newClient(t, 2)
	if r := get(c, sc.URL()+"/first"); r.err != nil || r.status != http.StatusOK {
		t.Fatalf("GET /first: %s; want 200", r)
	}
	expireThenReplay(t, c, sc.URL(), api.Unauthorized(), api.Unauthorized)
	if ok, attempts := auth.GrantCounts(authserver.GrantRefreshToken); ok != 2 || attempts != 2 {
		t.Errorf("refresh_token grants = %d of %d attempts; want 2 of 2", ok, attempts)
	}
	if n := auth.ReuseDetections(); n != 0 {
		t.Errorf("reuse detections = %d; want 0", n)
	}
	if ks, _ := readKeySet(t, dir, keySetName); ks.Generation != 3 || ks.Token.RefreshToken() == seed {
		t.Errorf("stored key set: generation %d, refresh token rotated %v; want generation 3, rotated", ks.Generation, ks.Token.RefreshToken() != seed)
	}
}

// grant jwt_bearer end to end (RFC 7523 section 2.1): fosite grants the
// sidecar's signed assertion for the trusted issuer and subject, with no
// seed and no refresh token; when the resource server rejects the expired
// token the sidecar makes a new jwt-bearer grant and replays the body. The
// client authenticates with its secret, or with private_key_jwt beside the
// grant's assertion.
func TestJWTBearerGrantEndToEnd(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		clientJWT bool
	}{
		{name: "client_secret_basic"},
		{name: "private_key_jwt", clientJWT: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			issuerKey, issuerKeyFile := newKeyFile(t)
			// The kid under which the authorization server holds the key,
			// for the issuer and for the client alike.
			keyID := authserver.ClientKeyID("jwt-client")
			cfg := authserver.Config{
				Profile: authserver.Profile{OmitExpiresIn: true},
				JWTIssuers: []authserver.JWTIssuer{{Issuer: "svc-issuer", Subject: "integration@example.com",
					Key: issuerKey.Public(), KeyID: keyID, Scopes: []string{"api"}}},
			}
			options := []string{"grant jwt_bearer", "signing_key " + issuerKeyFile, "signing_key_id " + keyID,
				"assertion_issuer svc-issuer", "assertion_subject integration@example.com", "scopes api", "refresh reactive"}
			var client *authserver.Client
			if tt.clientJWT {
				// One key signs both assertions, as a connected app's does.
				client = &authserver.Client{ID: "jwt-client", AuthMethod: authserver.AuthMethodPrivateKeyJWT, Key: issuerKey}
				cfg.Clients = []authserver.Client{*client}
				options = append(options, "client_auth private_key_jwt")
			}
			auth := newAuthServer(t, cfg)
			api := newResourceServer(t, auth)
			dir, ksOption := fileKeystore(t)
			sc := startSidecar(t, spec{auth: auth, upstream: hostport(api.URL()), keystore: ksOption, client: client, options: options})
			c := newClient(t, 2)
			if r := get(c, sc.URL()+"/first"); r.err != nil || r.status != http.StatusOK {
				t.Fatalf("GET /first: %s; want 200", r)
			}
			expireThenReplay(t, c, sc.URL(), api.Unauthorized(), api.Unauthorized)
			if ok, attempts := auth.GrantCounts(authserver.GrantJWTBearer); ok != 2 || attempts != 2 {
				t.Errorf("jwt-bearer grants = %d of %d attempts; want 2 of 2", ok, attempts)
			}
			if _, attempts := auth.GrantCounts(authserver.GrantRefreshToken); attempts != 0 {
				t.Errorf("refresh_token grants attempted = %d; want 0", attempts)
			}
			if ks, _ := readKeySet(t, dir, keySetName); ks.Generation != 2 || ks.Token.RefreshToken() != "" {
				t.Errorf("stored key set: generation %d, refresh token %v; want generation 2, none", ks.Generation, ks.Token.RefreshToken() != "")
			}
		})
	}
}

// A signing key that cannot sign what is configured stops the sidecar
// from starting, with an error naming the option; a key the provider does
// not know is its invalid_client, a 502 naming the key set.
func TestWrongSigningKey(t *testing.T) {
	t.Parallel()
	key, _ := newKeyFile(t)
	_, otherKeyFile := newKeyFile(t)
	client := authserver.Client{ID: "jwt-client", AuthMethod: authserver.AuthMethodPrivateKeyJWT, Key: key}
	auth := newAuthServer(t, authserver.Config{Clients: []authserver.Client{client}})
	api := newResourceServer(t, auth)
	_, ksOption := fileKeystore(t)

	t.Run("EC key for RS256", func(t *testing.T) {
		p := newSidecar(t, spec{auth: auth, upstream: hostport(api.URL()), keystore: ksOption, client: &client,
			options: []string{"client_auth private_key_jwt", "signing_key " + otherKeyFile, "signing_alg RS256"}})
		err := p.Start(t.Context())
		if err == nil || !strings.Contains(err.Error(), "signing_key: an EC key signs ES256, not RS256") {
			t.Fatalf("starting with an EC signing_key for RS256: %v; want a provisioning error naming signing_key", err)
		}
	})
	t.Run("key the provider does not know", func(t *testing.T) {
		sc := startSidecar(t, spec{auth: auth, upstream: hostport(api.URL()), keystore: ksOption, client: &client,
			seed: seedFor(t, auth, client.ID), options: []string{"client_auth private_key_jwt", "signing_key " + otherKeyFile}})
		r := get(newClient(t, 1), sc.URL()+"/x")
		if p := r.problem(t); r.status != http.StatusBadGateway || p.OAuthError != "invalid_client" || p.KeySet != keySetName {
			t.Errorf("GET with an unknown signing key: %s; want 502 invalid_client for key set %q", r, keySetName)
		}
	})
}

func seedFor(t *testing.T, auth *authserver.Server, clientID string) string {
	t.Helper()
	rt, err := auth.Seed(t.Context(), clientID, "api", "refresh_token")
	if err != nil {
		t.Fatalf("Seed(%q) = %v", clientID, err)
	}
	return rt
}
