package credential

import (
	"context"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"net/http"
	"strings"
	"testing"

	"github.com/go-jose/go-jose/v4"
)

// testSecretJWTSecret is a client secret long enough for HS256.
const testSecretJWTSecret = "0123456789abcdef0123456789abcdef-secret"

// TestTokenClientSecretJWT: with client_secret_jwt (OpenID Connect Core
// section 9), every token request carries a client assertion signed HS256
// with the client secret (verified here with go-jose and the secret):
// iss = sub = client_id, aud = the token URL, a jti no other request
// repeats, and a short lifetime. The secret itself travels in neither a
// header nor the form.
func TestTokenClientSecretJWT(t *testing.T) {
	t.Parallel()
	te := newRecordingTokenEndpoint(t, answerJSON(http.StatusOK, okTokenJSON))
	c := newTestTokenClient(te.URL())
	c.ClientAuth, c.ClientSecret = ClientAuthSecretJWT, testSecretJWTSecret
	for range 2 {
		if _, err := c.grant(context.Background(), "sf", "rt-0"); err != nil {
			t.Fatalf("grant(%q) = %v", "sf", err)
		}
	}
	jtis := map[string]bool{}
	for i, req := range te.seen() {
		if auth := req.header.Get("Authorization"); auth != "" {
			t.Errorf("request %d: Authorization = %q; want none", i+1, auth)
		}
		for field, values := range req.form {
			if strings.Contains(strings.Join(values, " "), testSecretJWTSecret) {
				t.Errorf("request %d: form field %s holds the client secret", i+1, field)
			}
		}
		if req.form.Get("client_id") != "client-1" || req.form.Get("client_assertion_type") != clientAssertionType {
			t.Errorf("request %d: client_id %q, client_assertion_type %q; want client-1 and the jwt-bearer type",
				i+1, req.form.Get("client_id"), req.form.Get("client_assertion_type"))
		}
		header, claims, _ := verifiedAssertion(t, req.form.Get("client_assertion"), string(jose.HS256), []byte(testSecretJWTSecret))
		if header.Algorithm != string(jose.HS256) {
			t.Errorf("request %d: alg = %q; want HS256", i+1, header.Algorithm)
		}
		if claims.Issuer != "client-1" || claims.Subject != "client-1" || len(claims.Audience) != 1 || claims.Audience[0] != te.URL() {
			t.Errorf("request %d: iss, sub, aud = %q, %q, %q; want client-1, client-1, [%q]", i+1, claims.Issuer, claims.Subject, claims.Audience, te.URL())
		}
		checkAssertionTimes(t, claims)
		if claims.ID == "" || jtis[claims.ID] {
			t.Errorf("request %d: jti = %q; want one no other request carried", i+1, claims.ID)
		}
		jtis[claims.ID] = true
	}
}

// TestNewSecretSignerRefusesShortSecrets: RFC 7518 section 3.2 wants an
// HS256 key of at least 256 bits; a shorter client secret is refused,
// and the message never quotes it.
func TestNewSecretSignerRefusesShortSecrets(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		secret string
		ok     bool
	}{
		{name: "31 bytes", secret: strings.Repeat("s", MinSecretJWTBytes-1)},
		{name: "empty"},
		{name: "32 bytes", secret: strings.Repeat("s", MinSecretJWTBytes), ok: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := NewSecretSigner(tt.secret)
			if tt.ok != (err == nil) {
				t.Fatalf("NewSecretSigner(%d bytes) = %v; want ok %t", len(tt.secret), err, tt.ok)
			}
			if err != nil && (!strings.Contains(err.Error(), "shorter than 32 bytes") || (tt.secret != "" && strings.Contains(err.Error(), tt.secret))) {
				t.Errorf("NewSecretSigner(%d bytes) = %q; want the size rule, without the secret", len(tt.secret), err)
			}
		})
	}
}

// TestCertificateSignerThumbprints: a signing key with its certificate
// names it in every assertion: x5t#S256 (the base64url SHA-256 of the
// DER, RFC 7515 section 4.1.8) by default, x5t (SHA-1, section 4.1.7) or
// both when asked, beside the kid; the signature still verifies with the
// certificate's key. A certificate of another key, or an unknown header,
// is refused.
func TestCertificateSignerThumbprints(t *testing.T) {
	t.Parallel()
	tlsCert := selfSignedCert(t, testRSAKey(), "entra-app")
	cert, err := x509.ParseCertificate(tlsCert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	sum256, sum1 := sha256.Sum256(cert.Raw), sha1.Sum(cert.Raw)
	s256, s1 := base64.RawURLEncoding.EncodeToString(sum256[:]), base64.RawURLEncoding.EncodeToString(sum1[:])
	tests := []struct {
		name       string
		thumbprint string
		want       map[string]string // header -> value; "" for absent
	}{
		{name: "default", want: map[string]string{"x5t#S256": s256, "x5t": ""}},
		{name: "x5t#S256", thumbprint: ThumbprintSHA256, want: map[string]string{"x5t#S256": s256, "x5t": ""}},
		{name: "x5t", thumbprint: ThumbprintSHA1, want: map[string]string{"x5t#S256": "", "x5t": s1}},
		{name: "both", thumbprint: ThumbprintBoth, want: map[string]string{"x5t#S256": s256, "x5t": s1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			signer, err := NewCertificateSigner(testRSAKey(), AlgPS256, "kid-1", cert, tt.thumbprint)
			if err != nil {
				t.Fatalf("NewCertificateSigner(%q) = %v", tt.thumbprint, err)
			}
			claims, err := assertionClaims("client-1", "client-1", "https://login.example.com/token", tokenClientTestNow)
			if err != nil {
				t.Fatal(err)
			}
			compact, err := signer.sign(claims, nil)
			if err != nil {
				t.Fatal(err)
			}
			header, _, _ := verifiedAssertion(t, compact, AlgPS256, cert.PublicKey)
			if header.KeyID != "kid-1" {
				t.Errorf("kid = %q; want kid-1", header.KeyID)
			}
			for name, want := range tt.want {
				got, _ := header.ExtraHeaders[jose.HeaderKey(name)].(string)
				if got != want {
					t.Errorf("header %s = %q; want %q", name, got, want)
				}
			}
		})
	}
	t.Run("certificate of another key", func(t *testing.T) {
		t.Parallel()
		_, err := NewCertificateSigner(testECKey(), "", "", cert, "")
		if err == nil || !strings.Contains(err.Error(), `the certificate (subject "CN=entra-app") does not hold the signing key's public key`) {
			t.Errorf("NewCertificateSigner(another key) = %v; want a refusal naming the certificate", err)
		}
	})
	t.Run("unknown header", func(t *testing.T) {
		t.Parallel()
		_, err := NewCertificateSigner(testRSAKey(), "", "", cert, "x5c")
		if err == nil || !strings.Contains(err.Error(), "must be x5t#S256, x5t or both") {
			t.Errorf("NewCertificateSigner(x5c) = %v; want the allowed values", err)
		}
	})
}
