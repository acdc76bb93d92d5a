package credential

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
)

// tokenClientTestNow is the fixed clock of the token client tests.
var tokenClientTestNow = time.Date(2026, 11, 27, 8, 0, 0, 0, time.UTC)

// seenTokenRequest is what a recording token endpoint saw of one request.
type seenTokenRequest struct {
	header http.Header
	form   url.Values
}

// recordingTokenEndpoint answers every token request with answer and keeps
// what each request carried, so tests can count requests and read forms.
type recordingTokenEndpoint struct {
	server *httptest.Server

	mu       sync.Mutex // guards requests
	requests []seenTokenRequest
}

func newRecordingTokenEndpoint(t *testing.T, answer http.HandlerFunc) *recordingTokenEndpoint {
	t.Helper()
	e := &recordingTokenEndpoint{}
	e.server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		form, _ := url.ParseQuery(string(body))
		e.mu.Lock()
		e.requests = append(e.requests, seenTokenRequest{header: r.Header.Clone(), form: form})
		e.mu.Unlock()
		answer(w, r)
	}))
	t.Cleanup(e.server.Close)
	return e
}

func (e *recordingTokenEndpoint) URL() string { return e.server.URL + "/token" }

func (e *recordingTokenEndpoint) seen() []seenTokenRequest {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]seenTokenRequest(nil), e.requests...)
}

// answerWith is a token endpoint answer: status, content type and body.
func answerWith(status int, contentType, body string) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		if contentType != "" {
			w.Header().Set("Content-Type", contentType)
		}
		w.WriteHeader(status)
		io.WriteString(w, body)
	}
}

// answerJSON answers status with a JSON body.
func answerJSON(status int, body string) http.HandlerFunc {
	return answerWith(status, "application/json", body)
}

const okTokenJSON = `{"access_token":"at-1","token_type":"Bearer","expires_in":3600}`

// newTestTokenClient is a refresh_token client with Basic auth and a fixed
// clock; tests change the fields they are about.
func newTestTokenClient(tokenURL string) *tokenClient {
	return &tokenClient{
		TokenEndpoint: TokenEndpoint{
			URL:          tokenURL,
			ClientID:     "client-1",
			ClientSecret: "secret-1",
			ClientAuth:   ClientAuthSecretBasic,
			Grant:        GrantRefreshToken,
			Timeout:      10 * time.Second,
			Transport:    http.DefaultTransport,
		},
		now: func() time.Time { return tokenClientTestNow },
	}
}

// asError returns err as a *Error or fails the test.
func asError(t *testing.T, err error) *Error {
	t.Helper()
	var re *Error
	if !errors.As(err, &re) {
		t.Fatalf("error %v (%T) is not a *Error", err, err)
	}
	return re
}

// TestTokenClientSecretAuth: the configured secret method is used as is
// (Basic header, or client_id/client_secret form fields, never both), and a
// grant the endpoint refuses is sent exactly once: x/oauth2's auto-detection
// would resend it with the other method, spending a rotating refresh token
// twice.
func TestTokenClientSecretAuth(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		clientAuth string
		answer     http.HandlerFunc
		wantError  bool
	}{
		{"basic", ClientAuthSecretBasic, answerJSON(http.StatusOK, okTokenJSON), false},
		{"post", ClientAuthSecretPost, answerJSON(http.StatusOK, okTokenJSON), false},
		{"basic refused once", ClientAuthSecretBasic, answerJSON(http.StatusBadRequest, `{"error":"invalid_client"}`), true},
		{"post refused once", ClientAuthSecretPost, answerJSON(http.StatusBadRequest, `{"error":"invalid_client"}`), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			te := newRecordingTokenEndpoint(t, tt.answer)
			c := newTestTokenClient(te.URL())
			c.ClientAuth = tt.clientAuth
			_, err := c.grant(context.Background(), "sf", "rt-0")
			if (err != nil) != tt.wantError {
				t.Fatalf("grant(%q) = %v; want error %v", "sf", err, tt.wantError)
			}
			seen := te.seen()
			if len(seen) != 1 {
				t.Fatalf("token endpoint got %d requests; want exactly 1", len(seen))
			}
			req := seen[0]
			auth := req.header.Get("Authorization")
			switch tt.clientAuth {
			case ClientAuthSecretBasic:
				r := &http.Request{Header: req.header}
				user, pass, ok := r.BasicAuth()
				if !ok || user != "client-1" || pass != "secret-1" {
					t.Errorf("Basic auth = %q, %q, %v; want client-1, secret-1, true", user, pass, ok)
				}
				for _, field := range []string{"client_id", "client_secret"} {
					if v, ok := req.form[field]; ok {
						t.Errorf("form field %s = %q; want absent with Basic auth", field, v)
					}
				}
			case ClientAuthSecretPost:
				if auth != "" {
					t.Errorf("Authorization = %q; want none with post auth", auth)
				}
				if got := req.form.Get("client_id"); got != "client-1" {
					t.Errorf("form client_id = %q; want client-1", got)
				}
				if got := req.form.Get("client_secret"); got != "secret-1" {
					t.Errorf("form client_secret = %q; want secret-1", got)
				}
			}
		})
	}
}

