package authserver

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

func newECKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

// postToken sends form to the token endpoint and returns the status and
// the error code, if any.
func postToken(t *testing.T, s *Server, form url.Values) (int, string) {
	t.Helper()
	resp, err := http.PostForm(s.TokenURL(), form)
	if err != nil {
		t.Fatalf("POST %s: %v", s.TokenURL(), err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var answer struct {
		Error string `json:"error"`
	}
	json.Unmarshal(body, &answer)
	return resp.StatusCode, answer.Error
}

// The token endpoint authenticates a private_key_jwt client by its client
// assertion (RFC 7523 section 2.2): signed with the registered key, for
// the token URL, once. A replayed assertion is refused with jti_known, one
// signed with another key or for another audience with invalid_client.
func TestPrivateKeyJWTClient(t *testing.T) {
	t.Parallel()
	key := newECKey(t)
	client := Client{ID: "jwt-client", AuthMethod: AuthMethodPrivateKeyJWT, Key: key}
	s := newServer(t, Config{Clients: []Client{client}})
	grant := func(c Client, tokenURL string) url.Values {
		form, err := clientAssertion(c, tokenURL)
		if err != nil {
			t.Fatal(err)
		}
		form.Set("grant_type", GrantClientCredentials)
		return form
	}

	first := grant(client, s.TokenURL())
	if status, code := postToken(t, s, first); status != http.StatusOK {
		t.Fatalf("client_credentials with a valid client assertion = %d %s; want 200", status, code)
	}
	for _, tt := range []struct {
		name     string
		form     url.Values
		wantCode string
	}{
		{"replayed assertion", first, "jti_known"},
		{"another key", grant(Client{ID: client.ID, Key: newECKey(t)}, s.TokenURL()), "invalid_client"},
		{"another audience", grant(client, "https://elsewhere.example/token"), "invalid_client"},
	} {
		if status, code := postToken(t, s, tt.form); status == http.StatusOK || code != tt.wantCode {
			t.Errorf("%s: token endpoint = %d %q; want %s", tt.name, status, code, tt.wantCode)
		}
	}
	if _, err := New(Config{Clients: []Client{{ID: "no-key", AuthMethod: AuthMethodPrivateKeyJWT}}}); err == nil {
		t.Error("New() with a private_key_jwt client without a key = nil; want an error")
	}
}

// The token endpoint grants a jwt-bearer assertion (RFC 7523 section 2.1)
// of a trusted issuer for its subject, once; another subject, or the same
// assertion again, is invalid_grant.
func TestJWTBearerGrant(t *testing.T) {
	t.Parallel()
	key := newECKey(t)
	s := newServer(t, Config{JWTIssuers: []JWTIssuer{{Issuer: "iss-1", Subject: "user-1", Key: key.Public(), KeyID: "k1", Scopes: []string{"api"}}}})
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key}, nil)
	if err != nil {
		t.Fatal(err)
	}
	assertion := func(sub, jti string) url.Values {
		a, err := jwt.Signed(signer).Claims(jwt.Claims{Issuer: "iss-1", Subject: sub, Audience: jwt.Audience{s.TokenURL()},
			ID: jti, IssuedAt: jwt.NewNumericDate(time.Now()), Expiry: jwt.NewNumericDate(time.Now().Add(time.Minute))}).Serialize()
		if err != nil {
			t.Fatal(err)
		}
		return url.Values{"grant_type": {GrantJWTBearer}, "assertion": {a}, "scope": {"api"},
			"client_id": {DefaultClientID}, "client_secret": {DefaultClientSecret}}
	}
	// The default client is registered for client_secret_basic.
	basic := func(form url.Values) (int, string) {
		form.Del("client_id")
		form.Del("client_secret")
		req, _ := http.NewRequest(http.MethodPost, s.TokenURL(), strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.SetBasicAuth(DefaultClientID, DefaultClientSecret)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var answer struct {
			Error string `json:"error"`
		}
		json.NewDecoder(resp.Body).Decode(&answer)
		return resp.StatusCode, answer.Error
	}
	first := assertion("user-1", "jti-1")
	if status, code := basic(first); status != http.StatusOK {
		t.Fatalf("jwt-bearer grant = %d %s; want 200", status, code)
	}
	if ok, _ := s.GrantCounts(GrantJWTBearer); ok != 1 {
		t.Errorf("GrantCounts(jwt-bearer) = %d; want 1", ok)
	}
	for name, form := range map[string]url.Values{"replayed": assertion("user-1", "jti-1"), "other subject": assertion("user-2", "jti-2")} {
		if status, _ := basic(form); status == http.StatusOK {
			t.Errorf("%s assertion: token endpoint = %d; want a refusal", name, status)
		}
	}
}
