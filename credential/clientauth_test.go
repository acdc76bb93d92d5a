package credential

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// Test keys, made once: RSA key generation is slow under -race.
var (
	testRSAKey = sync.OnceValue(func() *rsa.PrivateKey {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			panic(err)
		}
		return k
	})
	testECKey = sync.OnceValue(func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			panic(err)
		}
		return k
	})
)

func mustSigner(t *testing.T, key crypto.Signer, alg, kid string) *Signer {
	t.Helper()
	s, err := NewSigner(key, alg, kid)
	if err != nil {
		t.Fatalf("NewSigner(%T, %q) = %v", key, alg, err)
	}
	return s
}

// verifiedAssertion checks a compact JWT's signature with pub, as the
// token endpoint does, and returns its header and claims.
func verifiedAssertion(t *testing.T, compact string, alg string, pub crypto.PublicKey) (jose.Header, jwt.Claims, map[string]any) {
	t.Helper()
	tok, err := jwt.ParseSigned(compact, []jose.SignatureAlgorithm{jose.SignatureAlgorithm(alg)})
	if err != nil {
		t.Fatalf("ParseSigned(assertion) = %v", err)
	}
	var claims jwt.Claims
	var all map[string]any
	if err := tok.Claims(pub, &claims, &all); err != nil {
		t.Fatalf("assertion signature with the client's public key: %v", err)
	}
	return tok.Headers[0], claims, all
}

// checkAssertionTimes: issued now, valid for at most 5 minutes (RFC 7523
// section 3; providers refuse longer).
func checkAssertionTimes(t *testing.T, claims jwt.Claims) {
	t.Helper()
	iat, exp := claims.IssuedAt.Time(), claims.Expiry.Time()
	if !iat.Equal(tokenClientTestNow) {
		t.Errorf("iat = %v; want the grant's time %v", iat, tokenClientTestNow)
	}
	if life := exp.Sub(iat); life <= 0 || life > 5*time.Minute {
		t.Errorf("exp - iat = %v; want within (0, 5m]", life)
	}
}

// TestTokenClientPrivateKeyJWT: with private_key_jwt, every token request
// carries a client assertion (RFC 7523 section 2.2) signed with the
// configured key and algorithm (verified here with go-jose and the public
// key), kid when configured, iss = sub = client_id, aud = the token URL or
// the configured audience, a jti no other request repeats, and a short
// lifetime; no client secret travels, in a header or the form.
func TestTokenClientPrivateKeyJWT(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		key      crypto.Signer
		alg      string // configured; "" picks from the key
		wantAlg  string
		kid      string
		audience string
	}{
		{name: "RS256 by default for RSA", key: testRSAKey(), wantAlg: AlgRS256},
		{name: "PS256 with kid", key: testRSAKey(), alg: AlgPS256, wantAlg: AlgPS256, kid: "key-2026"},
		{name: "ES256 with audience", key: testECKey(), wantAlg: AlgES256, audience: "https://login.example.com/"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			te := newRecordingTokenEndpoint(t, answerJSON(http.StatusOK, okTokenJSON))
			c := newTestTokenClient(te.URL())
			c.ClientAuth, c.ClientSecret = ClientAuthPrivateKeyJWT, ""
			c.Signer = mustSigner(t, tt.key, tt.alg, tt.kid)
			c.ClientAssertionAudience = tt.audience
			for range 2 {
				if _, err := c.grant(context.Background(), "sf", "rt-0"); err != nil {
					t.Fatalf("grant(%q) = %v", "sf", err)
				}
			}
			wantAud := tt.audience
			if wantAud == "" {
				wantAud = te.URL()
			}
			jtis := map[string]bool{}
			for i, req := range te.seen() {
				if auth := req.header.Get("Authorization"); auth != "" {
					t.Errorf("request %d: Authorization = %q; want none", i+1, auth)
				}
				if _, ok := req.form["client_secret"]; ok {
					t.Errorf("request %d: form has client_secret; want none", i+1)
				}
				if got := req.form.Get("client_id"); got != "client-1" {
					t.Errorf("request %d: client_id = %q; want client-1", i+1, got)
				}
				if got := req.form.Get("client_assertion_type"); got != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" {
					t.Errorf("request %d: client_assertion_type = %q", i+1, got)
				}
				header, claims, _ := verifiedAssertion(t, req.form.Get("client_assertion"), tt.wantAlg, tt.key.Public())
				if header.KeyID != tt.kid {
					t.Errorf("request %d: kid = %q; want %q", i+1, header.KeyID, tt.kid)
				}
				if claims.Issuer != "client-1" || claims.Subject != "client-1" {
					t.Errorf("request %d: iss, sub = %q, %q; want client-1, client-1", i+1, claims.Issuer, claims.Subject)
				}
				if len(claims.Audience) != 1 || claims.Audience[0] != wantAud {
					t.Errorf("request %d: aud = %q; want [%q]", i+1, claims.Audience, wantAud)
				}
				checkAssertionTimes(t, claims)
				if claims.ID == "" || jtis[claims.ID] {
					t.Errorf("request %d: jti = %q; want one no other request carried", i+1, claims.ID)
				}
				jtis[claims.ID] = true
				if got := req.form.Get("refresh_token"); got != "rt-0" {
					t.Errorf("request %d: refresh_token = %q; want rt-0", i+1, got)
				}
			}
		})
	}
}

