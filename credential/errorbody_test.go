package credential

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"github.com/oauth2upstream/caddy-oauth2-upstream/credential/credentialtest"
)

// TestTokenClientClassifiesErrorsInOKBodies: a token endpoint that answers
// an error with HTTP 200 (Slack's {"ok": false, "error": ...}, GitHub's
// error field, in JSON or, GitHub's default, form-encoded) gets the
// classification of the same code on a 400: permanent for a dead grant,
// RFC 6749's invalid_grant and the providers' own words for it, temporary
// otherwise; a 200 that names an error is no token even when it holds an
// access_token; and a 200 with neither an error nor a token is still a
// temporary invalid_token_response. Each is one request.
func TestTokenClientClassifiesErrorsInOKBodies(t *testing.T) {
	t.Parallel()
	const form = "application/x-www-form-urlencoded"
	tests := []struct {
		name          string
		answer        http.HandlerFunc
		wantCode      string
		wantTemporary bool
		wantRetrieve  bool // an *oauth2.RetrieveError of status 200 is reachable
	}{
		{
			name:     "Slack invalid_refresh_token",
			answer:   answerJSON(http.StatusOK, `{"ok":false,"error":"invalid_refresh_token"}`),
			wantCode: "invalid_refresh_token", wantRetrieve: true,
		},
		{
			name:     "Slack token_revoked",
			answer:   answerJSON(http.StatusOK, `{"ok":false,"error":"token_revoked"}`),
			wantCode: "token_revoked", wantRetrieve: true,
		},
		{
			name:     "Slack invalid_grant",
			answer:   answerJSON(http.StatusOK, `{"ok":false,"error":"invalid_grant"}`),
			wantCode: "invalid_grant", wantRetrieve: true,
		},
		{
			name:     "Slack rate limit",
			answer:   answerJSON(http.StatusOK, `{"ok":false,"error":"ratelimited"}`),
			wantCode: "ratelimited", wantTemporary: true, wantRetrieve: true,
		},
		{
			name: "GitHub bad_refresh_token",
			answer: answerJSON(http.StatusOK, `{"error":"bad_refresh_token","error_description":"The refresh token passed is incorrect or expired.",`+
				`"error_uri":"https://docs.github.com/apps/managing-oauth-apps/troubleshooting-oauth-app-access-token-request-errors"}`),
			wantCode: "bad_refresh_token", wantRetrieve: true,
		},
		{
			name:     "GitHub bad_refresh_token form-encoded",
			answer:   answerWith(http.StatusOK, form, "error=bad_refresh_token&error_description=The+refresh+token+passed+is+incorrect+or+expired."),
			wantCode: "bad_refresh_token", wantRetrieve: true,
		},
		{
			name:     "GitHub bad_verification_code",
			answer:   answerJSON(http.StatusOK, `{"error":"bad_verification_code","error_description":"The code passed is incorrect or expired."}`),
			wantCode: "bad_verification_code", wantRetrieve: true,
		},
		{
			name:     "GitHub incorrect_client_credentials stays temporary",
			answer:   answerJSON(http.StatusOK, `{"error":"incorrect_client_credentials"}`),
			wantCode: "incorrect_client_credentials", wantTemporary: true, wantRetrieve: true,
		},
		{
			name:     "generic invalid_grant",
			answer:   answerJSON(http.StatusOK, `{"error":"invalid_grant","error_description":"expired"}`),
			wantCode: "invalid_grant", wantRetrieve: true,
		},
		{
			name:     "generic invalid_request",
			answer:   answerJSON(http.StatusOK, `{"error":"invalid_request"}`),
			wantCode: "invalid_request", wantTemporary: true, wantRetrieve: true,
		},
		{
			name:     "an error beside an access_token",
			answer:   answerJSON(http.StatusOK, `{"access_token":"at-1","token_type":"Bearer","error":"invalid_grant"}`),
			wantCode: "invalid_grant", wantRetrieve: true,
		},
		{
			name:     "provider's code on a 400",
			answer:   answerJSON(http.StatusBadRequest, `{"error":"bad_refresh_token"}`),
			wantCode: "bad_refresh_token",
		},
		{
			name:     "provider's code on a 503",
			answer:   answerJSON(http.StatusServiceUnavailable, `{"ok":false,"error":"invalid_refresh_token"}`),
			wantCode: "invalid_refresh_token", wantTemporary: true,
		},
		{
			name:     "neither an error nor a token",
			answer:   answerJSON(http.StatusOK, `{"ok":false}`),
			wantCode: CodeInvalidTokenResponse, wantTemporary: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			te := newRecordingTokenEndpoint(t, tt.answer)
			_, err := newTestTokenClient(te.URL()).grant(context.Background(), "sf", "rt-very-secret-0")
			re := asError(t, err)
			if re.Code != tt.wantCode || re.Temporary != tt.wantTemporary {
				t.Errorf("grant(%q) = {Code %q, Temporary %v}; want {%q, %v}", "sf", re.Code, re.Temporary, tt.wantCode, tt.wantTemporary)
			}
			var rerr *oauth2.RetrieveError
			if got := errors.As(err, &rerr) && rerr.Response.StatusCode == http.StatusOK; got != tt.wantRetrieve {
				t.Errorf("errors.As(grant(%q), *oauth2.RetrieveError) with status 200 = %v; want %v", "sf", got, tt.wantRetrieve)
			}
			if tt.wantRetrieve && !strings.Contains(re.Description, "answered 200 with an error in the body") {
				t.Errorf("grant(%q) description %q; want it to say the 200 carried an error", "sf", re.Description)
			}
			if n := len(te.seen()); n != 1 {
				t.Errorf("token endpoint got %d requests; want 1", n)
			}
		})
	}
}

