package authserver

import (
	"net/http"
	"net/url"
	"testing"
)

// testSecretJWT is a client_secret_jwt client's secret: 32 bytes or more,
// as HS256 needs.
const testSecretJWT = "secret-jwt-client-secret-of-32-bytes-or-more"

// The token endpoint authenticates a client_secret_jwt client by an HS256
// assertion over its secret (verified with go-jose, since fosite has no
// client_secret_jwt): for the token URL, once. A replayed assertion is
// refused with jti_known; one signed with another secret, for another
// audience, or from a client registered for another method, with
// invalid_client; the client's secret sent in clear, too.
func TestClientSecretJWTClient(t *testing.T) {
	t.Parallel()
	client := Client{ID: "hs-client", Secret: testSecretJWT, AuthMethod: AuthMethodSecretJWT}
	s := newServer(t, Config{Clients: []Client{client, {ID: "basic-client", Secret: testSecretJWT}}})
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
		t.Fatalf("client_credentials with a valid client_secret_jwt assertion = %d %s; want 200", status, code)
	}
	other := client
	other.Secret = "another-secret-that-is-also-32-bytes-long"
	basic := client
	basic.ID = "basic-client"
	tests := []struct {
		name     string
		form     url.Values
		wantCode string
	}{
		{"replayed assertion", first, "jti_known"},
		{"another secret", grant(other, s.TokenURL()), "invalid_client"},
		{"another audience", grant(client, "https://elsewhere.example/token"), "invalid_client"},
		{"client of client_secret_basic", grant(basic, s.TokenURL()), "invalid_client"},
		{"secret in clear", url.Values{"grant_type": {GrantClientCredentials}, "client_id": {client.ID}, "client_secret": {client.Secret}}, "invalid_client"},
	}
	for _, tt := range tests {
		if status, code := postToken(t, s, tt.form); status == http.StatusOK || code != tt.wantCode {
			t.Errorf("%s: token endpoint = %d %q; want %s", tt.name, status, code, tt.wantCode)
		}
	}
}

// The password grant (RFC 6749 section 4.3) runs through fosite's own
// handler: a registered user's password gives an access token and a
// refresh token, which the refresh_token grant then spends (rotating it);
// a wrong password is invalid_grant.
func TestPasswordGrant(t *testing.T) {
	t.Parallel()
	s := newServer(t, Config{Users: map[string]string{"owner": "owner-password"}})
	conf := defaultConfig(s)
	ctx := clientContext(t)
	tok, err := conf.PasswordCredentialsToken(ctx, "owner", "owner-password")
	if err != nil || tok.AccessToken == "" || tok.RefreshToken == "" {
		t.Fatalf("PasswordCredentialsToken(owner) = %v; want an access token and a refresh token", err)
	}
	if !introspect(t, ctx, s, tok.AccessToken) {
		t.Error("the password grant's access token is not active")
	}
	next := mustRefresh(t, ctx, conf, tok.RefreshToken)
	if next.RefreshToken == "" || next.RefreshToken == tok.RefreshToken {
		t.Errorf("refresh of the password grant's refresh token rotated it: %t; want a new one", next.RefreshToken != tok.RefreshToken)
	}
	if _, err := conf.PasswordCredentialsToken(ctx, "owner", "wrong"); errorCode(err) != "invalid_grant" {
		t.Errorf("PasswordCredentialsToken(wrong password) = %v; want invalid_grant", err)
	}
	if ok, attempts := s.GrantCounts(GrantPassword); ok != 1 || attempts != 2 {
		t.Errorf("GrantCounts(password) = %d of %d; want 1 of 2", ok, attempts)
	}
}