// TestTokenClientJWTBearerGrant: grant jwt_bearer (RFC 7523 section 2.1)
// sends grant_type urn:ietf:params:oauth:grant-type:jwt-bearer and a
// signed assertion with the configured iss, sub and aud (iss defaults to
// the client id, aud to the token URL), the scopes in the form and, as
// Google wants, in a scope claim; no refresh token. Without client
// authentication nothing identifies the client but the assertion; with
// private_key_jwt a client assertion goes too.
func TestTokenClientJWTBearerGrant(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name         string
		clientAuth   string
		assertion    AssertionClaims
		wantIss      string
		wantAud      string // "" for the token URL
		wantClientID string
	}{
		{name: "Salesforce, no client authentication", clientAuth: ClientAuthNone,
			assertion: AssertionClaims{Issuer: "3MVG9consumer", Subject: "api@example.com", Audience: "https://login.salesforce.com"},
			wantIss:   "3MVG9consumer", wantAud: "https://login.salesforce.com"},
		{name: "defaults with private_key_jwt", clientAuth: ClientAuthPrivateKeyJWT,
			assertion: AssertionClaims{Subject: "user-7"}, wantIss: "client-1", wantClientID: "client-1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			te := newRecordingTokenEndpoint(t, answerJSON(http.StatusOK, okTokenJSON))
			c := newTestTokenClient(te.URL())
			c.Grant, c.ClientAuth, c.ClientSecret = GrantJWTBearer, tt.clientAuth, ""
			c.Signer = mustSigner(t, testECKey(), "", "")
			c.Assertion = tt.assertion
			c.Scopes = []string{"api", "refresh_token"}
			res, err := c.grant(context.Background(), "sf", "")
			if err != nil || res.token.AccessToken() != "at-1" {
				t.Fatalf("grant(%q) = %v, %v; want at-1", "sf", res.token.AccessToken(), err)
			}
			req := te.seen()[0]
			if got := req.form.Get("grant_type"); got != "urn:ietf:params:oauth:grant-type:jwt-bearer" {
				t.Errorf("grant_type = %q; want the RFC 7523 jwt-bearer URN", got)
			}
			if got := req.form.Get("scope"); got != "api refresh_token" {
				t.Errorf("scope = %q; want %q", got, "api refresh_token")
			}
			if got := req.form.Get("client_id"); got != tt.wantClientID {
				t.Errorf("client_id = %q; want %q", got, tt.wantClientID)
			}
			if _, ok := req.form["refresh_token"]; ok || req.header.Get("Authorization") != "" {
				t.Errorf("form %v, Authorization %q; want no refresh_token and no Authorization", req.form, req.header.Get("Authorization"))
			}
			_, claims, all := verifiedAssertion(t, req.form.Get("assertion"), AlgES256, testECKey().Public())
			wantAud := tt.wantAud
			if wantAud == "" {
				wantAud = te.URL()
			}
			if claims.Issuer != tt.wantIss || claims.Subject != tt.assertion.Subject || len(claims.Audience) != 1 || claims.Audience[0] != wantAud {
				t.Errorf("iss, sub, aud = %q, %q, %q; want %q, %q, [%q]", claims.Issuer, claims.Subject, claims.Audience, tt.wantIss, tt.assertion.Subject, wantAud)
			}
			if all["scope"] != "api refresh_token" {
				t.Errorf("scope claim = %v; want %q", all["scope"], "api refresh_token")
			}
			checkAssertionTimes(t, claims)
			hasClientAssertion := req.form.Get("client_assertion") != ""
			if want := tt.clientAuth == ClientAuthPrivateKeyJWT; hasClientAssertion != want {
				t.Errorf("client_assertion sent = %v; want %v", hasClientAssertion, want)
			}
		})
	}
}