// TestTokenClientRefreshForm: a refresh sends grant_type=refresh_token, the
// refresh token, the configured scopes (RFC 6749 section 6) and the extra
// params with all their values; params cannot replace grant_type or the
// refresh token.
func TestTokenClientRefreshForm(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		scopes []string
		params url.Values
		want   url.Values
	}{
		{
			name: "bare",
			want: url.Values{"grant_type": {"refresh_token"}, "refresh_token": {"rt-0"}},
		},
		{
			name:   "scopes and params",
			scopes: []string{"api", "refresh_token"},
			params: url.Values{"resource": {"https://graph.example"}, "audience": {"a1", "a2"}},
			want: url.Values{
				"grant_type": {"refresh_token"}, "refresh_token": {"rt-0"}, "scope": {"api refresh_token"},
				"resource": {"https://graph.example"}, "audience": {"a1", "a2"},
			},
		},
		{
			name:   "params cannot override grant fields",
			params: url.Values{"grant_type": {"password"}, "refresh_token": {"rt-evil"}, "resource": {"r"}},
			want:   url.Values{"grant_type": {"refresh_token"}, "refresh_token": {"rt-0"}, "resource": {"r"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			te := newRecordingTokenEndpoint(t, answerJSON(http.StatusOK, okTokenJSON))
			c := newTestTokenClient(te.URL())
			c.Scopes, c.Params = tt.scopes, tt.params
			if _, err := c.grant(context.Background(), "sf", "rt-0"); err != nil {
				t.Fatalf("grant(%q) = %v; want nil", "sf", err)
			}
			seen := te.seen()
			if len(seen) != 1 {
				t.Fatalf("token endpoint got %d requests; want 1", len(seen))
			}
			if got := seen[0].form; !reflect.DeepEqual(got, tt.want) {
				t.Errorf("token request form = %v; want %v", got, tt.want)
			}
		})
	}
}

// TestTokenClientClientCredentialsForm: the client_credentials grant sends
// its grant type, the scopes and the params, and needs no refresh token.
func TestTokenClientClientCredentialsForm(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		scopes []string
		params url.Values
		want   url.Values
	}{
		{
			name: "bare",
			want: url.Values{"grant_type": {"client_credentials"}},
		},
		{
			name:   "scopes and params",
			scopes: []string{"read", "write"},
			params: url.Values{"resource": {"https://api.example"}, "audience": {"a1", "a2"}},
			want: url.Values{
				"grant_type": {"client_credentials"}, "scope": {"read write"},
				"resource": {"https://api.example"}, "audience": {"a1", "a2"},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			te := newRecordingTokenEndpoint(t, answerJSON(http.StatusOK, okTokenJSON))
			c := newTestTokenClient(te.URL())
			c.Grant, c.Scopes, c.Params = GrantClientCredentials, tt.scopes, tt.params
			res, err := c.grant(context.Background(), "cc", "")
			if err != nil {
				t.Fatalf("grant(%q) = %v; want nil", "cc", err)
			}
			if got := res.token.AccessToken(); got != "at-1" {
				t.Errorf("access token = %q; want at-1", got)
			}
			seen := te.seen()
			if len(seen) != 1 {
				t.Fatalf("token endpoint got %d requests; want 1", len(seen))
			}
			if got := seen[0].form; !reflect.DeepEqual(got, tt.want) {
				t.Errorf("token request form = %v; want %v", got, tt.want)
			}
		})
	}
}