// TestErrorInOKBodyNeedsReauthorization: a dead grant that a provider
// reports in a 200 body (Slack's invalid_refresh_token) makes the key set
// needs_reauthorization after one grant, and later requests get the same
// permanent error without another grant, as a 400 invalid_grant does. The
// refresh token it names is not in the error.
func TestErrorInOKBodyNeedsReauthorization(t *testing.T) {
	t.Parallel()
	te := credentialtest.NewTokenEndpoint(t, "rt-0")
	var requests atomic.Int32
	te.Respond = func(w http.ResponseWriter, _ *http.Request) bool {
		requests.Add(1)
		answerJSON(http.StatusOK, `{"ok":false,"error":"invalid_refresh_token","warning":"rt-0 is not valid"}`)(w, nil)
		return true
	}
	clock := credentialtest.NewClock()
	store := newFileStore(t, t.TempDir())
	saveKeySet(t, store, te, "slack", clock.Now().Add(-2*time.Hour), "rt-0") // its access token expired an hour ago
	e := newWatchedEngine(t, store, te, clock, Config{CheckInterval: time.Hour})
	for i := range 3 {
		_, err := e.Current(context.Background(), "slack")
		var re *Error
		if !errors.As(err, &re) || re.Code != "invalid_refresh_token" || re.Temporary {
			t.Fatalf("Current(%q) #%d = %v; want the permanent invalid_refresh_token", "slack", i+1, err)
		}
		if strings.Contains(err.Error(), "rt-0") {
			t.Errorf("Current(%q) error %q holds the refresh token", "slack", err)
		}
	}
	if s, err := e.Status(context.Background(), "slack"); err != nil || s.State != StateNeedsReauthorization || s.ErrorCode != "invalid_refresh_token" {
		t.Errorf("Status(%q) = %+v, %v; want needs_reauthorization with invalid_refresh_token", "slack", s, err)
	}
	if n := requests.Load(); n != 1 {
		t.Errorf("token requests = %d; want 1: a dead grant is not retried", n)
	}
}
