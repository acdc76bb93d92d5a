package oauth2upstream

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/oauth2upstream/caddy-oauth2-upstream/credential"
	"github.com/oauth2upstream/caddy-oauth2-upstream/internal/live"
)

// secret32 is a client secret long enough for client_secret_jwt.
const secret32 = "0123456789abcdef0123456789abcdef"

// Validate refuses client_secret_jwt, signing certificate and password
// grant options that do not fit each other, naming the options.
func TestValidateLegacyAuthErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		modify func(h *Handler)
		want   string
	}{
		{"client_secret_jwt without secret", func(h *Handler) { h.ClientAuth = "client_secret_jwt" },
			"client_auth client_secret_jwt signs its assertions with client_secret; set it"},
		{"client_secret_jwt with a short secret", func(h *Handler) { h.ClientAuth, h.ClientSecret = "client_secret_jwt", secret32[:31] },
			"client_secret: the client secret is shorter than 32 bytes, the least that HS256 may be keyed with (RFC 7518 section 3.2)"},
		{"client_assertion_audience with secret_basic", func(h *Handler) { h.ClientSecret, h.ClientAssertionAudience = "s", "x" },
			"client_assertion_audience is for client_auth private_key_jwt and client_secret_jwt"},
		{"signing_certificate without signing_key", func(h *Handler) { h.SigningCertificate = "c.pem" },
			"signing_certificate is signing_key's certificate; set signing_key too"},
		{"thumbprint without certificate", func(h *Handler) {
			h.ClientAuth, h.SigningKey, h.SigningCertificateThumbprint = "private_key_jwt", "k.pem", "x5t"
		}, "signing_certificate_thumbprint names signing_certificate in the assertions"},
		{"unknown thumbprint", func(h *Handler) {
			h.ClientAuth, h.SigningKey, h.SigningCertificate, h.SigningCertificateThumbprint = "private_key_jwt", "k.pem", "c.pem", "x5c"
		}, `signing_certificate_thumbprint "x5c": must be one of x5t#S256, x5t, both`},
		{"password grant without username", func(h *Handler) { h.Grant, h.Password = "password", "p" },
			"grant password needs username and password"},
		{"password grant without password", func(h *Handler) { h.Grant, h.Username = "password", "u" },
			"grant password needs username and password"},
		{"username with refresh_token", func(h *Handler) { h.Username, h.Password = "u", "p" },
			"username and password are the resource owner's credentials of grant password; grant is refresh_token"},
		{"password grant with a seed", func(h *Handler) { h.Grant, h.Username, h.Password, h.RefreshToken = "password", "u", "p", "rt" },
			"refresh_token is a seed for the refresh_token grant; the password grant needs none"},
		{"password grant with placeholder key_set", func(h *Handler) {
			h.Grant, h.Username, h.Password, h.KeySet, h.KeySetAllow = "password", "u", "p", "{http.request.header.X}", ".*"
		}, "which the password grant cannot use: it has no per-key-set seed"},
		{"password as a param", func(h *Handler) { h.Params = map[string][]string{"password": {"x"}} },
			"param password: set by the grant itself"},
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
			if err != nil && h.ClientSecret != "" && len(h.ClientSecret) > 1 && strings.Contains(err.Error(), h.ClientSecret) {
				t.Errorf("Validate() = %v; it quotes the client secret", err)
			}
		})
	}
}

// A configuration of client_secret_jwt, or of the password grant, that
// fits validates and reaches the token endpoint's settings.
func TestLegacyAuthConfigures(t *testing.T) {
	t.Parallel()
	h := Handler{TokenURL: "https://login.example.com/token", ClientID: "c", ClientSecret: secret32, Grant: "password",
		ClientAuthOptions:    ClientAuthOptions{ClientAuth: "client_secret_jwt"},
		ResourceOwnerOptions: ResourceOwnerOptions{Username: "svc", Password: "pw"}}
	h.setDefaults()
	h.keySets = live.KeySetRule{Name: h.KeySet}
	if err := h.Validate(); err != nil {
		t.Fatalf("Validate() = %v", err)
	}
	var endpoint credential.TokenEndpoint
	h.configureClientAuth(&endpoint)
	if endpoint.ClientAuth != credential.ClientAuthSecretJWT {
		t.Errorf("client authentication = %q; want %q", endpoint.ClientAuth, credential.ClientAuthSecretJWT)
	}
}

