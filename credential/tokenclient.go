package credential

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
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

// TokenEndpoint is where and how an Engine obtains tokens.
type TokenEndpoint struct {
	// URL is the provider's token endpoint.
	URL string
	// ClientID and ClientSecret authenticate the client; the secret is
	// empty for public clients.
	ClientID     string
	ClientSecret string
	// ClientAuth is how the client authenticates: ClientAuthSecretBasic
	// (the default when empty), ClientAuthSecretPost,
	// ClientAuthPrivateKeyJWT (with Signer), ClientAuthTLS (with a
	// Transport that presents the certificate) or ClientAuthNone. Never
	// auto-detected: a failed grant resent with another method spends a
	// rotating refresh token twice.
	ClientAuth string
	// Signer signs private_key_jwt client assertions and jwt_bearer
	// assertions (clientauth.go).
	Signer *Signer
	// ClientAssertionAudience is the aud of private_key_jwt client
	// assertions. Default: URL.
	ClientAssertionAudience string
	// Assertion holds the claims of the jwt_bearer grant's assertion.
	Assertion AssertionClaims
	// Grant is GrantRefreshToken (the default), GrantClientCredentials,
	// GrantJWTBearer or GrantPassword.
	Grant string
	// Username and Password are the resource owner's, sent by the
	// password grant (password.go); the password is redacted from errors.
	Username, Password string
	// Scopes are sent with every grant.
	Scopes []string
	// Params are extra form fields of every token request; they must not
	// name the assertion fields of RFC 7523.
	Params url.Values
	// Timeout bounds one token request. Default: 10s.
	Timeout time.Duration
	// Transport sends token requests. Default: http.DefaultTransport.
	Transport http.RoundTripper
	// DPoP, when set, proves possession of a key with every token request
	// and binds the tokens to it (RFC 9449, dpop.go).
	DPoP *DPoP
}

// tokenClient performs grants at the token endpoint with x/oauth2 and keeps
// the provider's whole response, which x/oauth2 exposes only field by field.
type tokenClient struct {
	TokenEndpoint
	now func() time.Time
}

// grantResult is a successful token response: verbatim, and its expiry by
// our clock (zero when the response has no expires_in), and its refresh
// token's (zero when the response announces none: refreshExpiryOf).
type grantResult struct {
	token         keystore.Token
	expiry        time.Time
	refreshExpiry time.Time
	proofKey      json.RawMessage // a DPoP key made for this grant, to store (dpop.go)
	// callback: the values a code's redirect back carried, which replace
	// the key set's (keystore.KeySet.Callback); nil keeps them.
	callback map[string]string
}

// resultOf is the grant result of token, a response to a request sent at
// requested.
func resultOf(token keystore.Token, requested time.Time) grantResult {
	return grantResult{token: token, expiry: expiryOf(token, requested), refreshExpiry: refreshExpiryOf(token, requested)}
}

// grant asks the token endpoint for a new token, spending refreshToken for
// the refresh_token grant. Errors are *Error, classified temporary or
// permanent, with no token value in their message.
func (c *tokenClient) grant(ctx context.Context, keySet, refreshToken string) (grantResult, error) {
	if c.Grant == GrantPassword {
		return c.passwordGrant(ctx, keySet, refreshToken)
	}
	style, clientID, clientSecret := c.oauth2Client()
	if SeedlessGrant(c.Grant) {
		cc := clientcredentials.Config{
			ClientID: clientID, ClientSecret: clientSecret, TokenURL: c.URL,
			Scopes: c.Scopes, EndpointParams: c.endpointParams(), AuthStyle: style,
		}
		return c.request(ctx, keySet, c.extraParams(), nil, func(ctx context.Context) error {
			_, err := cc.Token(ctx)
			return err
		})
	}
	if refreshToken == "" {
		return grantResult{}, &Error{KeySet: keySet, Code: CodeNoKeySet,
			Description: "the key set has no refresh_token; seed one with the refresh_token option or the keystore"}
	}
	return c.refreshGrant(ctx, keySet, refreshToken)
}

// refreshGrant spends refreshToken (RFC 6749 section 6).
func (c *tokenClient) refreshGrant(ctx context.Context, keySet, refreshToken string) (grantResult, error) {
	style, clientID, clientSecret := c.oauth2Client()
	cfg := oauth2.Config{
		ClientID: clientID, ClientSecret: clientSecret, Scopes: c.Scopes,
		Endpoint: oauth2.Endpoint{TokenURL: c.URL, AuthStyle: style},
	}
	return c.request(ctx, keySet, c.extraParams(), []string{refreshToken}, func(ctx context.Context) error {
		// An expired token with only a refresh token makes x/oauth2 refresh.
		_, err := cfg.TokenSource(ctx, &oauth2.Token{RefreshToken: refreshToken}).Token()
		return err
	})
}