// TestTokenClientKeepsWholeResponse: the key set holds the provider's whole
// response verbatim (instance_url, id_token, nested objects, numbers as
// sent); a form-encoded response becomes string fields.
func TestTokenClientKeepsWholeResponse(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		contentType string
		body        string
		want        map[string]string // field: raw JSON
	}{
		{
			name:        "json with extra fields",
			contentType: "application/json; charset=utf-8",
			body: `{"access_token":"at-1","token_type":"Bearer","expires_in":3600,` +
				`"instance_url":"https://eu12.my.salesforce.com","id_token":"h.p.s","scope":"api refresh_token",` +
				`"nested":{"urls": ["a", "b"], "n": 1.50},"big":12345678901234567890}`,
			want: map[string]string{
				"access_token": `"at-1"`, "token_type": `"Bearer"`, "expires_in": `3600`,
				"instance_url": `"https://eu12.my.salesforce.com"`, "id_token": `"h.p.s"`,
				"scope": `"api refresh_token"`, "nested": `{"urls": ["a", "b"], "n": 1.50}`,
				"big": `12345678901234567890`,
			},
		},
		{
			name:        "form encoded",
			contentType: "application/x-www-form-urlencoded; charset=utf-8",
			body:        "access_token=at-2&token_type=bearer&expires_in=3600&instance_url=https%3A%2F%2Fna1.example.com",
			want: map[string]string{
				"access_token": `"at-2"`, "token_type": `"bearer"`, "expires_in": `"3600"`,
				"instance_url": `"https://na1.example.com"`,
			},
		},
		{
			name:        "text/plain form",
			contentType: "text/plain",
			body:        "access_token=at-3&expires_in=60",
			want:        map[string]string{"access_token": `"at-3"`, "expires_in": `"60"`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			te := newRecordingTokenEndpoint(t, answerWith(http.StatusOK, tt.contentType, tt.body))
			res, err := newTestTokenClient(te.URL()).grant(context.Background(), "sf", "rt-0")
			if err != nil {
				t.Fatalf("grant(%q) = %v; want nil", "sf", err)
			}
			got := make(map[string]string, len(res.token))
			for k, v := range res.token {
				got[k] = string(v)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("grant(%q) token = %v; want %v", "sf", got, tt.want)
			}
		})
	}
}

// TestTokenClientExpiry: the expiry is counted from expires_in (a number,
// or a string as some providers send it) by the client's clock; without a
// positive expires_in it is unknown (zero), as with Salesforce.
func TestTokenClientExpiry(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		expiresIn string // raw JSON, "" for none
		want      time.Time
	}{
		{"number", `3600`, tokenClientTestNow.Add(time.Hour)},
		{"string", `"3600"`, tokenClientTestNow.Add(time.Hour)},
		{"missing", ``, time.Time{}},
		{"zero", `0`, time.Time{}},
		{"negative", `-5`, time.Time{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			body := `{"access_token":"at-1"`
			if tt.expiresIn != "" {
				body += `,"expires_in":` + tt.expiresIn
			}
			body += `}`
			te := newRecordingTokenEndpoint(t, answerJSON(http.StatusOK, body))
			res, err := newTestTokenClient(te.URL()).grant(context.Background(), "sf", "rt-0")
			if err != nil {
				t.Fatalf("grant(%q) = %v; want nil", "sf", err)
			}
			if !res.expiry.Equal(tt.want) {
				t.Errorf("grant(%q) expiry = %v; want %v", "sf", res.expiry, tt.want)
			}
		})
	}
}

