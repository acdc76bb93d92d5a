package credential

import (
	"context"
	"errors"

	"golang.org/x/oauth2"
)

// codeInvalidGrant is the token endpoint's answer to a grant it will never
// honour (RFC 6749 section 5.2): for a refresh, a dead refresh token.
const codeInvalidGrant = "invalid_grant"

// passwordGrant makes the tokens of the resource owner password
// credentials grant (RFC 6749 section 4.3), kept for legacy APIs: OAuth
// 2.1 drops it, and RFC 9700 section 2.4
// (https://www.rfc-editor.org/rfc/rfc9700#section-2.4) says it MUST NOT
// be used. A key set starts empty, so its first grant sends the username
// and password. A refresh token that a grant issued is kept with the key
// set, and later grants spend it (RFC 6749 section 4.3.3 allows one), so
// the password crosses the network only when no refresh token can serve.
// When the token endpoint calls the refresh token dead (a permanent
// invalid_grant), this same grant makes one password grant in its place,
// and whatever that answers is the grant's result: no grant makes more
// than these two requests, and none makes another of its own accord
// (every grant has a cause, DESIGN.md invariant 10). Any other refresh
// failure is the grant's: a temporary one may pass, and invalid_client or
// unauthorized_client would refuse the password grant as well.
func (c *tokenClient) passwordGrant(ctx context.Context, keySet, refreshToken string) (grantResult, error) {
	if refreshToken != "" {
		res, err := c.refreshGrant(ctx, keySet, refreshToken)
		if !refreshTokenDead(err) {
			return res, err
		}
	}
	return c.ownerPasswordGrant(ctx, keySet)
}

// refreshTokenDead reports whether err is the token endpoint's permanent
// invalid_grant, its word that the refresh token will never serve again.
func refreshTokenDead(err error) bool {
	var re *Error
	return errors.As(err, &re) && !re.Temporary && re.Code == codeInvalidGrant
}

// ownerPasswordGrant sends the resource owner's username and password
// (grant_type=password) with the client's authentication. The password
// is redacted from what an error quotes; so is the username, an account
// name the operator gave as a secret.
func (c *tokenClient) ownerPasswordGrant(ctx context.Context, keySet string) (grantResult, error) {
	if c.Username == "" || c.Password == "" {
		return grantResult{}, &Error{KeySet: keySet, Code: CodeNoKeySet,
			Description: "the password grant needs the resource owner's username and password"}
	}
	style, clientID, clientSecret := c.oauth2Client()
	cfg := oauth2.Config{
		ClientID: clientID, ClientSecret: clientSecret, Scopes: c.Scopes,
		Endpoint: oauth2.Endpoint{TokenURL: c.URL, AuthStyle: style},
	}
	// x/oauth2 sends the scopes itself.
	res, err := c.request(ctx, keySet, c.Params, []string{c.Password}, func(ctx context.Context) error {
		_, err := cfg.PasswordCredentialsToken(ctx, c.Username, c.Password)
		return err
	})
	var re *Error
	if errors.As(err, &re) {
		re.Description = redact(re.Description, c.Username)
	}
	return res, err
}
