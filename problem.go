package oauth2upstream

import (
	"encoding/json"
	"errors"
	"math"
	"net/http"
	"strconv"
)

// problemType is the documentation of the error responses (RFC 9457 section
// 3.1.1: the type URI should lead to documentation of the problem).
const problemType = "https://github.com/oauth2upstream/caddy-oauth2-upstream#error-responses"

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
	var re *RefreshError
	if errors.As(err, &re) {
		p.KeySet, p.OAuthError = re.KeySet, re.Code
		switch {
		case re.Code == codeInvalidKeySetName:
			p.Status, p.Title = http.StatusBadRequest, "Invalid OAuth2 key set name"
		case re.Temporary:
			p.Status, p.Title = http.StatusServiceUnavailable, "OAuth2 upstream credential temporarily unavailable"
			w.Header().Set("Retry-After", strconv.Itoa(retryAfterSeconds(re)))
		}
	}
	body, mErr := json.Marshal(p)
	if mErr != nil {
		return mErr
	}
	h := w.Header()
	h.Set("Content-Type", "application/problem+json")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(p.Status)
	_, wErr := w.Write(body)
	return wErr
}

// retryAfterSeconds rounds up, and says at least 1: "Retry-After: 0" invites
// an immediate retry storm.
func retryAfterSeconds(re *RefreshError) int {
	return max(1, int(math.Ceil(re.RetryAfter.Seconds())))
}