// TestTokenClientKeepsGrantWithOddExpiresIn: a 200 whose expires_in
// x/oauth2 cannot parse as a whole number still carries the new tokens; by
// then a rotating provider has already spent the old refresh token, so
// refusing the response loses the credential (the next grant gets
// invalid_grant). The token is kept: a fractional expires_in counts as the
// seconds it says, anything else gives an unknown expiry.
func TestTokenClientKeepsGrantWithOddExpiresIn(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		expiresIn string
		want      time.Duration // 0: unknown expiry
	}{{`3600.5`, 3600*time.Second + 500*time.Millisecond}, {`"soon"`, 0}, {`""`, 0}} {
		t.Run(tt.expiresIn, func(t *testing.T) {
			t.Parallel()
			te := newRecordingTokenEndpoint(t, answerJSON(http.StatusOK,
				`{"access_token":"at-9","refresh_token":"rt-9","expires_in":`+tt.expiresIn+`}`))
			c := newTestTokenClient(te.URL())
			res, err := c.grant(context.Background(), "sf", "rt-0")
			if err != nil {
				t.Fatalf("grant(%q) with expires_in %s = %v; want the rotated tokens kept", "sf", tt.expiresIn, err)
			}
			want := time.Time{}
			if tt.want > 0 {
				want = c.now().Add(tt.want)
			}
			if res.token.AccessToken() != "at-9" || res.token.RefreshToken() != "rt-9" || !res.expiry.Equal(want) {
				t.Errorf("grant(%q) = %q, %q, expiry %v; want at-9, rt-9, expiry %v",
					"sf", res.token.AccessToken(), res.token.RefreshToken(), res.expiry, want)
			}
		})
	}
}

// TestTokenClientExpiryOf: expires_in counts from the request time; anything that is
// not a positive number of seconds, or no more than the sending floor,
// gives an unknown (zero) expiry, and
// an absurdly long one must not overflow time.Duration into an expiry in the
// past, which would make every request refresh the token.
func TestTokenClientExpiryOf(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		expiresIn string // raw JSON, "" for none
		want      time.Time
	}{
		{"number", `60`, tokenClientTestNow.Add(time.Minute)},
		{"string", `"60"`, tokenClientTestNow.Add(time.Minute)},
		{"missing", ``, time.Time{}},
		{"null", `null`, time.Time{}},
		{"zero", `0`, time.Time{}},
		{"negative", `-5`, time.Time{}},
		{"not a number", `"soon"`, time.Time{}},
		{"fraction", `59.5`, tokenClientTestNow.Add(59500 * time.Millisecond)},
		{"NaN-like", `"NaN"`, time.Time{}},
		// At or below the sending floor (minTokenLife): as good as expired
		// on arrival, so taken as unknown rather than as a grant per request.
		{"the floor", `1`, time.Time{}},
		{"the floor as a string", `"1"`, time.Time{}},
		{"below the floor", `0.5`, time.Time{}},
		{"above the floor", `1.5`, tokenClientTestNow.Add(1500 * time.Millisecond)},
		{"infinite", `"Inf"`, time.Time{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			token := keystore.Token{}
			if tt.expiresIn != "" {
				token[keystore.FieldExpiresIn] = []byte(tt.expiresIn)
			}
			if got := expiryOf(token, tokenClientTestNow); !got.Equal(tt.want) {
				t.Errorf("expiryOf(expires_in %s) = %v; want %v", tt.expiresIn, got, tt.want)
			}
		})
	}
	for _, huge := range []string{"10000000000", "9223372036854775807"} {
		t.Run("huge "+huge, func(t *testing.T) {
			t.Parallel()
			token := keystore.Token{keystore.FieldExpiresIn: []byte(huge)}
			if got := expiryOf(token, tokenClientTestNow); !got.IsZero() && !got.After(tokenClientTestNow) {
				t.Errorf("expiryOf(expires_in %s) = %v; want after %v (or unknown)", huge, got, tokenClientTestNow)
			}
		})
	}
}

