package credential

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
)

// parseTokenResponse keeps every field of a token response: a JSON object
// (RFC 6749 section 5.1) or, as some providers send, a form-encoded body.
func parseTokenResponse(header http.Header, body []byte) (keystore.Token, error) {
	mediaType, _, _ := mime.ParseMediaType(header.Get("Content-Type"))
	if mediaType == "application/x-www-form-urlencoded" || mediaType == "text/plain" {
		values, err := url.ParseQuery(string(body))
		if err != nil {
			return nil, fmt.Errorf("token response is not form-encoded: %w", err)
		}
		token := make(keystore.Token, len(values))
		for k := range values {
			token.SetString(k, values.Get(k))
		}
		return token, nil
	}
	var token keystore.Token
	if err := json.Unmarshal(body, &token); err != nil {
		// json's message names a character and an offset, no values.
		return nil, fmt.Errorf("token response is not a JSON object: %v", err)
	}
	if token == nil {
		return nil, errors.New("token response is JSON null")
	}
	return token, nil
}

// maxExpiresIn is the longest expires_in taken at its word. Beyond it the
// expiry is as good as unknown (and the arithmetic would overflow), so the
// key set is treated as one without expires_in: refreshed on a trigger.
const maxExpiresIn = 10 * 365 * 24 * 60 * 60

// lifetimeOf is the lifetime that token's expires_in announces (a number
// or, as some providers send it, a string); zero when it has none, or one
// that is not a positive number of seconds up to maxExpiresIn.
func lifetimeOf(token keystore.Token) time.Duration {
	return secondsOf(token, keystore.FieldExpiresIn)
}

// secondsOf is the lifetime that token's field announces, read as
// lifetimeOf reads expires_in.
func secondsOf(token keystore.Token, field string) time.Duration {
	secs, err := strconv.ParseFloat(token.String(field), 64)
	if err != nil || !(secs > 0 && secs <= maxExpiresIn) {
		return 0
	}
	return time.Duration(secs * float64(time.Second))
}

// expiryOf computes the expiry from expires_in, counted from when the
// request was sent; zero (unknown) without a lifetime (lifetimeOf), and for
// one at or below the sending floor (belowSendingFloor).
func expiryOf(token keystore.Token, requested time.Time) time.Time {
	lifetime := lifetimeOf(token)
	if lifetime <= minTokenLife {
		return time.Time{}
	}
	return requested.Add(lifetime)
}

// fieldError is the token response field that names an error (RFC 6749
// section 5.2); some providers send it with HTTP 200 (tokenclient.go,
// permanentCodes).
const fieldError = "error"

// refreshLifetimeFields are the token response fields in which providers
// announce the refresh token's own lifetime, in seconds from the response,
// in the order they are read (the first with a lifetime wins):
//   - refresh_token_expires_in: GitHub Apps, "the number of seconds until
//     refresh_token expires"
//     (https://docs.github.com/en/apps/creating-github-apps/authenticating-with-a-github-app/refreshing-user-access-tokens);
//   - x_refresh_token_expires_in: Intuit (QuickBooks), in its token
//     responses from oauth.platform.intuit.com
//     (https://github.com/intuit/oauth-jsclient#auth-response, and
//     https://developer.intuit.com/app/developer/qbo/docs/develop/authentication-and-authorization/oauth-2.0),
//     a rolling expiry that every refresh extends;
//   - refresh_expires_in: Keycloak, its AccessTokenResponse
//     (https://github.com/keycloak/keycloak/blob/main/core/src/main/java/org/keycloak/representations/AccessTokenResponse.java),
//     the time left of the session's idle and maximum lifespans.
var refreshLifetimeFields = []string{"refresh_token_expires_in", "x_refresh_token_expires_in", "refresh_expires_in"}

// refreshExpiryOf is when token's refresh token expires, as the response
// announces it (refreshLifetimeFields) counted from when the request was
// sent; zero when it announces none, or only lifetimes that are not a
// positive number of seconds up to maxExpiresIn (a 0 says nothing of an
// expiry).
func refreshExpiryOf(token keystore.Token, requested time.Time) time.Time {
	for _, field := range refreshLifetimeFields {
		if lifetime := secondsOf(token, field); lifetime > 0 {
			return requested.Add(lifetime)
		}
	}
	return time.Time{}
}

// belowSendingFloor reports whether token announces a lifetime, but one no
// longer than minTokenLife: taken at its word, the token would be expired
// (unusable) the moment it arrived, and every request would make a grant,
// each spending the refresh token. Its expiry is taken as unknown instead,
// as with a missing expires_in (Salesforce): it is renewed on a trigger
// status, and by the keepalive.
func belowSendingFloor(token keystore.Token) bool {
	lifetime := lifetimeOf(token)
	return lifetime > 0 && lifetime <= minTokenLife
}

// capturingTransport adds the extra form fields to the token request and
// keeps a copy of the response, so the key set can hold all of it. One is
// made per grant, so its fields need no lock.
type capturingTransport struct {
	base   http.RoundTripper
	params url.Values
	status int
	header http.Header
	body   []byte
}

func (t *capturingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if len(t.params) > 0 && req.Body != nil {
		var err error
		if req, err = withFormParams(req, t.params); err != nil {
			return nil, err
		}
	}
	resp, err := t.base.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxTokenResponse+1))
	resp.Body.Close()
	if err != nil {
		return nil, fmt.Errorf("reading token response: %w", err)
	}
	if len(body) > maxTokenResponse {
		return nil, errTokenResponseTooLarge
	}
	t.status, t.header, t.body = resp.StatusCode, resp.Header, body
	resp.Body = io.NopCloser(bytes.NewReader(body))
	return resp, nil
}

// withFormParams returns a copy of the form-encoded token request with params
// added, leaving fields x/oauth2 already set (grant_type, refresh_token)
// alone. A RoundTripper must not modify the request it is given.
func withFormParams(orig *http.Request, params url.Values) (*http.Request, error) {
	raw, err := io.ReadAll(orig.Body)
	orig.Body.Close()
	if err != nil {
		return nil, fmt.Errorf("reading token request: %w", err)
	}
	form, err := url.ParseQuery(string(raw))
	if err != nil {
		return nil, fmt.Errorf("parsing token request: %w", err)
	}
	for k, v := range params {
		if _, set := form[k]; !set {
			form[k] = v
		}
	}
	encoded := form.Encode()
	req := orig.Clone(orig.Context())
	req.Body = io.NopCloser(strings.NewReader(encoded))
	req.ContentLength = int64(len(encoded))
	req.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader(encoded)), nil }
	return req, nil
}