// TestEngineJWTBearerNeedsNoSeed: like client_credentials, a jwt_bearer
// key set starts empty and is granted on first use, with no seed.
func TestEngineJWTBearerNeedsNoSeed(t *testing.T) {
	t.Parallel()
	f := newEngineFixture(t, "rt-0")
	f.r.client.Grant, f.r.client.ClientAuth = GrantJWTBearer, ClientAuthNone
	f.r.client.Signer = mustSigner(t, testECKey(), "", "")
	cred, err := f.r.Current(context.Background(), "sf")
	if err != nil || cred.Header != "Bearer at-1" || cred.KeySet.Generation != 1 {
		t.Fatalf("Current(%q) = %v, %v; want Bearer at-1 generation 1", "sf", credString(cred), err)
	}
}

// TestTokenClientTLSClientAuth: with tls_client_auth (RFC 8705 section 2)
// the token request carries client_id and no secret, and the client
// certificate of the Transport reaches the token endpoint's handshake.
func TestTokenClientTLSClientAuth(t *testing.T) {
	t.Parallel()
	cert := selfSignedCert(t, testECKey(), "sidecar")
	var seenCert []byte
	server := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if len(r.TLS.PeerCertificates) > 0 {
			seenCert = r.TLS.PeerCertificates[0].Raw
		}
		r.ParseForm()
		if r.PostForm.Get("client_id") != "client-1" || r.PostForm.Has("client_secret") || r.Header.Get("Authorization") != "" {
			answerJSON(http.StatusUnauthorized, `{"error":"invalid_client"}`)(w, r)
			return
		}
		answerJSON(http.StatusOK, okTokenJSON)(w, r)
	}))
	server.TLS = &tls.Config{ClientAuth: tls.RequireAnyClientCert}
	server.StartTLS()
	t.Cleanup(server.Close)

	transport := server.Client().Transport.(*http.Transport).Clone()
	transport.TLSClientConfig.Certificates = []tls.Certificate{cert}
	c := newTestTokenClient(server.URL + "/token")
	c.ClientAuth, c.ClientSecret, c.Transport = ClientAuthTLS, "", transport
	if _, err := c.grant(context.Background(), "sf", "rt-0"); err != nil {
		t.Fatalf("grant(%q) = %v", "sf", err)
	}
	if string(seenCert) != string(cert.Certificate[0]) {
		t.Errorf("the token endpoint saw certificate %x; want the client's", seenCert)
	}
}