// TestTokenClientClassify: only invalid_grant, invalid_client and
// unauthorized_client on a 4xx are permanent (with the providers' own
// words for a dead grant: TestTokenClientClassifiesErrorsInOKBodies);
// other 4xx answers (Hydra's
// 400 invalid_request "Please retry the request" after a storage conflict,
// which did not spend the refresh token), 5xx and 429 are temporary (with
// Retry-After), and a 200 that holds no usable token is a temporary
// invalid_token_response; the x/oauth2 error stays reachable through
// Error.Unwrap.
func TestTokenClientClassify(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name          string
		answer        http.HandlerFunc
		wantCode      string
		wantTemporary bool
		wantRetry     time.Duration
		wantStatus    int // of the *oauth2.RetrieveError; 0: none expected
	}{
		{
			name:     "400 invalid_grant",
			answer:   answerJSON(http.StatusBadRequest, `{"error":"invalid_grant","error_description":"expired"}`),
			wantCode: "invalid_grant", wantStatus: http.StatusBadRequest,
		},
		{
			name:     "401 invalid_client",
			answer:   answerJSON(http.StatusUnauthorized, `{"error":"invalid_client"}`),
			wantCode: "invalid_client", wantStatus: http.StatusUnauthorized,
		},
		{
			name:     "400 unauthorized_client",
			answer:   answerJSON(http.StatusBadRequest, `{"error":"unauthorized_client"}`),
			wantCode: "unauthorized_client", wantStatus: http.StatusBadRequest,
		},
		{
			name:     "400 invalid_request from a storage conflict",
			answer:   answerJSON(http.StatusBadRequest, `{"error":"invalid_request","error_description":"Please retry the request"}`),
			wantCode: "invalid_request", wantTemporary: true, wantStatus: http.StatusBadRequest,
		},
		{
			name:     "400 invalid_scope",
			answer:   answerJSON(http.StatusBadRequest, `{"error":"invalid_scope"}`),
			wantCode: "invalid_scope", wantTemporary: true, wantStatus: http.StatusBadRequest,
		},
		{
			name:     "403 without OAuth code",
			answer:   answerWith(http.StatusForbidden, "text/html", "<h1>forbidden</h1>"),
			wantCode: CodeTokenEndpointError, wantTemporary: true, wantStatus: http.StatusForbidden,
		},
		{
			name:     "500 with invalid_grant",
			answer:   answerJSON(http.StatusInternalServerError, `{"error":"invalid_grant"}`),
			wantCode: "invalid_grant", wantTemporary: true, wantStatus: http.StatusInternalServerError,
		},
		{
			name:     "500",
			answer:   answerWith(http.StatusInternalServerError, "text/plain", "boom"),
			wantCode: CodeTokenEndpointUnavailable, wantTemporary: true, wantStatus: http.StatusInternalServerError,
		},
		{
			name:     "503",
			answer:   answerWith(http.StatusServiceUnavailable, "text/html", "<h1>down</h1>"),
			wantCode: CodeTokenEndpointUnavailable, wantTemporary: true, wantStatus: http.StatusServiceUnavailable,
		},
		{
			name:     "503 temporarily_unavailable",
			answer:   answerJSON(http.StatusServiceUnavailable, `{"error":"temporarily_unavailable"}`),
			wantCode: "temporarily_unavailable", wantTemporary: true, wantStatus: http.StatusServiceUnavailable,
		},
		{
			name: "429 with Retry-After",
			answer: func(w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Retry-After", "7")
				w.WriteHeader(http.StatusTooManyRequests)
			},
			wantCode: CodeTokenEndpointUnavailable, wantTemporary: true, wantRetry: 7 * time.Second,
			wantStatus: http.StatusTooManyRequests,
		},
		{
			name:     "200 without access_token",
			answer:   answerJSON(http.StatusOK, `{"token_type":"Bearer","expires_in":3600}`),
			wantCode: CodeInvalidTokenResponse, wantTemporary: true,
		},
		{
			name:     "200 not JSON",
			answer:   answerWith(http.StatusOK, "text/html", "<html>login page</html>"),
			wantCode: CodeInvalidTokenResponse, wantTemporary: true,
		},
		{
			name:     "200 JSON null",
			answer:   answerJSON(http.StatusOK, `null`),
			wantCode: CodeInvalidTokenResponse, wantTemporary: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			te := newRecordingTokenEndpoint(t, tt.answer)
			_, err := newTestTokenClient(te.URL()).grant(context.Background(), "sf", "rt-0")
			re := asError(t, err)
			if re.KeySet != "sf" || re.Code != tt.wantCode || re.Temporary != tt.wantTemporary || re.RetryAfter != tt.wantRetry {
				t.Errorf("grant(%q) = {KeySet %q, Code %q, Temporary %v, RetryAfter %v}; want {sf, %q, %v, %v}",
					"sf", re.KeySet, re.Code, re.Temporary, re.RetryAfter, tt.wantCode, tt.wantTemporary, tt.wantRetry)
			}
			var rerr *oauth2.RetrieveError
			if got := errors.As(err, &rerr); got != (tt.wantStatus != 0) {
				t.Fatalf("errors.As(grant(%q), *oauth2.RetrieveError) = %v; want %v", "sf", got, tt.wantStatus != 0)
			}
			if rerr != nil && rerr.Response.StatusCode != tt.wantStatus {
				t.Errorf("RetrieveError status = %d; want %d", rerr.Response.StatusCode, tt.wantStatus)
			}
			if n := len(te.seen()); n != 1 {
				t.Errorf("token endpoint got %d requests; want 1", n)
			}
		})
	}
}

