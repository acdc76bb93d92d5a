package credential

import (
	"context"
	"errors"

	"go.uber.org/zap"
	"golang.org/x/oauth2"

	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
)

// RedeemCode redeems an authorization code (RFC 6749 section 4.1.3) at the
// engine's token endpoint, with the PKCE code verifier of the authorization
// request (RFC 7636 section 4.5) and the redirect URI it named, and stores
// the response as the next generation of key set name: a person connected
// the account in a browser. The client authenticates as it does for
// refreshes. The key set is stored as Put stores one (under the keystore's
// lock, bound to the engine's client, fenced by its generation) and taken
// into use at once; a key set bound to another client is refused before the
// code is spent. Only engines of the refresh_token grant redeem codes:
// the others make their tokens from the client's own credentials. Errors
// are *Error, as a refresh's are, and hold neither the code nor the
// verifier. callback holds the values of the redirect back to keep with
// the key set (keystore.KeySet.Callback): they replace the old
// connection's.
func (e *Engine) RedeemCode(ctx context.Context, name, code, verifier, redirectURI string, callback map[string]string) (*keystore.KeySet, error) {
	if err := keystore.ValidateName(name); err != nil {
		return nil, err
	}
	if e.client.Grant != GrantRefreshToken {
		return nil, &Error{KeySet: name, Code: CodeUnsupportedGrant,
			Description: "the handler's grant is " + e.client.Grant + ", which needs no authorization code"}
	}
	if code == "" || verifier == "" || redirectURI == "" {
		return nil, errors.New("an authorization code exchange needs the code, the PKCE verifier and the redirect URI")
	}
	return e.storeNext(ctx, name, func(current *keystore.KeySet) (grantResult, error) {
		start := e.now()
		e.logger.Info("exchanging an authorization code", zap.String("key_set", name),
			zap.Int64("replaces_generation", current.Generation), zap.String("cause", causeConnected))
		// With DPoP the redemption is proved with the key set's key (made now
		// for a new one), so that its tokens are bound as a refresh's are.
		res, err := e.client.redeemCode(e.client.proving(ctx, current), name, code, verifier, redirectURI)
		e.observer.GrantDone(name, err, e.now().Sub(start))
		if err != nil {
			e.logRefreshFailure(name, current.Generation, start, err)
		}
		res.callback = callback
		if res.callback == nil {
			res.callback = map[string]string{} // a new connection keeps none of the old one's
		}
		return res, err
	})
}

// causeConnected is the cause logged with a code exchange: a person
// connected the account.
const causeConnected = "connected"

// redeemCode makes the authorization_code grant, through the same request
// path as grant (request), with the code and the verifier redacted from
// its errors.
func (c *tokenClient) redeemCode(ctx context.Context, keySet, code, verifier, redirectURI string) (grantResult, error) {
	style, clientID, clientSecret := c.oauth2Client()
	cfg := oauth2.Config{
		ClientID: clientID, ClientSecret: clientSecret, RedirectURL: redirectURI,
		Endpoint: oauth2.Endpoint{TokenURL: c.URL, AuthStyle: style},
	}
	return c.request(ctx, keySet, c.Params, []string{code, verifier}, func(ctx context.Context) error {
		_, err := cfg.Exchange(ctx, code, oauth2.VerifierOption(verifier))
		return err
	})
}
