package oauth2upstream

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/oauth2upstream/caddy-oauth2-upstream/credential"
	"github.com/oauth2upstream/caddy-oauth2-upstream/internal/live"
)

// writePEM writes one PEM block to a file in dir and returns its path.
func writePEM(t *testing.T, dir, name, typ string, der []byte) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// newECKeyFile makes a P-256 key, written as PKCS #8 PEM into dir.
func newECKeyFile(t *testing.T, dir, name string) (*ecdsa.PrivateKey, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return key, writePEM(t, dir, name, "PRIVATE KEY", der)
}

// newCertFile makes a self-signed client certificate for key, written as
// PEM into dir.
func newCertFile(t *testing.T, dir, name string, key crypto.Signer) string {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "sidecar"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	return writePEM(t, dir, name, "CERTIFICATE", der)
}

// Validate refuses client authentication options that do not fit each
// other or the grant, naming the options.
func TestValidateClientAuthErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		modify func(h *Handler)
		want   string
	}{
		{"unknown client_auth", func(h *Handler) { h.ClientAuth = "client_secret_jws" }, `client_auth "client_secret_jws": must be one of secret_basic, secret_post, client_secret_jwt, private_key_jwt, tls_client_auth, none`},
		{"auth_style disagrees", func(h *Handler) { h.AuthStyle, h.ClientAuth = "post", "secret_basic" }, "auth_style post and client_auth secret_basic disagree"},
		{"secret with private_key_jwt", func(h *Handler) {
			h.ClientAuth, h.ClientSecret, h.SigningKey = "private_key_jwt", "s", "k.pem"
		}, "client_secret is never sent with client_auth private_key_jwt"},
		{"private_key_jwt without key", func(h *Handler) { h.ClientAuth = "private_key_jwt" }, "signing_key is required with client_auth private_key_jwt"},
		{"jwt_bearer without key", func(h *Handler) { h.Grant = "jwt_bearer" }, "signing_key is required with client_auth private_key_jwt and grant jwt_bearer"},
		{"signing_key unused", func(h *Handler) { h.SigningKey = "k.pem" }, "signing_key, signing_alg and signing_key_id sign the assertions"},
		{"signing_alg", func(h *Handler) { h.ClientAuth, h.SigningKey, h.SigningAlg = "private_key_jwt", "k.pem", "HS256" }, `signing_alg "HS256": must be one of RS256, PS256, ES256`},
		{"tls_client_auth without certificate", func(h *Handler) { h.ClientAuth = "tls_client_auth" }, "client_auth tls_client_auth needs client_certificate"},
		{"certificate without key", func(h *Handler) { h.ClientCertificate = "c.pem" }, "client_certificate and client_certificate_key go together"},
		{"client_assertion_audience without private_key_jwt", func(h *Handler) { h.ClientAssertionAudience = "x" }, "client_assertion_audience is for client_auth private_key_jwt"},
		{"assertion claims without jwt_bearer", func(h *Handler) { h.AssertionSubject = "u" }, "assertion_issuer, assertion_subject and assertion_audience are claims of grant jwt_bearer"},
		{"seed with jwt_bearer", func(h *Handler) { h.Grant, h.SigningKey, h.RefreshToken = "jwt_bearer", "k.pem", "rt" }, "the jwt_bearer grant needs none"},
		{"placeholder key_set with jwt_bearer", func(h *Handler) {
			h.Grant, h.SigningKey, h.KeySet = "jwt_bearer", "k.pem", "{http.request.header.X}"
		}, "the jwt_bearer grant cannot use"},
		{"assertion as a param", func(h *Handler) { h.Params = map[string][]string{"client_assertion": {"x"}} }, "param client_assertion: set by the grant itself"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := Handler{TokenURL: "https://login.example.com/token", ClientID: "c"}
			tt.modify(&h)
			h.setDefaults()
			h.keySets = live.KeySetRule{Name: h.KeySet}
			err := h.Validate()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Validate() = %v; want an error containing %q", err, tt.want)
			}
		})
	}
}