// TestTokenClientErrorCode: a token endpoint's error code is passed on
// only when RFC 6749 section 5.2 allows its characters and it is at most 64
// characters long and holds no secret; any other becomes invalid_response,
// which like every code but invalid_grant, invalid_client and
// unauthorized_client is temporary, and the code itself appears nowhere in
// the error's message.
func TestTokenClientErrorCode(t *testing.T) {
	t.Parallel()
	const refreshToken = "rt-very-secret-0"
	longest := strings.Repeat("x", 64)
	tests := []struct {
		name          string
		status        int
		code          string
		wantCode      string
		wantTemporary bool
	}{
		{"RFC code", http.StatusBadRequest, "invalid_grant", "invalid_grant", false},
		{"extension code of 64 characters", http.StatusBadRequest, longest, longest, true},
		{"space and punctuation are RFC's", http.StatusBadRequest, "bad grant!#[]~", "bad grant!#[]~", true},
		{"65 characters", http.StatusBadRequest, longest + "x", CodeInvalidResponse, true},
		{"very long", http.StatusBadRequest, strings.Repeat("invalid_grant", 1000), CodeInvalidResponse, true},
		{"quote", http.StatusBadRequest, `invalid"grant`, CodeInvalidResponse, true},
		{"backslash", http.StatusBadRequest, `invalid\grant`, CodeInvalidResponse, true},
		{"newline", http.StatusBadRequest, "invalid_grant\nlevel=error msg=forged", CodeInvalidResponse, true},
		{"NUL", http.StatusBadRequest, "invalid\x00grant", CodeInvalidResponse, true},
		{"DEL", http.StatusBadRequest, "invalid\x7fgrant", CodeInvalidResponse, true},
		{"non-ASCII", http.StatusBadRequest, "invalid_gr\u00e4nt", CodeInvalidResponse, true},
		{"echoes the refresh token", http.StatusBadRequest, refreshToken, CodeInvalidResponse, true},
		{"holds the refresh token", http.StatusBadRequest, "revoked:" + refreshToken, CodeInvalidResponse, true},
		{"holds the client secret", http.StatusUnauthorized, "bad_secret-1", CodeInvalidResponse, true},
		{"invalid on a 503 stays temporary", http.StatusServiceUnavailable, "down\tnow", CodeInvalidResponse, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			body, err := json.Marshal(map[string]string{"error": tt.code})
			if err != nil {
				t.Fatal(err)
			}
			te := newRecordingTokenEndpoint(t, answerJSON(tt.status, string(body)))
			_, err = newTestTokenClient(te.URL()).grant(context.Background(), "sf", refreshToken)
			re := asError(t, err)
			if re.Code != tt.wantCode || re.Temporary != tt.wantTemporary {
				t.Errorf("grant(%q) with error %q = {Code %q, Temporary %v}; want {%q, %v}",
					"sf", tt.code, re.Code, re.Temporary, tt.wantCode, tt.wantTemporary)
			}
			msg := err.Error()
			for _, secret := range []string{refreshToken, "secret-1"} {
				if strings.Contains(msg, secret) {
					t.Errorf("grant(%q) error %q contains %q", "sf", msg, secret)
				}
			}
			if tt.wantCode == CodeInvalidResponse && strings.Contains(msg, tt.code) {
				t.Errorf("grant(%q) error %q contains the refused code %q", "sf", msg, tt.code)
			}
		})
	}
}

// TestTokenClientConnectionRefused: a token endpoint nobody listens on is a
// temporary token_endpoint_unavailable.
func TestTokenClientConnectionRefused(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()

	_, err = newTestTokenClient("http://"+addr+"/token").grant(context.Background(), "sf", "rt-0")
	re := asError(t, err)
	if re.Code != CodeTokenEndpointUnavailable || !re.Temporary {
		t.Errorf("grant(%q) = {Code %q, Temporary %v}; want {%q, true}", "sf", re.Code, re.Temporary, CodeTokenEndpointUnavailable)
	}
}

