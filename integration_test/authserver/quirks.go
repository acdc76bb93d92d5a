package authserver

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/ory/fosite"
)

// Quirks are departures from a plain RFC 6749 token endpoint that some
// providers make. Profile embeds them; the zero value has none.
type Quirks struct {
	// RefreshGracePeriod keeps a refresh token that rotation replaced
	// usable for this long after it was first spent: a grant with it
	// within the period succeeds and issues another new pair, leaving the
	// family's other refresh tokens valid; a grant after the period is a
	// reuse, and revokes the whole token family. Okta documents 0 to 60
	// seconds, 30 by default, and a reuse past it revoking the family
	// (https://developer.okta.com/docs/guides/refresh-tokens/main/); Xero
	// keeps the previous token for 30 minutes
	// (https://community.xero.com/developer/discussion/105714701/); Ory
	// Hydra calls it graceful refresh
	// (https://www.ory.sh/docs/hydra/guides/graceful-token-refresh).
	// It has no effect with OmitRefreshToken, which turns rotation off.
	// Default: 0, the replaced token is dead at once and presenting it
	// again revokes the family (RFC 6819 section 5.2.2.3).
	RefreshGracePeriod time.Duration

	// RequireScopeOnRefresh refuses a refresh_token grant whose form has no
	// scope, with 400 invalid_request (RFC 6749 section 5.2: a required
	// parameter is missing), before the refresh token is looked at: it
	// stays unspent. Microsoft Advertising lists scope as required when a
	// refresh token is redeemed at Microsoft's v2.0 token endpoint
	// (https://learn.microsoft.com/en-us/advertising/guides/authentication-oauth-get-tokens),
	// and Microsoft Entra answers such a refresh without scope with 400
	// invalid_request (AADSTS90009,
	// https://github.com/AzureAD/microsoft-authentication-library-for-js/issues/5198).
	// Default: false, a refresh without scope keeps the granted scopes
	// (RFC 6749 section 6).
	RequireScopeOnRefresh bool

	// TokenPath is the absolute path the token endpoint answers at instead
	// of /token, for a provider whose token URL names a tenant, a realm or
	// an authorization server (Microsoft's /{tenant}/oauth2/v2.0/token,
	// Keycloak's /realms/{realm}/protocol/openid-connect/token): a POST to
	// any other path, /token and another tenant's included, gets 404.
	// TokenURL follows it. Client assertions (private_key_jwt,
	// client_secret_jwt) are still checked against the /token URL as
	// their audience, so a TokenPath suits clients with a secret. Default:
	// "", the token endpoint is /token.
	TokenPath string
}

// defaultTokenPath is where the token endpoint answers without a TokenPath.
const defaultTokenPath = "/token"

func (q Quirks) tokenPath() string {
	if q.TokenPath == "" {
		return defaultTokenPath
	}
	return q.TokenPath
}

// atTokenPath serves next for a POST to the current profile's token path
// and answers 404 for any other POST, before a fault or a grant is
// counted: no provider has a token endpoint there.
func (s *Server) atTokenPath(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != s.currentProfile().tokenPath() {
			http.NotFound(w, r)
			return
		}
		next(w, r)
	}
}

// refuseRequest returns the error a profile's quirks answer a token request
// with, before fosite sees it; nil when they let it through.
func (q Quirks) refuseRequest(grantType string, form url.Values) error {
	if q.RequireScopeOnRefresh && grantType == GrantRefreshToken && strings.TrimSpace(form.Get("scope")) == "" {
		return fosite.ErrInvalidRequest.WithHint("The request body must contain the parameter 'scope' with a refresh_token grant.")
	}
	return nil
}

// gracePeriodKey carries the profile's RefreshGracePeriod to the token
// store, which fosite calls with the request's context.
type gracePeriodKey struct{}

func withGracePeriod(ctx context.Context, period time.Duration) context.Context {
	return context.WithValue(ctx, gracePeriodKey{}, period)
}

func gracePeriod(ctx context.Context) time.Duration {
	period, _ := ctx.Value(gracePeriodKey{}).(time.Duration)
	return period
}