// auth_style stays an alias of client_auth, and the default fits the
// grant: secret_basic, or none for jwt_bearer without a client secret.
func TestClientAuthDefaultsAndAlias(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		h      Handler
		want   string
		secret string // what the token endpoint is told of the secret
	}{
		{"default", Handler{ClientSecret: "s"}, credential.ClientAuthSecretBasic, "s"},
		{"auth_style basic", Handler{AuthStyle: "basic", ClientSecret: "s"}, credential.ClientAuthSecretBasic, "s"},
		{"auth_style post", Handler{AuthStyle: "post", ClientSecret: "s"}, credential.ClientAuthSecretPost, "s"},
		{"auth_style post agrees with client_auth", Handler{AuthStyle: "post", ClientAuthOptions: ClientAuthOptions{ClientAuth: "secret_post"}}, credential.ClientAuthSecretPost, ""},
		{"jwt_bearer without secret", Handler{Grant: "jwt_bearer", ClientAuthOptions: ClientAuthOptions{SigningKey: "k"}}, credential.ClientAuthNone, ""},
		{"jwt_bearer with secret", Handler{Grant: "jwt_bearer", ClientSecret: "s", ClientAuthOptions: ClientAuthOptions{SigningKey: "k"}}, credential.ClientAuthSecretBasic, "s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := tt.h
			h.TokenURL, h.ClientID = "https://login.example.com/token", "c"
			h.setDefaults()
			if err := h.Validate(); err != nil {
				t.Fatalf("Validate() = %v", err)
			}
			var endpoint credential.TokenEndpoint
			h.configureClientAuth(&endpoint)
			if endpoint.ClientAuth != tt.want {
				t.Errorf("client authentication = %q; want %q", endpoint.ClientAuth, tt.want)
			}
		})
	}
}

// A key or certificate that cannot be used fails provisioning with a
// message naming the option, and a key given as {env.*} is never quoted.
func TestProvisionClientAuthErrors(t *testing.T) {
	dir := t.TempDir()
	ecKey, ecKeyFile := newECKeyFile(t, dir, "ec.pem")
	_, otherKeyFile := newECKeyFile(t, dir, "other.pem")
	certFile := newCertFile(t, dir, "cert.pem", ecKey)
	const secretJunk = "MHcCAQEEIBrokenKeyMaterialThatMustNeverBeLogged"
	t.Setenv("BAD_CLIENT_KEY", secretJunk)
	t.Setenv("BAD_CLIENT_KEY_LINES", secretJunk+"\n"+secretJunk)
	tests := []struct {
		name string
		opts ClientAuthOptions
		want string
	}{
		{"missing key file", ClientAuthOptions{SigningKey: filepath.Join(dir, "nope.pem")}, "signing_key " + filepath.Join(dir, "nope.pem") + ": reading the PEM file: no such file or directory"},
		{"not PEM", ClientAuthOptions{SigningKey: certFile}, "signing_key: no private key among the PEM blocks"},
		{"env key that is no PEM", ClientAuthOptions{SigningKey: "{env.BAD_CLIENT_KEY}"}, "signing_key {env.BAD_CLIENT_KEY}: reading the PEM file"},
		{"env key of several lines", ClientAuthOptions{SigningKey: "{env.BAD_CLIENT_KEY_LINES}"}, "signing_key {env.BAD_CLIENT_KEY_LINES}: neither PEM"},
		{"EC key for RS256", ClientAuthOptions{SigningKey: ecKeyFile, SigningAlg: "RS256"}, `signing_key: an EC key signs ES256, not RS256 (signing_alg "RS256")`},
		{"certificate of another key", ClientAuthOptions{ClientCertificate: certFile, ClientCertificateKey: otherKeyFile}, "client_certificate: the certificate (subject \"CN=sidecar\") does not match client_certificate_key"},
		{"certificate file holds a key", ClientAuthOptions{ClientCertificate: ecKeyFile, ClientCertificateKey: ecKeyFile}, "client_certificate: no CERTIFICATE block"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := tt.opts
			err := opts.provisionClientAuth(caddy.NewReplacer())
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("provisionClientAuth() = %v; want an error containing %q", err, tt.want)
			}
			if err != nil && strings.Contains(err.Error(), secretJunk) {
				t.Errorf("provisionClientAuth() = %v; it quotes the key material", err)
			}
		})
	}
	t.Run("key from env and matching certificate", func(t *testing.T) {
		data, _ := os.ReadFile(ecKeyFile)
		t.Setenv("GOOD_CLIENT_KEY", string(data))
		opts := ClientAuthOptions{SigningKey: "{env.GOOD_CLIENT_KEY}", ClientCertificate: certFile, ClientCertificateKey: "{env.GOOD_CLIENT_KEY}"}
		if err := opts.provisionClientAuth(caddy.NewReplacer()); err != nil {
			t.Fatalf("provisionClientAuth() = %v", err)
		}
		defer opts.cleanupClientAuth()
		if opts.signer == nil || opts.signer.Algorithm() != "ES256" || opts.tokenTransport == nil {
			t.Errorf("provisioned signer %v, transport %v; want an ES256 signer and a transport with the certificate", opts.signer, opts.tokenTransport)
		}
	})
}