// TestTokenClientTimeout: a token endpoint that does not answer within the
// timeout gives a temporary token_endpoint_unavailable, not a hang.
func TestTokenClientTimeout(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) }) // runs before srv.Close

	c := newTestTokenClient(srv.URL + "/token")
	c.Timeout = 100 * time.Millisecond
	start := time.Now()
	_, err := c.grant(context.Background(), "sf", "rt-0")
	elapsed := time.Since(start)
	re := asError(t, err)
	if re.Code != CodeTokenEndpointUnavailable || !re.Temporary {
		t.Errorf("grant(%q) = {Code %q, Temporary %v}; want {%q, true}", "sf", re.Code, re.Temporary, CodeTokenEndpointUnavailable)
	}
	if !strings.Contains(re.Description, "did not answer within 100ms") {
		t.Errorf("grant(%q) description = %q; want it to name the 100ms timeout", "sf", re.Description)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("errors.Is(grant(%q), context.DeadlineExceeded) = false; want true (%v)", "sf", err)
	}
	if elapsed > 5*time.Second {
		t.Errorf("grant(%q) took %v; want about the 100ms timeout", "sf", elapsed)
	}
}

// TestTokenClientRefusesRedirect: a redirected token request would carry
// the client secret and refresh token elsewhere; it is not followed.
func TestTokenClientRefusesRedirect(t *testing.T) {
	t.Parallel()
	for _, status := range []int{http.StatusFound, http.StatusTemporaryRedirect} {
		t.Run(http.StatusText(status), func(t *testing.T) {
			t.Parallel()
			target := newRecordingTokenEndpoint(t, answerJSON(http.StatusOK, okTokenJSON))
			te := newRecordingTokenEndpoint(t, func(w http.ResponseWriter, r *http.Request) {
				http.Redirect(w, r, target.URL(), status)
			})
			_, err := newTestTokenClient(te.URL()).grant(context.Background(), "sf", "rt-0")
			if err == nil {
				t.Fatalf("grant(%q) = nil; want an error for a %d", "sf", status)
			}
			if n := len(target.seen()); n != 0 {
				t.Errorf("redirect target got %d requests; want 0", n)
			}
			// Not one of the codes that condemn a refresh token: retried
			// after a backoff, never followed.
			if re := asError(t, err); re.Code != CodeTokenEndpointError || !re.Temporary {
				t.Errorf("grant(%q) = {Code %q, Temporary %v}; want {%q, true} for a redirect", "sf", re.Code, re.Temporary, CodeTokenEndpointError)
			}
		})
	}
}

// TestTokenClientErrorsHoldNoSecrets: an error description echoing the
// refresh token or client secret is redacted, and the response body never
// appears in Error.Error() (DESIGN.md invariant 7).
func TestTokenClientErrorsHoldNoSecrets(t *testing.T) {
	t.Parallel()
	const refreshToken, marker = "rt-very-secret-0", "BODY-MARKER"
	tests := []struct {
		name       string
		clientAuth string
		answer     http.HandlerFunc
	}{
		{
			name:       "description echoes secrets",
			clientAuth: ClientAuthSecretPost,
			answer: answerJSON(http.StatusBadRequest,
				`{"error":"invalid_grant","error_description":"token rt-very-secret-0 of client secret-1 revoked"}`),
		},
		{
			name:       "500 body",
			clientAuth: ClientAuthSecretBasic,
			answer:     answerWith(http.StatusInternalServerError, "text/plain", marker+" rt-very-secret-0 secret-1"),
		},
		{
			name:       "400 body with extra fields",
			clientAuth: ClientAuthSecretBasic,
			answer:     answerJSON(http.StatusBadRequest, `{"error":"invalid_request","debug":"`+marker+` rt-very-secret-0"}`),
		},
		{
			name:       "200 body that is not a token",
			clientAuth: ClientAuthSecretBasic,
			answer:     answerWith(http.StatusOK, "text/html", marker+" rt-very-secret-0 secret-1"),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			te := newRecordingTokenEndpoint(t, tt.answer)
			c := newTestTokenClient(te.URL())
			c.ClientAuth = tt.clientAuth
			_, err := c.grant(context.Background(), "sf", refreshToken)
			if err == nil {
				t.Fatalf("grant(%q) = nil; want an error", "sf")
			}
			msg := err.Error()
			for _, secret := range []string{refreshToken, "secret-1", marker} {
				if strings.Contains(msg, secret) {
					t.Errorf("grant(%q) error %q contains %q", "sf", msg, secret)
				}
			}
			if !strings.Contains(msg, `"sf"`) {
				t.Errorf("grant(%q) error %q does not name the key set", "sf", msg)
			}
		})
	}
}

