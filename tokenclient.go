package oauth2upstream

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"

	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
)

// maxTokenResponse caps how much of a token response is read; x/oauth2
// applies the same limit (1 MiB) to what it parses.
const maxTokenResponse = 1 << 20

var errTokenResponseTooLarge = fmt.Errorf("token response is larger than %d bytes", maxTokenResponse)

// tokenClient performs grants at the token endpoint with x/oauth2 and keeps
// the provider's whole response, which x/oauth2 exposes only field by field.
type tokenClient struct {
	tokenURL     string
	clientID     string
	clientSecret string
	authStyle    oauth2.AuthStyle // never AuthStyleAutoDetect: it resends a failed grant
	grantType    string
	scopes       []string
	params       url.Values
	timeout      time.Duration
	transport    http.RoundTripper
	now          func() time.Time
}

// grantResult is a successful token response: verbatim, and its expiry by
// our clock (zero when the response has no expires_in).
type grantResult struct {
	token  keystore.Token
	expiry time.Time
}

// grant asks the token endpoint for a new token, spending refreshToken for
// the refresh_token grant. Errors are *RefreshError, classified temporary or
// permanent, with no token value in their message.
func (c *tokenClient) grant(ctx context.Context, keySet, refreshToken string) (grantResult, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()

	capture := &capturingTransport{base: c.transport, params: c.extraParams()}
	httpClient := &http.Client{
		Transport: capture,
		// A redirected token request would carry the client secret and the
		// refresh token to another address; refuse instead.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	ctx = context.WithValue(ctx, oauth2.HTTPClient, httpClient)
	requested := c.now()

	var err error
	switch c.grantType {
	case grantClientCredentials:
		cc := clientcredentials.Config{
			ClientID: c.clientID, ClientSecret: c.clientSecret, TokenURL: c.tokenURL,
			Scopes: c.scopes, EndpointParams: c.params, AuthStyle: c.authStyle,
		}
		_, err = cc.Token(ctx)
	default:
		if refreshToken == "" {
			return grantResult{}, &RefreshError{KeySet: keySet, Code: codeNoKeySet,
				Description: "the key set has no refresh_token; seed one with the refresh_token option or the keystore"}
		}
		cfg := oauth2.Config{
			ClientID: c.clientID, ClientSecret: c.clientSecret, Scopes: c.scopes,
			Endpoint: oauth2.Endpoint{TokenURL: c.tokenURL, AuthStyle: c.authStyle},
		}
		// An expired token with only a refresh token makes x/oauth2 refresh.
		_, err = cfg.TokenSource(ctx, &oauth2.Token{RefreshToken: refreshToken}).Token()
	}
	if err != nil {
		if res, ok := salvage(capture, requested); ok {
			// x/oauth2 refused a 200 that holds an access token (it wants
			// expires_in to be a whole number). The provider has already
			// spent the old refresh token: throwing this away would lose
			// the credential.
			return res, nil
		}
		return grantResult{}, c.classify(keySet, err, refreshToken)
	}
	token, err := parseTokenResponse(capture.header, capture.body)
	if err != nil {
		return grantResult{}, &RefreshError{KeySet: keySet, Code: codeInvalidTokenResponse,
			Description: err.Error(), Temporary: true, Err: err}
	}
	if token.AccessToken() == "" {
		return grantResult{}, &RefreshError{KeySet: keySet, Code: codeInvalidTokenResponse,
			Description: "token response has no access_token", Temporary: true}
	}
	return grantResult{token: token, expiry: expiryOf(token, requested)}, nil
}

// salvage keeps a successful token response that x/oauth2 rejected.
func salvage(capture *capturingTransport, requested time.Time) (grantResult, bool) {
	if capture.status < 200 || capture.status > 299 {
		return grantResult{}, false
	}
	token, err := parseTokenResponse(capture.header, capture.body)
	if err != nil || token.AccessToken() == "" {
		return grantResult{}, false
	}
	return grantResult{token: token, expiry: expiryOf(token, requested)}, true
}

// extraParams are form fields added to every token request: the configured
// params, and the scopes for a refresh (x/oauth2 sends none then, but
// RFC 6749 section 6 allows them and Microsoft's v2 endpoint needs them).
func (c *tokenClient) extraParams() url.Values {
	if c.grantType == grantClientCredentials || len(c.scopes) == 0 {
		return c.params // clientcredentials sends both itself
	}
	p := url.Values{"scope": {strings.Join(c.scopes, " ")}}
	for k, v := range c.params {
		p[k] = v
	}
	return p
}

// classify turns a failed grant into a RefreshError: 5xx, 429, network
// errors and timeouts are temporary; OAuth errors (invalid_grant,
// invalid_client, ...) and other 4xx answers are permanent.
func (c *tokenClient) classify(keySet string, err error, refreshToken string) *RefreshError {
	re := &RefreshError{KeySet: keySet, Err: err}
	var rerr *oauth2.RetrieveError
	if errors.As(err, &rerr) {
		status := 0
		if rerr.Response != nil {
			status = rerr.Response.StatusCode
			re.RetryAfter = parseRetryAfter(rerr.Response.Header.Get("Retry-After"))
		}
		re.Code = rerr.ErrorCode
		re.Description = fmt.Sprintf("token endpoint answered %d", status)
		if rerr.ErrorDescription != "" {
			re.Description += ": " + redact(rerr.ErrorDescription, refreshToken, c.clientSecret)
		}
		re.Temporary = status >= 500 || status == http.StatusTooManyRequests
		if re.Code == "" {
			re.Code = codeTokenEndpointError
			if re.Temporary {
				re.Code = codeTokenEndpointUnavailable
			}
		}
		return re
	}
	var netErr net.Error
	re.Temporary = true
	re.Code = codeTokenEndpointUnavailable
	switch {
	case errors.Is(err, errTokenResponseTooLarge):
		re.Code, re.Description = codeInvalidTokenResponse, errTokenResponseTooLarge.Error()
	case errors.Is(err, context.DeadlineExceeded):
		re.Description = fmt.Sprintf("token endpoint did not answer within %s", c.timeout)
	case errors.As(err, &netErr):
		re.Description = "token endpoint unreachable: " + redact(netErr.Error(), refreshToken, c.clientSecret)
	default:
		// x/oauth2's own errors (a 200 without access_token, a body that
		// does not parse) quote no values.
		re.Code = codeInvalidTokenResponse
		re.Description = redact(err.Error(), refreshToken, c.clientSecret)
	}
	return re
}

// redact removes secrets that a provider might echo in an error description.
func redact(s string, secrets ...string) string {
	for _, secret := range secrets {
		if secret != "" {
			s = strings.ReplaceAll(s, secret, "[redacted]")
		}
	}
	const maxLen = 300
	if len(s) > maxLen {
		s = s[:maxLen] + "..."
	}
	return s
}

// parseRetryAfter reads a Retry-After header given in seconds (RFC 9110
// section 10.2.3); the HTTP-date form is rare from token endpoints.
func parseRetryAfter(v string) time.Duration {
	secs, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil || secs < 0 {
		return 0
	}
	return time.Duration(secs) * time.Second
}

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

// expiryOf computes the expiry from expires_in (a number or, as some
// providers send it, a string), counted from when the request was sent.
func expiryOf(token keystore.Token, requested time.Time) time.Time {
	secs, err := strconv.ParseFloat(token.String(keystore.FieldExpiresIn), 64)
	if err != nil || !(secs > 0 && secs <= maxExpiresIn) {
		return time.Time{}
	}
	return requested.Add(time.Duration(secs * float64(time.Second)))
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