// The Caddyfile options of client authentication take their arguments.
func TestCaddyfileClientAuthErrors(t *testing.T) {
	t.Parallel()
	tests := []struct{ name, input, want string }{
		{"client_auth without value", "oauth2_upstream {\n client_auth\n}", "client_auth: want one argument, got 0"},
		{"client_certificate without key", "oauth2_upstream {\n client_certificate c.pem\n}", "client_certificate: want <certificate> <key>, got 1 arguments"},
		{"signing_key twice", "oauth2_upstream {\n signing_key a b\n}", "signing_key: want one argument, got 2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var h Handler
			err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tt.input))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("UnmarshalCaddyfile(%q) = %v; want an error containing %q", tt.input, err, tt.want)
			}
		})
	}
}

// A handler with client_auth private_key_jwt and grant jwt_bearer signs
// both assertions with its signing_key: the token endpoint verifies them
// with the public key, and the request goes upstream with the token.
func TestPrivateKeyJWTThroughHandler(t *testing.T) {
	t.Parallel()
	key, keyFile := newECKeyFile(t, t.TempDir(), "client.pem")
	var grants atomic.Int64
	te := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.ParseForm()
		for _, field := range []string{"assertion", "client_assertion"} {
			tok, err := jwt.ParseSigned(r.PostForm.Get(field), []jose.SignatureAlgorithm{jose.ES256})
			var claims jwt.Claims
			if err != nil || tok.Claims(key.Public(), &claims) != nil || tok.Headers[0].KeyID != "k1" {
				http.Error(w, `{"error":"invalid_client"}`, http.StatusUnauthorized)
				return
			}
		}
		if r.PostForm.Get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer" {
			http.Error(w, `{"error":"unsupported_grant_type"}`, http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		grants.Add(1)
		w.Write([]byte(`{"access_token":"at-jwt","token_type":"Bearer","expires_in":3600}`))
	}))
	t.Cleanup(te.Close)
	api := newAPIServer(t, "Bearer at-jwt")
	h := &Handler{TokenURL: te.URL + "/token", ClientID: "c", Grant: "jwt_bearer", ClientAuthOptions: ClientAuthOptions{
		ClientAuth: "private_key_jwt", SigningKey: keyFile, SigningKeyID: "k1", AssertionSubject: "user"}}
	s := newSidecar(t, h, hostPort(t, api.server.URL))
	resp, body := s.get(t, "/x")
	if resp.StatusCode != http.StatusOK || grants.Load() != 1 {
		t.Fatalf("GET = %d %q after %d grants; want 200 after 1", resp.StatusCode, body, grants.Load())
	}
}