// TestTokenClientRedact: every non-empty secret is replaced, an empty one is ignored,
// and long descriptions are cut.
func TestTokenClientRedact(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("x", 400)
	tests := []struct {
		name    string
		in      string
		secrets []string
		want    string
	}{
		{"one secret", "bad token rt-1", []string{"rt-1"}, "bad token [redacted]"},
		{"several secrets, repeated", "rt-1/s3 rt-1", []string{"rt-1", "s3"}, "[redacted]/[redacted] [redacted]"},
		{"empty secret ignored", "nothing here", []string{"", ""}, "nothing here"},
		{"long cut", long, nil, long[:300] + "..."},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := redact(tt.in, tt.secrets...); got != tt.want {
				t.Errorf("redact(%q, %q) = %q; want %q", tt.in, tt.secrets, got, tt.want)
			}
		})
	}
}

// TestTokenClientWithFormParams: params are added to a copy of the token request,
// fields already in the form are kept, and the length and GetBody follow
// the new body.
func TestTokenClientWithFormParams(t *testing.T) {
	t.Parallel()
	orig, err := http.NewRequest(http.MethodPost, "http://127.0.0.1/token",
		strings.NewReader("grant_type=refresh_token&refresh_token=rt-0"))
	if err != nil {
		t.Fatal(err)
	}
	orig.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	params := url.Values{"grant_type": {"password"}, "resource": {"r1", "r2"}}

	req, err := withFormParams(orig, params)
	if err != nil {
		t.Fatalf("withFormParams() = %v; want nil", err)
	}
	if req == orig {
		t.Fatalf("withFormParams() returned the original request; want a copy")
	}
	body, _ := io.ReadAll(req.Body)
	got, _ := url.ParseQuery(string(body))
	want := url.Values{"grant_type": {"refresh_token"}, "refresh_token": {"rt-0"}, "resource": {"r1", "r2"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("withFormParams() form = %v; want %v", got, want)
	}
	if req.ContentLength != int64(len(body)) {
		t.Errorf("ContentLength = %d; want %d", req.ContentLength, len(body))
	}
	again, err := req.GetBody()
	if err != nil {
		t.Fatalf("GetBody() = %v", err)
	}
	if b, _ := io.ReadAll(again); string(b) != string(body) {
		t.Errorf("GetBody() = %q; want %q", b, body)
	}
	if got := params["grant_type"]; !reflect.DeepEqual(got, []string{"password"}) {
		t.Errorf("params[grant_type] = %q after withFormParams; want it untouched", got)
	}
}

// TestTokenClientParseResponse: only a JSON object or a form-encoded body is a
// token response.
func TestTokenClientParseResponse(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		contentType string
		body        string
		wantErr     bool
		wantAccess  string
	}{
		{"json object", "application/json", `{"access_token":"at-1"}`, false, "at-1"},
		{"json without content type", "", `{"access_token":"at-1"}`, false, "at-1"},
		{"form", "application/x-www-form-urlencoded", "access_token=at-2", false, "at-2"},
		{"json null", "application/json", `null`, true, ""},
		{"json array", "application/json", `["at-1"]`, true, ""},
		{"html", "text/html", `<html></html>`, true, ""},
		{"bad form", "application/x-www-form-urlencoded", "access_token=%zz", true, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := http.Header{}
			if tt.contentType != "" {
				h.Set("Content-Type", tt.contentType)
			}
			token, err := parseTokenResponse(h, []byte(tt.body))
			if (err != nil) != tt.wantErr {
				t.Fatalf("parseTokenResponse(%q) = %v; want error %v", tt.body, err, tt.wantErr)
			}
			if err == nil && token.AccessToken() != tt.wantAccess {
				t.Errorf("parseTokenResponse(%q) access token = %q; want %q", tt.body, token.AccessToken(), tt.wantAccess)
			}
		})
	}
}