// The password must come from a placeholder replaced at start: one written
// in the configuration (which Caddy's admin API serves) is refused, and
// an empty placeholder is named. The messages never quote the password.
func TestProvisionPasswordPlaceholder(t *testing.T) {
	t.Setenv("LEGACY_PASSWORD", "s3cret-from-env")
	t.Setenv("EMPTY_PASSWORD", "")
	tests := []struct {
		name, password, want string // want "" for success
	}{
		{"from env", "{env.LEGACY_PASSWORD}", ""},
		{"written in the configuration", "s3cret-in-config", "password: give it as a placeholder replaced at start"},
		{"empty placeholder", "{env.EMPTY_PASSWORD}", "password {env.EMPTY_PASSWORD}: the placeholder is empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := ResourceOwnerOptions{Username: "svc", Password: tt.password}
			err := o.provisionResourceOwner(caddy.NewReplacer())
			switch {
			case tt.want == "" && (err != nil || o.Password != "s3cret-from-env"):
				t.Errorf("provisionResourceOwner(%q) = %v, password replaced %t; want nil, replaced", tt.password, err, o.Password == "s3cret-from-env")
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("provisionResourceOwner(%q) = %v; want an error containing %q", tt.password, err, tt.want)
			case err != nil && strings.Contains(err.Error(), "s3cret"):
				t.Errorf("provisionResourceOwner(%q) = %v; it quotes the password", tt.password, err)
			}
		})
	}
}

// newRSAKeyFile makes a 2048-bit RSA key, written as PKCS #8 PEM into dir.
func newRSAKeyFile(t *testing.T, dir, name string) (*rsa.PrivateKey, string) {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return key, writePEM(t, dir, name, "PRIVATE KEY", der)
}

// A signing certificate that is not the signing key's, or no certificate
// at all, fails provisioning with a message naming the option.
func TestProvisionSigningCertificateErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ecKey, ecKeyFile := newECKeyFile(t, dir, "ec.pem")
	_, otherKeyFile := newECKeyFile(t, dir, "other.pem")
	certFile := newCertFile(t, dir, "cert.pem", ecKey)
	tests := []struct {
		name string
		opts ClientAuthOptions
		want string
	}{
		{"certificate of another key", ClientAuthOptions{SigningKey: otherKeyFile, SigningCertificate: certFile},
			`signing_certificate: the certificate (subject "CN=sidecar") does not hold the signing key's public key: they are not a pair`},
		{"missing certificate file", ClientAuthOptions{SigningKey: ecKeyFile, SigningCertificate: filepath.Join(dir, "nope.crt")},
			"signing_certificate " + filepath.Join(dir, "nope.crt") + ": reading the PEM file"},
		{"a key in place of the certificate", ClientAuthOptions{SigningKey: ecKeyFile, SigningCertificate: ecKeyFile},
			"signing_certificate: no CERTIFICATE block in the PEM"},
		{"key errors still name signing_key", ClientAuthOptions{SigningKey: ecKeyFile, SigningAlg: "RS256", SigningCertificate: certFile},
			`signing_key: an EC key signs ES256, not RS256`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			opts := tt.opts
			err := opts.provisionClientAuth(caddy.NewReplacer())
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("provisionClientAuth() = %v; want an error containing %q", err, tt.want)
			}
		})
	}
}

