package authserver

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"strings"

	"github.com/ory/fosite"
)

// ErrUnknownRefreshToken is returned by Revoke for a token the server never
// issued or has already deleted.
var ErrUnknownRefreshToken = errors.New("authserver: unknown refresh token")

// ErrUnknownAccessToken is returned by RevokeAccessToken for a token the
// server never issued or no longer holds (revoked, or retired by a grant).
var ErrUnknownAccessToken = errors.New("authserver: unknown access token")

// seedSubject is the resource owner on whose behalf Seed "consents".
const seedSubject = "seeded-user"

// Seed mints an initial refresh token for clientID with the given scopes, as
// if a user had once completed the authorization-code flow (RFC 6749 section
// 4.1) in a browser. It runs that flow through fosite in-process, so the
// token is a real one; the exchange is not counted by GrantCounts.
func (s *Server) Seed(ctx context.Context, clientID string, scopes ...string) (refreshToken string, err error) {
	client, ok := s.clients[clientID]
	if !ok {
		return "", fmt.Errorf("authserver: seed: unknown client %q", clientID)
	}
	code, err := s.authorize(ctx, clientID, scopes)
	if err != nil {
		return "", fmt.Errorf("authserver: seed for %q: %w", clientID, err)
	}
	response, err := s.exchangeCode(ctx, client, code)
	if err != nil {
		return "", fmt.Errorf("authserver: seed for %q: %w", clientID, err)
	}
	refreshToken, _ = response.GetExtra("refresh_token").(string)
	if refreshToken == "" {
		return "", fmt.Errorf("authserver: seed for %q: fosite issued no refresh token", clientID)
	}
	s.issued.record(Issued{GrantType: "authorization_code", AccessToken: response.GetAccessToken(), RefreshToken: refreshToken})
	return refreshToken, nil
}

// authorize runs the authorization request and the user's consent, and
// returns the authorization code.
func (s *Server) authorize(ctx context.Context, clientID string, scopes []string) (string, error) {
	state, err := randomString()
	if err != nil {
		return "", err
	}
	query := url.Values{
		"response_type": {"code"},
		"client_id":     {clientID},
		"redirect_uri":  {seedRedirectURI},
		"scope":         {strings.Join(scopes, " ")},
		"state":         {state},
	}
	r, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://127.0.0.1/authorize?"+query.Encode(), nil)
	if err != nil {
		return "", fmt.Errorf("build authorization request: %w", err)
	}
	ar, err := s.provider.NewAuthorizeRequest(ctx, r)
	if err != nil {
		return "", fmt.Errorf("authorization request: %w", fosite.ErrorToRFC6749Error(err).WithExposeDebug(true))
	}
	for _, scope := range scopes {
		ar.GrantScope(scope)
	}
	response, err := s.provider.NewAuthorizeResponse(ctx, ar, newSession(seedSubject))
	if err != nil {
		return "", fmt.Errorf("authorization response: %w", fosite.ErrorToRFC6749Error(err).WithExposeDebug(true))
	}
	return response.GetCode(), nil
}

// exchangeCode redeems an authorization code at fosite's token endpoint
// logic, authenticating the way the client is registered to.
func (s *Server) exchangeCode(ctx context.Context, client Client, code string) (fosite.AccessResponder, error) {
	form := url.Values{
		"grant_type":   {"authorization_code"},
		"code":         {code},
		"redirect_uri": {seedRedirectURI},
	}
	switch client.AuthMethod {
	case AuthMethodPost:
		form.Set("client_id", client.ID)
		form.Set("client_secret", client.Secret)
	case AuthMethodPrivateKeyJWT, AuthMethodSecretJWT:
		auth, err := clientAssertion(client, s.TokenURL())
		if err != nil {
			return nil, fmt.Errorf("client assertion: %w", err)
		}
		maps.Copy(form, auth)
	}
	r, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://127.0.0.1/token", strings.NewReader(form.Encode()))
	if err != nil {
		return nil, fmt.Errorf("build token request: %w", err)
	}
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if client.AuthMethod == AuthMethodBasic {
		r.SetBasicAuth(url.QueryEscape(client.ID), url.QueryEscape(client.Secret))
	}
	_, response, err := s.grant(ctx, r)
	if err != nil {
		return nil, fmt.Errorf("code exchange: %w", fosite.ErrorToRFC6749Error(err).WithExposeDebug(true))
	}
	return response, nil
}

// Revoke revokes refreshToken's whole family: the token itself, the newest
// refresh token of the same grant, and its access token. Presenting any of
// them afterwards fails with invalid_grant (or, for an access token, an
// inactive introspection). It does not count as a reuse detection.
func (s *Server) Revoke(ctx context.Context, refreshToken string) error {
	s.grantMu.Lock()
	defer s.grantMu.Unlock()
	signature := s.strategy.RefreshTokenSignature(ctx, refreshToken)
	// An already inactive (spent or revoked) token still names its family.
	requester, err := s.store.GetRefreshTokenSession(ctx, signature, nil)
	if errors.Is(err, fosite.ErrNotFound) {
		return ErrUnknownRefreshToken
	} else if err != nil && !errors.Is(err, fosite.ErrInactiveToken) {
		return fmt.Errorf("authserver: revoke: look up refresh token: %w", err)
	}
	family := requester.GetID()
	if err := s.store.RevokeRefreshToken(ctx, family); err != nil && !errors.Is(err, fosite.ErrNotFound) {
		return fmt.Errorf("authserver: revoke: refresh tokens: %w", err)
	}
	if err := s.store.MemoryStore.RevokeAccessToken(ctx, family); err != nil && !errors.Is(err, fosite.ErrNotFound) {
		return fmt.Errorf("authserver: revoke: access tokens: %w", err)
	}
	// Deleting the presented token (on the embedded store, so that it is
	// not taken for a reuse detection) makes it unknown from now on.
	if err := s.store.MemoryStore.DeleteRefreshTokenSession(ctx, signature); err != nil {
		return fmt.Errorf("authserver: revoke: delete refresh token: %w", err)
	}
	return nil
}

// RevokeAccessToken revokes one access token, as a provider does when the
// session behind it ends before its expiry (a timeout, an administrator):
// introspection reports it inactive from now on, so the resource server
// answers 401, while the refresh token it came with stays valid.
func (s *Server) RevokeAccessToken(ctx context.Context, accessToken string) error {
	s.grantMu.Lock()
	defer s.grantMu.Unlock()
	signature := s.strategy.AccessTokenSignature(ctx, accessToken)
	if _, err := s.store.GetAccessTokenSession(ctx, signature, nil); errors.Is(err, fosite.ErrNotFound) {
		return ErrUnknownAccessToken
	} else if err != nil {
		return fmt.Errorf("authserver: revoke access token: %w", err)
	}
	if err := s.store.DeleteAccessTokenSession(ctx, signature); err != nil {
		return fmt.Errorf("authserver: revoke access token: %w", err)
	}
	return nil
}

func randomString() (string, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("random state: %w", err)
	}
	return fmt.Sprintf("%x", b), nil
}