// TestTokenClientErrorsHoldNoAssertion: a token endpoint that echoes the
// client assertion and the grant assertion in its error description gets
// them redacted: an assertion is a credential for its lifetime.
func TestTokenClientErrorsHoldNoAssertion(t *testing.T) {
	t.Parallel()
	var te *recordingTokenEndpoint
	te = newRecordingTokenEndpoint(t, func(w http.ResponseWriter, r *http.Request) {
		seen := te.seen() // the recorder has read the body
		form := seen[len(seen)-1].form
		answerJSON(http.StatusBadRequest, `{"error":"invalid_grant","error_description":"bad `+
			form.Get("assertion")+` and `+form.Get("client_assertion")+`"}`)(w, r)
	})
	c := newTestTokenClient(te.URL())
	c.Grant, c.ClientAuth, c.ClientSecret = GrantJWTBearer, ClientAuthPrivateKeyJWT, ""
	c.Signer = mustSigner(t, testECKey(), "", "")
	_, err := c.grant(context.Background(), "sf", "")
	if err == nil {
		t.Fatal("grant = nil; want invalid_grant")
	}
	req := te.seen()[0]
	for _, field := range []string{"assertion", "client_assertion"} {
		if v := req.form.Get(field); v == "" || strings.Contains(err.Error(), v) {
			t.Errorf("error %q holds the %s (or none was sent)", err, field)
		}
	}
	if !strings.Contains(err.Error(), "[redacted]") {
		t.Errorf("error %q; want the echoed assertions [redacted]", err)
	}
}

// TestSignerRefusesKeys: a key that does not fit the algorithm, or is too
// weak, is refused with a message saying why; the key is never quoted.
func TestSignerRefusesKeys(t *testing.T) {
	t.Parallel()
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		key  crypto.Signer
		alg  string
		want string
	}{
		{"EC key for RS256", testECKey(), AlgRS256, "an EC key signs ES256, not RS256"},
		{"RSA key for ES256", testRSAKey(), AlgES256, "an RSA key signs RS256 or PS256, not ES256"},
		{"P-384 for ES256", p384, "", "ES256 needs an EC key on P-256, not P-384"},
		{"1024-bit RSA", small, AlgRS256, "the RSA key has 1024 bits"},
		{"unknown algorithm", testRSAKey(), "HS256", "not HS256"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := NewSigner(tt.key, tt.alg, "")
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("NewSigner(%s) = %v; want an error containing %q", tt.name, err, tt.want)
			}
		})
	}
}

// TestParsePrivateKey reads PKCS #8, PKCS #1 and SEC 1 keys, skips a
// certificate before the key, and says what is wrong with anything else.
func TestParsePrivateKey(t *testing.T) {
	t.Parallel()
	pkcs8, _ := x509.MarshalPKCS8PrivateKey(testECKey())
	sec1, _ := x509.MarshalECPrivateKey(testECKey())
	pkcs1 := x509.MarshalPKCS1PrivateKey(testRSAKey())
	cert := selfSignedCert(t, testECKey(), "x")
	block := func(typ string, der []byte) string {
		return string(pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}))
	}
	tests := []struct {
		name string
		data string
		want string // error; "" for success
	}{
		{"PKCS #8", block("PRIVATE KEY", pkcs8), ""},
		{"SEC 1 after a certificate", block("CERTIFICATE", cert.Certificate[0]) + block("EC PRIVATE KEY", sec1), ""},
		{"PKCS #1", block("RSA PRIVATE KEY", pkcs1), ""},
		{"not PEM", "not a key", "no PEM data"},
		{"certificate only", block("CERTIFICATE", cert.Certificate[0]), "no private key among the PEM blocks"},
		{"encrypted", block("ENCRYPTED PRIVATE KEY", []byte{1, 2, 3}), "the private key is encrypted"},
		{"broken", block("PRIVATE KEY", []byte{1, 2, 3}), "the PRIVATE KEY block does not parse"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			key, err := ParsePrivateKey([]byte(tt.data))
			switch {
			case tt.want == "" && (err != nil || key == nil):
				t.Errorf("ParsePrivateKey(%s) = %v, %v; want a key", tt.name, key, err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("ParsePrivateKey(%s) = %v; want an error containing %q", tt.name, err, tt.want)
			}
		})
	}
}

// selfSignedCert makes a certificate for key, as tls.Certificate.
func selfSignedCert(t *testing.T, key crypto.Signer, name string) tls.Certificate {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}