// The Caddyfile options of signing certificates and the password grant
// take one argument each.
func TestCaddyfileLegacyAuthErrors(t *testing.T) {
	t.Parallel()
	tests := []struct{ name, input, want string }{
		{"signing_certificate with a key", "oauth2_upstream {\n signing_certificate c.pem k.pem\n}", "signing_certificate: want one argument, got 2"},
		{"thumbprint without value", "oauth2_upstream {\n signing_certificate_thumbprint\n}", "signing_certificate_thumbprint: want one argument, got 0"},
		{"password without value", "oauth2_upstream {\n password\n}", "password: want one argument, got 0"},
		{"username twice", "oauth2_upstream {\n username a b\n}", "username: want one argument, got 2"},
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

// entraTokenEndpoint is shaped like Microsoft Entra's token endpoint with
// certificate credentials
// (https://learn.microsoft.com/entra/identity-platform/certificate-credentials):
// it finds the registered certificate by the assertion's x5t#S256 header,
// verifies the PS256 signature with that certificate's key (go-jose),
// checks iss = sub = client_id and aud = the token endpoint, and answers
// 401 invalid_client to an assertion without the header.
type entraTokenEndpoint struct {
	server *httptest.Server
	certs  map[string]*x509.Certificate // by x5t#S256

	mu      sync.Mutex // guards refused
	refused []string   // why each refused request was refused
}

func newEntraTokenEndpoint(t *testing.T, cert *x509.Certificate) *entraTokenEndpoint {
	sum := sha256.Sum256(cert.Raw)
	e := &entraTokenEndpoint{certs: map[string]*x509.Certificate{base64.RawURLEncoding.EncodeToString(sum[:]): cert}}
	e.server = httptest.NewServer(http.HandlerFunc(e.serve))
	t.Cleanup(e.server.Close)
	return e
}

func (e *entraTokenEndpoint) url() string { return e.server.URL + "/tenant-1/oauth2/v2.0/token" }

func (e *entraTokenEndpoint) serve(w http.ResponseWriter, r *http.Request) {
	r.ParseForm()
	if why := e.verify(r.PostForm.Get("client_id"), r.PostForm.Get("client_assertion")); why != "" {
		e.mu.Lock()
		e.refused = append(e.refused, why)
		e.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		w.Write([]byte(`{"error":"invalid_client","error_description":"AADSTS700027: ` + why + `"}`))
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write([]byte(`{"access_token":"at-graph","token_type":"Bearer","expires_in":3599}`))
}

// verify returns why assertion does not authenticate clientID, or "".
func (e *entraTokenEndpoint) verify(clientID, assertion string) string {
	tok, err := jwt.ParseSigned(assertion, []jose.SignatureAlgorithm{jose.PS256})
	if err != nil {
		return "no PS256 client assertion"
	}
	thumbprint, _ := tok.Headers[0].ExtraHeaders["x5t#S256"].(string)
	cert, ok := e.certs[thumbprint]
	if !ok {
		return "no registered certificate named by x5t#S256"
	}
	var claims jwt.Claims
	if err := tok.Claims(cert.PublicKey, &claims); err != nil {
		return "signature does not verify with the certificate"
	}
	if claims.Issuer != clientID || claims.Subject != clientID || !claims.Audience.Contains(e.url()) {
		return "iss, sub or aud wrong"
	}
	return ""
}

// An Entra-shaped token endpoint grants a private_key_jwt assertion only
// when its header names the registered certificate in x5t#S256: with
// signing_certificate it does (the default thumbprint), and the request
// goes upstream with the token; without a certificate, or with x5t alone,
// the endpoint refuses and the client gets 502 invalid_client.
func TestEntraCertificateCredential(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	key, keyFile := newRSAKeyFile(t, dir, "entra.key")
	certFile := newCertFile(t, dir, "entra.crt", key)
	data, err := os.ReadFile(certFile)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		certFile   string
		thumbprint string
		wantStatus int
		wantWhy    string
	}{
		{name: "x5t#S256 by default", certFile: certFile, wantStatus: http.StatusOK},
		{name: "both", certFile: certFile, thumbprint: "both", wantStatus: http.StatusOK},
		{name: "no certificate", wantStatus: http.StatusBadGateway, wantWhy: "no registered certificate named by x5t#S256"},
		{name: "x5t alone", certFile: certFile, thumbprint: "x5t", wantStatus: http.StatusBadGateway, wantWhy: "no registered certificate named by x5t#S256"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			te := newEntraTokenEndpoint(t, cert)
			api := newAPIServer(t, "Bearer at-graph")
			h := &Handler{TokenURL: te.url(), ClientID: "app-1", Grant: "client_credentials", Scopes: []string{"https://graph.microsoft.com/.default"},
				ClientAuthOptions: ClientAuthOptions{ClientAuth: "private_key_jwt", SigningKey: keyFile, SigningAlg: "PS256",
					SigningCertificate: tt.certFile, SigningCertificateThumbprint: tt.thumbprint}}
			s := newSidecar(t, h, hostPort(t, api.server.URL))
			resp, body := s.get(t, "/v1.0/users")
			if resp.StatusCode != tt.wantStatus {
				t.Fatalf("GET = %d %q; want %d", resp.StatusCode, body, tt.wantStatus)
			}
			te.mu.Lock()
			refused := te.refused
			te.mu.Unlock()
			if tt.wantWhy == "" && len(refused) > 0 || tt.wantWhy != "" && (len(refused) != 1 || refused[0] != tt.wantWhy) {
				t.Errorf("token endpoint refused %q; want %q", refused, tt.wantWhy)
			}
			if tt.wantStatus != http.StatusOK && !strings.Contains(string(body), "invalid_client") {
				t.Errorf("GET = %d %q; want a problem naming invalid_client", resp.StatusCode, body)
			}
		})
	}
}
