// Package answer writes the module's own HTTP answers: JSON that is never
// cached, and RFC 9457 problem documents for key sets that cannot give a
// token. The handler, the admin API and the connect page answer a failure
// of the credential engine through it, so that each maps it to the same
// status.
package answer

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"

	"github.com/oauth2upstream/caddy-oauth2-upstream/credential"
)

// Documentation of the error answers (RFC 9457 section 3.1.1: the type URI
// should lead to documentation of the problem).
const (
	ProblemType      = "https://github.com/oauth2upstream/caddy-oauth2-upstream#error-responses"
	AdminProblemType = "https://github.com/oauth2upstream/caddy-oauth2-upstream#operating"
)

// Problem is an RFC 9457 problem details document with two extension
// members: the key set and the OAuth error code.
type Problem struct {
	Type       string `json:"type"`
	Title      string `json:"title"`
	Status     int    `json:"status"`
	Detail     string `json:"detail"`
	KeySet     string `json:"key_set,omitempty"`
	OAuthError string `json:"oauth_error,omitempty"`
}

// CredentialFailure answers a client for a key set that cannot give a
// token (DESIGN.md invariant 8): 503 with Retry-After for temporary
// failures, 502 for permanent ones, 400 for a key set name the request
// itself selected badly, 403 for one key_set_allow does not admit.
func CredentialFailure(w http.ResponseWriter, err error) error {
	p := Problem{Type: ProblemType, Detail: err.Error()}
	var ce *credential.Error
	if errors.As(err, &ce) {
		p.KeySet, p.OAuthError = ce.KeySet, ce.Code
	}
	p.Status, p.Title = FailureStatus(w.Header(), err)
	return JSONAs(w, p.Status, "application/problem+json", p)
}

// FailureStatus is the status and title that answer err, a failure of the
// credential engine, and sets Retry-After in h when the failure is
// temporary. An error that is no *credential.Error is a 502.
func FailureStatus(h http.Header, err error) (status int, title string) {
	var ce *credential.Error
	if !errors.As(err, &ce) {
		return http.StatusBadGateway, "OAuth2 upstream credential unavailable"
	}
	switch {
	case ce.Code == credential.CodeInvalidKeySetName:
		return http.StatusBadRequest, "Invalid OAuth2 key set name"
	case ce.Code == credential.CodeKeySetNotAllowed:
		return http.StatusForbidden, "OAuth2 key set not allowed"
	case ce.Temporary:
		h.Set("Retry-After", strconv.Itoa(retryAfterSeconds(ce)))
		return http.StatusServiceUnavailable, "OAuth2 upstream credential temporarily unavailable"
	}
	return http.StatusBadGateway, "OAuth2 upstream credential unavailable"
}

// retryAfterSeconds rounds up, and says at least 1: "Retry-After: 0" invites
// an immediate retry storm.
func retryAfterSeconds(ce *credential.Error) int {
	return max(1, int(math.Ceil(ce.RetryAfter.Seconds())))
}

// AdminProblem writes a problem document of an operator's interface.
func AdminProblem(w http.ResponseWriter, status int, title, detail, keySet string) error {
	return JSONAs(w, status, "application/problem+json",
		Problem{Type: AdminProblemType, Title: title, Status: status, Detail: detail, KeySet: keySet})
}

// JSON writes v as an application/json answer.
func JSON(w http.ResponseWriter, status int, v any) error {
	return JSONAs(w, status, "application/json", v)
}

// JSONAs is the one writer of the module's own answers: JSON that is never
// cached, since it describes credentials.
func JSONAs(w http.ResponseWriter, status int, contentType string, v any) error {
	body, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encoding the answer: %w", err)
	}
	body = append(body, '\n')
	h := w.Header()
	h.Set("Content-Type", contentType)
	h.Set("Content-Length", strconv.Itoa(len(body)))
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, err = w.Write(body)
	return err
}
