package oauth2upstream

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
	problemType      = "https://github.com/oauth2upstream/caddy-oauth2-upstream#error-responses"
	adminProblemType = "https://github.com/oauth2upstream/caddy-oauth2-upstream#operating"
)

// problem is an RFC 9457 problem details document with two extension
// members: the key set and the OAuth error code.
type problem struct {
	Type       string `json:"type"`
	Title      string `json:"title"`
	Status     int    `json:"status"`
	Detail     string `json:"detail"`
	KeySet     string `json:"key_set,omitempty"`
	OAuthError string `json:"oauth_error,omitempty"`
}

// writeProblem answers the client for a key set that cannot give a token:
// 503 with Retry-After for temporary failures, 502 for permanent ones, 400
// for a key set name the request itself selected badly.
func writeProblem(w http.ResponseWriter, err error) error {
	p := problem{
		Type:   problemType,
		Title:  "OAuth2 upstream credential unavailable",
		Status: http.StatusBadGateway,
		Detail: err.Error(),
	}
	var ce *credential.Error
	if errors.As(err, &ce) {
		p.KeySet, p.OAuthError = ce.KeySet, ce.Code
		switch {
		case ce.Code == credential.CodeInvalidKeySetName:
			p.Status, p.Title = http.StatusBadRequest, "Invalid OAuth2 key set name"
		case ce.Code == credential.CodeKeySetNotAllowed:
			p.Status, p.Title = http.StatusForbidden, "OAuth2 key set not allowed"
		case ce.Temporary:
			p.Status, p.Title = http.StatusServiceUnavailable, "OAuth2 upstream credential temporarily unavailable"
			w.Header().Set("Retry-After", strconv.Itoa(retryAfterSeconds(ce)))
		}
	}
	return writeJSONAs(w, p.Status, "application/problem+json", p)
}

// retryAfterSeconds rounds up, and says at least 1: "Retry-After: 0" invites
// an immediate retry storm.
func retryAfterSeconds(ce *credential.Error) int {
	return max(1, int(math.Ceil(ce.RetryAfter.Seconds())))
}

// adminProblem writes an admin API problem document.
func adminProblem(w http.ResponseWriter, status int, title, detail, keySet string) error {
	return writeJSONAs(w, status, "application/problem+json",
		problem{Type: adminProblemType, Title: title, Status: status, Detail: detail, KeySet: keySet})
}

func writeJSON(w http.ResponseWriter, status int, v any) error {
	return writeJSONAs(w, status, "application/json", v)
}

// writeJSONAs is the one writer of the module's own answers: JSON that is
// never cached, since it describes credentials.
func writeJSONAs(w http.ResponseWriter, status int, contentType string, v any) error {
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
