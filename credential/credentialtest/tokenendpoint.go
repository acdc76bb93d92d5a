// Package credentialtest holds test fixtures shared by the tests of the
// credential engine and of the packages built on it: a small token endpoint
// and a clock moved by hand.
package credentialtest

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TokenEndpoint is a small token endpoint for unit tests: it issues access
// tokens "at-<n>" and rotating refresh tokens "rt-<n>", accepts only the
// newest refresh token, and counts grants. End-to-end tests use the fosite
// server of the integration_test module instead.
type TokenEndpoint struct {
	Server *httptest.Server

	Mu           sync.Mutex // guards the fields below
	RefreshToken string     // the only refresh token accepted
	Issued       int        // grants answered so far
	// Respond, when set, may answer a request itself; it returns true
	// when it did.
	Respond   func(w http.ResponseWriter, r *http.Request) bool
	Extra     map[string]any // fields added to every token response
	ExpiresIn int            // seconds; 0 sends no expires_in
	Rotate    bool           // issue a new refresh token on every grant
	// Gate, when set, holds each request until it is closed.
	Gate chan struct{}

	// Grants counts successful grants.
	Grants atomic.Int64
}

// NewTokenEndpoint starts a token endpoint that accepts refresh token seed,
// issues hour-long access tokens, and rotates refresh tokens.
func NewTokenEndpoint(t testing.TB, seed string) *TokenEndpoint {
	te := &TokenEndpoint{RefreshToken: seed, ExpiresIn: 3600, Rotate: true}
	te.Server = httptest.NewServer(http.HandlerFunc(te.serve))
	t.Cleanup(te.Server.Close)
	return te
}

// URL is the token endpoint's URL.
func (te *TokenEndpoint) URL() string { return te.Server.URL + "/token" }

func (te *TokenEndpoint) serve(w http.ResponseWriter, r *http.Request) {
	te.Mu.Lock()
	gate, respond := te.Gate, te.Respond
	te.Mu.Unlock()
	if gate != nil {
		<-gate
	}
	if respond != nil && respond(w, r) {
		return
	}
	if err := r.ParseForm(); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	te.Mu.Lock()
	defer te.Mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	if r.PostForm.Get("grant_type") == "refresh_token" && r.PostForm.Get("refresh_token") != te.RefreshToken {
		w.WriteHeader(http.StatusBadRequest)
		json.NewEncoder(w).Encode(map[string]string{"error": "invalid_grant", "error_description": "refresh token is not valid"})
		return
	}
	te.Grants.Add(1)
	te.Issued++
	resp := map[string]any{"access_token": "at-" + strconv.Itoa(te.Issued), "token_type": "Bearer"}
	if te.ExpiresIn > 0 {
		resp["expires_in"] = te.ExpiresIn
	}
	if te.Rotate {
		te.RefreshToken = "rt-" + strconv.Itoa(te.Issued)
		resp["refresh_token"] = te.RefreshToken
	}
	for k, v := range te.Extra {
		resp[k] = v
	}
	json.NewEncoder(w).Encode(resp)
}

// Clock is a clock tests move by hand.
type Clock struct {
	mu  sync.Mutex // guards now
	now time.Time
}

// NewClock returns a clock that reads a fixed instant until advanced.
func NewClock() *Clock { return &Clock{now: time.Date(2026, 11, 27, 8, 0, 0, 0, time.UTC)} }

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock forward by d.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}