// request makes one token request: send makes it with x/oauth2 on ctx, whose
// HTTP client signs it (client assertions, DPoP proofs), adds params, keeps
// the provider's whole response, and follows no redirect: a redirected
// token request would carry the client's credentials and the refresh token
// or code to another address. A failure is classified with secrets, and
// what the signer sent, redacted.
func (c *tokenClient) request(ctx context.Context, keySet string, params url.Values, secrets []string, send func(context.Context) error) (grantResult, error) {
	ctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()

	signing := &signingTransport{base: c.Transport, client: c}
	capture := &capturingTransport{base: signing, params: params}
	httpClient := &http.Client{
		Transport:     capture,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	ctx = context.WithValue(ctx, oauth2.HTTPClient, httpClient)
	requested := c.now()
	if err := send(ctx); err != nil {
		if res, ok := salvage(capture, requested); ok {
			// x/oauth2 refused a 200 that holds an access token (it wants
			// expires_in to be a whole number). The provider has already
			// spent the old refresh token (or the code): throwing this
			// away would lose the credential.
			res.proofKey = freshProofKey(ctx)
			return res, c.checkBound(keySet, res.token)
		}
		return grantResult{}, c.classify(keySet, err, append(signing.sent, secrets...)...)
	}
	res, err := captured(ctx, keySet, capture, requested)
	if err != nil {
		return grantResult{}, err
	}
	return res, c.checkBound(keySet, res.token)
}

// checkBound refuses, with DPoP, a token response whose token_type is not
// DPoP. RFC 9449 section 5: a server that binds the access token to the
// proof key answers token_type DPoP; one that answers Bearer (a server
// without DPoP, or a downgrade) issued a bearer token, which whoever reads
// it off the wire or out of a log can use, the very thing DPoP is there to
// stop. Sending it as "Authorization: DPoP <token>" would not bind it.
// Token types are case-insensitive (RFC 6749 section 5.1, RFC 9449
// section 5). The refusal is a temporary *Error, so the key set keeps the
// token in use and grants back off; nothing of the response is kept. A
// refresh token it rotated is lost with it, and the key set then needs a
// person (invalid_grant): better than a bearer token sent upstream.
func (c *tokenClient) checkBound(keySet string, token keystore.Token) error {
	if c.DPoP == nil {
		return nil
	}
	tokenType := token.String(keystore.FieldTokenType)
	if strings.EqualFold(tokenType, dpopTokenType) {
		return nil
	}
	// The provider's text reaches answers and logs: shown only when it
	// looks like a token type and holds none of the response's secrets.
	shown := "none"
	if tokenType != "" {
		shown = "(not shown)"
		if errorCode(tokenType, token.AccessToken(), token.RefreshToken()) == tokenType {
			shown = strconv.Quote(tokenType)
		}
	}
	return &Error{KeySet: keySet, Code: CodeTokenNotDPoP, Temporary: true,
		Description: "the token endpoint answered token_type " + shown + " to a DPoP token request, not DPoP " +
			"(RFC 9449 section 5): the token is not bound to the proof key, so it is neither stored nor sent"}
}

// captured is the grant result of the token response that capture holds,
// requested at requested: it must parse and hold an access token.
func captured(ctx context.Context, keySet string, capture *capturingTransport, requested time.Time) (grantResult, error) {
	token, err := parseTokenResponse(capture.header, capture.body)
	if err != nil {
		return grantResult{}, &Error{KeySet: keySet, Code: CodeInvalidTokenResponse,
			Description: err.Error(), Temporary: true, Err: err}
	}
	if token.AccessToken() == "" {
		return grantResult{}, &Error{KeySet: keySet, Code: CodeInvalidTokenResponse,
			Description: "token response has no access_token", Temporary: true}
	}
	res := resultOf(token, requested)
	res.proofKey = freshProofKey(ctx)
	return res, nil
}

// salvage keeps a successful token response that x/oauth2 rejected. A
// 200 that names an error is no success, whatever else it holds: it is
// classified as the error it names.
func salvage(capture *capturingTransport, requested time.Time) (grantResult, bool) {
	if capture.status < 200 || capture.status > 299 {
		return grantResult{}, false
	}
	token, err := parseTokenResponse(capture.header, capture.body)
	if err != nil || token.AccessToken() == "" || token.String(fieldError) != "" {
		return grantResult{}, false
	}
	return resultOf(token, requested), true
}

// extraParams are form fields added to every token request: the configured
// params, and the scopes for a refresh (x/oauth2 sends none then, but
// RFC 6749 section 6 allows them and Microsoft's v2 endpoint needs them).
// The password grant refreshes with them too (password.go).
func (c *tokenClient) extraParams() url.Values {
	if (c.Grant != GrantRefreshToken && c.Grant != GrantPassword) || len(c.Scopes) == 0 {
		return c.Params // clientcredentials sends both itself
	}
	p := url.Values{"scope": {strings.Join(c.Scopes, " ")}}
	for k, v := range c.Params {
		p[k] = v
	}
	return p
}

// permanentCodes are the token endpoint's error codes that no retry can
// cure (RFC 6749 section 5.2): the refresh token is dead (invalid_grant)
// or the client may not have tokens (invalid_client, unauthorized_client).
// Any other answer may pass: Hydra answers a storage conflict with 400
// invalid_request "Please retry the request", and its refresh token was
// not spent.
//
// Some providers name a dead grant in words of their own, and send it in
// an HTTP 200 body (x/oauth2 turns any body with an "error" into a
// *oauth2.RetrieveError, whatever the status, and classify reads it the
// same way); only the codes their documentation gives for a grant that is
// dead are here:
//   - GitHub: bad_refresh_token, "the refresh token that you specified is
//     invalid or expired ... you must restart the web application flow or
//     device flow", and bad_verification_code, a code (or device_code)
//     that "is incorrect, expired, or doesn't match"
//     (https://docs.github.com/en/apps/creating-github-apps/authenticating-with-a-github-app/generating-a-user-access-token-for-a-github-app#bad-refresh-token);
//   - Slack, whose Web API answers {"ok": false, "error": ...} ("callers
//     should always check the value of the ok params in the response",
//     and its typical answer to a wrong refresh token is {"ok": false,
//     "error": "invalid_refresh_token"},
//     https://api.slack.com/methods/tooling.tokens.rotate):
//     invalid_refresh_token, "the given refresh token is invalid", and
//     token_revoked, a token "for a deleted user or workspace or the app
//     has been removed" (https://docs.slack.dev/reference/methods/oauth.v2.access,
//     "Errors").
var permanentCodes = map[string]bool{
	"invalid_grant": true, "invalid_client": true, "unauthorized_client": true,
	"bad_refresh_token": true, "bad_verification_code": true,
	"invalid_refresh_token": true, "token_revoked": true,
}

// classify turns a failed grant into an *Error. It is permanent only when
// the error code is in permanentCodes and the answer is neither a 5xx nor
// a 429; any other answer (invalid_request, invalid_scope, no code at all,
// a redirect), network errors and timeouts are temporary. secrets (the
// refresh token, the assertions sent) and the client secret are redacted
// from what it quotes.
func (c *tokenClient) classify(keySet string, err error, secrets ...string) *Error {
	secrets = append(secrets, c.ClientSecret)
	re := &Error{KeySet: keySet, Err: err}
	var rerr *oauth2.RetrieveError
	if errors.As(err, &rerr) {
		status := 0
		if rerr.Response != nil {
			status = rerr.Response.StatusCode
			re.RetryAfter = parseRetryAfter(rerr.Response.Header.Get("Retry-After"))
		}
		re.Code = errorCode(rerr.ErrorCode, secrets...)
		re.Description = fmt.Sprintf("token endpoint answered %d", status)
		if status >= 200 && status <= 299 {
			re.Description += " with an error in the body"
		}
		if re.Code == CodeInvalidResponse {
			re.Description += " with an error code that is not passed on (not of RFC 6749's form, too long, or holding a secret)"
		}
		if rerr.ErrorDescription != "" {
			re.Description += ": " + redact(rerr.ErrorDescription, secrets...)
		}
		unavailable := status >= 500 || status == http.StatusTooManyRequests
		re.Temporary = unavailable || !permanentCodes[re.Code]
		if re.Code == "" {
			re.Code = CodeTokenEndpointError
			if unavailable {
				re.Code = CodeTokenEndpointUnavailable
			}
		}
		return re
	}
	var netErr net.Error
	re.Temporary = true
	re.Code = CodeTokenEndpointUnavailable
	switch {
	case errors.Is(err, errTokenResponseTooLarge):
		re.Code, re.Description = CodeInvalidTokenResponse, errTokenResponseTooLarge.Error()
	case errors.Is(err, context.DeadlineExceeded):
		re.Description = fmt.Sprintf("token endpoint did not answer within %s", c.Timeout)
	case errors.As(err, &netErr):
		re.Description = "token endpoint unreachable: " + redact(netErr.Error(), secrets...)
	default:
		// x/oauth2's own errors (a 200 without access_token, a body that
		// does not parse) quote no values.
		re.Code = CodeInvalidTokenResponse
		re.Description = redact(err.Error(), secrets...)
	}
	return re
}

// maxErrorCode bounds the length of a provider's error code that is
// passed on; RFC 6749's own codes have at most 25 characters.
const maxErrorCode = 64

// errorCode is the token endpoint's error code as it may be passed on (in
// Error.Code, to problem answers, statuses and logs): "" stays "", and a
// code longer than maxErrorCode, with a character outside RFC 6749 section
// 5.2's set for error (%x20-21 / %x23-5B / %x5D-7E: printable ASCII
// without '"' and '\'), or holding one of secrets, becomes
// CodeInvalidResponse.
func errorCode(code string, secrets ...string) string {
	if len(code) > maxErrorCode {
		return CodeInvalidResponse
	}
	for i := range len(code) {
		if c := code[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' {
			return CodeInvalidResponse
		}
	}
	for _, secret := range secrets {
		if secret != "" && strings.Contains(code, secret) {
			return CodeInvalidResponse
		}
	}
	return code
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
