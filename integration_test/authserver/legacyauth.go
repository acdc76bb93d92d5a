package authserver

import (
	"context"
	"net/http"
	"net/url"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/ory/fosite"
	"github.com/ory/fosite/storage"
)

// AuthMethodSecretJWT is client_secret_jwt (OpenID Connect Core section
// 9): a client assertion signed HS256 with the client's secret. fosite
// has none: its DefaultClientAuthenticationStrategy answers an HS256
// assertion "This authorization server does not support client
// authentication method 'client_secret_jwt'" (client_authentication.go),
// so this server verifies such assertions itself, with go-jose
// (authenticateClient), and leaves every other request to fosite.
const AuthMethodSecretJWT = "client_secret_jwt"

// GrantPassword is the grant_type of the resource owner password
// credentials grant (RFC 6749 section 4.3), served by fosite's own
// ResourceOwnerPasswordCredentialsGrantHandler for Config.Users.
const GrantPassword = "password"

// assertionLeeway is the clock skew allowed on a client assertion's exp.
const assertionLeeway = 5 * time.Second

// registerUsers lets users (username: password) obtain tokens with the
// password grant, before the server serves. fosite's MemoryStore compares
// the password in clear.
func registerUsers(store *tokenStore, users map[string]string) {
	for name, password := range users {
		store.Users[name] = storage.MemoryUserRelation{Username: name, Password: password}
	}
}

// authenticateClient is the server's fosite.ClientAuthenticationStrategy:
// a client_secret_jwt assertion is verified here, anything else by
// fosite's default strategy.
func (s *Server) authenticateClient(ctx context.Context, r *http.Request, form url.Values) (fosite.Client, error) {
	tok, err := jwt.ParseSigned(form.Get("client_assertion"), []jose.SignatureAlgorithm{jose.HS256})
	if form.Get("client_assertion_type") != clientAssertionType || err != nil {
		return s.provider.(*fosite.Fosite).DefaultClientAuthenticationStrategy(ctx, r, form)
	}
	var unverified jwt.Claims
	if err := tok.UnsafeClaimsWithoutVerification(&unverified); err != nil {
		return nil, fosite.ErrInvalidClient.WithHint("The client_assertion claims do not parse.")
	}
	clientID := form.Get("client_id")
	if clientID == "" {
		clientID = unverified.Subject
	}
	registered, ok := s.clients[clientID]
	if !ok || registered.AuthMethod != AuthMethodSecretJWT {
		return nil, fosite.ErrInvalidClient.WithHintf("The client does not authenticate with %s.", AuthMethodSecretJWT)
	}
	if err := s.checkSecretAssertion(ctx, tok, registered); err != nil {
		return nil, err
	}
	return s.store.GetClient(ctx, clientID)
}

// checkSecretAssertion verifies an HS256 client assertion as fosite does
// a private_key_jwt one: the signature with the client's secret, iss =
// sub = client_id, aud the token endpoint, an exp, and a jti not seen
// before (RFC 7523 section 3), which is then remembered until exp.
func (s *Server) checkSecretAssertion(ctx context.Context, tok *jwt.JSONWebToken, c Client) error {
	var claims jwt.Claims
	if err := tok.Claims([]byte(c.Secret), &claims); err != nil {
		return fosite.ErrInvalidClient.WithHint("The client_assertion signature does not verify with the client secret.")
	}
	audiences := s.provider.(*fosite.Fosite).Config.GetTokenURLs(ctx) // fosite's own check reads them so
	expected := jwt.Expected{Issuer: c.ID, Subject: c.ID, AnyAudience: jwt.Audience(audiences), Time: time.Now()}
	if err := claims.ValidateWithLeeway(expected, assertionLeeway); err != nil || claims.Expiry == nil {
		return fosite.ErrInvalidClient.WithHintf("The client_assertion claims are not valid (exp required): %v.", err)
	}
	if claims.ID == "" {
		return fosite.ErrInvalidClient.WithHint("Claim 'jti' from 'client_assertion' must be set but is not.")
	}
	if err := s.store.ClientAssertionJWTValid(ctx, claims.ID); err != nil {
		return fosite.ErrJTIKnown.WithHint("Claim 'jti' from 'client_assertion' MUST only be used once.")
	}
	return s.store.SetClientAssertionJWT(ctx, claims.ID, claims.Expiry.Time())
}
