// Package resourceserver runs the API that the sidecar proxies to in the
// end-to-end tests and the demo. It accepts a request only with a bearer
// access token that the authorization server reports active (RFC 7662
// introspection, asked on every request, nothing cached), and answers with
// what it received, so tests can check the body and the credential that
// arrived.
package resourceserver

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"
)

// introspectTimeout bounds one introspection call.
const introspectTimeout = 5 * time.Second

// Echo is the JSON body of a 200 answer.
type Echo struct {
	Method string `json:"method"`
	Path   string `json:"path"`
	Query  string `json:"query"`
	// SHA256 is the hex SHA-256 of the whole request body as received.
	SHA256 string `json:"sha256"`
	// Length is the number of body bytes received.
	Length int64 `json:"length"`
	// AuthorizationCount is the number of Authorization header lines received.
	AuthorizationCount int `json:"authorization_count"`
}

// Server is a running resource server. Its methods are safe for concurrent use.
type Server struct {
	introspectURL string
	clientID      string
	clientSecret  string
	client        *http.Client

	httpServer *http.Server
	url        string
	done       chan struct{}

	requests           atomic.Int64
	unauthorized       atomic.Int64
	alwaysUnauthorized atomic.Bool
	rejectBeforeBody   atomic.Bool
	scheme             atomic.Value // string: the credential's scheme, "" for Bearer
}

// New starts a resource server on a kernel-chosen loopback port. It
// authenticates to introspectURL with HTTP Basic as clientID/clientSecret.
func New(introspectURL, clientID, clientSecret string) (*Server, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("resourceserver: listen: %w", err)
	}
	s := &Server{
		introspectURL: introspectURL,
		clientID:      clientID,
		clientSecret:  clientSecret,
		// Keep enough idle connections for a storm of concurrent requests,
		// each introspected, without opening and closing one per request.
		client: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}, Timeout: introspectTimeout},
		url:    "http://" + ln.Addr().String(),
		done:   make(chan struct{}),
	}
	s.httpServer = &http.Server{Handler: http.HandlerFunc(s.serveHTTP), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		defer close(s.done)
		_ = s.httpServer.Serve(ln) // returns http.ErrServerClosed on Close
	}()
	return s, nil
}

// URL is the server's base URL, "http://127.0.0.1:PORT".
func (s *Server) URL() string { return s.url }

// Close stops the server and closes its connections.
func (s *Server) Close() error {
	err := s.httpServer.Close()
	<-s.done
	s.client.CloseIdleConnections()
	if err != nil {
		return fmt.Errorf("resourceserver: close: %w", err)
	}
	return nil
}

// Requests counts the requests received.
func (s *Server) Requests() int { return int(s.requests.Load()) }

// Unauthorized counts the 401 answers sent.
func (s *Server) Unauthorized() int { return int(s.unauthorized.Load()) }

// AlwaysUnauthorized makes every request fail with 401, whatever its token,
// as an API does that rejects even a freshly refreshed token.
func (s *Server) AlwaysUnauthorized(on bool) { s.alwaysUnauthorized.Store(on) }

// RejectBeforeBody makes the server check the token before it reads the
// body, and answer 401 leaving the body unread, as many APIs do; the client
// may then not have sent the body at all (Expect: 100-continue) or have it
// cut off. By default the whole body is read first and the token checked
// after.
func (s *Server) RejectBeforeBody(on bool) { s.rejectBeforeBody.Store(on) }

// Scheme makes the server accept the access token only under scheme in the
// Authorization header (compared case-insensitively, RFC 7235 section
// 2.1) and name it in its challenges, as Zoho's APIs want it under
// Zoho-oauthtoken
// (https://www.zoho.com/accounts/protocol/oauth/use-access-token.html).
// Default: Bearer (RFC 6750).
func (s *Server) Scheme(scheme string) { s.scheme.Store(scheme) }

func (s *Server) currentScheme() string {
	if scheme, _ := s.scheme.Load().(string); scheme != "" {
		return scheme
	}
	return "Bearer"
}

func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	s.requests.Add(1)
	if s.rejectBeforeBody.Load() {
		s.serveRejectingEarly(w, r)
		return
	}
	digest, err := hashBody(r.Body)
	if err != nil {
		http.Error(w, fmt.Sprintf("read body: %v", err), http.StatusBadRequest)
		return
	}
	if !s.authorize(w, r) {
		return
	}
	echo(w, r, digest)
}

// serveRejectingEarly checks the token before reading the body, and answers
// a failure without reading it.
func (s *Server) serveRejectingEarly(w http.ResponseWriter, r *http.Request) {
	// Without "Connection: close", net/http would read up to 256 KiB of
	// the unread body before writing the 401's headers (Go issue 15527), so
	// a client that sends its body late, or only after "100 Continue",
	// would never see the 401.
	w.Header().Set("Connection", "close")
	if !s.authorize(w, r) {
		// Nor read the body after the handler returns: hang up.
		_ = http.NewResponseController(w).SetReadDeadline(time.Now())
		return
	}
	w.Header().Del("Connection")
	digest, err := hashBody(r.Body)
	if err != nil {
		http.Error(w, fmt.Sprintf("read body: %v", err), http.StatusBadRequest)
		return
	}
	echo(w, r, digest)
}

func echo(w http.ResponseWriter, r *http.Request, digest bodyDigest) {
	writeJSON(w, http.StatusOK, Echo{
		Method:             r.Method,
		Path:               r.URL.Path,
		Query:              r.URL.RawQuery,
		SHA256:             digest.sha256,
		Length:             digest.length,
		AuthorizationCount: len(r.Header.Values("Authorization")),
	})
}

// authorize checks the request's bearer token and, when it fails, writes the
// answer and returns false.
func (s *Server) authorize(w http.ResponseWriter, r *http.Request) bool {
	token, ok := credentialToken(r.Header.Get("Authorization"), s.currentScheme())
	switch {
	case !ok:
		// RFC 6750 section 3.1: no error code when no credentials were sent.
		s.reject(w, "")
		return false
	case s.alwaysUnauthorized.Load():
		s.reject(w, "invalid_token")
		return false
	}
	active, err := s.introspect(r.Context(), token)
	if err != nil {
		// Not a 401: the token may be fine, and a 401 would make the sidecar
		// spend a refresh token for nothing.
		http.Error(w, fmt.Sprintf("introspection failed: %v", err), http.StatusServiceUnavailable)
		return false
	}
	if !active {
		s.reject(w, "invalid_token")
		return false
	}
	return true
}

// reject answers 401 with a challenge of the server's scheme (RFC 6750
// section 3) carrying errorCode, if any.
func (s *Server) reject(w http.ResponseWriter, errorCode string) {
	s.unauthorized.Add(1)
	challenge := s.currentScheme() + ` realm="resourceserver"`
	body := map[string]string{"error": "unauthorized"}
	if errorCode != "" {
		challenge += fmt.Sprintf(`, error=%q`, errorCode)
		body["error"] = errorCode
	}
	w.Header().Set("WWW-Authenticate", challenge)
	writeJSON(w, http.StatusUnauthorized, body)
}

// introspect asks the authorization server whether token is an active access
// token (RFC 7662 section 2).
func (s *Server) introspect(ctx context.Context, token string) (bool, error) {
	form := url.Values{"token": {token}, "token_type_hint": {"access_token"}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.introspectURL, strings.NewReader(form.Encode()))
	if err != nil {
		return false, fmt.Errorf("build introspection request: %w", err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	// RFC 6749 section 2.3.1: Basic credentials are form-urlencoded first.
	req.SetBasicAuth(url.QueryEscape(s.clientID), url.QueryEscape(s.clientSecret))
	resp, err := s.client.Do(req)
	if err != nil {
		return false, fmt.Errorf("introspect: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return false, fmt.Errorf("introspect: status %d", resp.StatusCode)
	}
	var answer struct {
		Active bool `json:"active"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&answer); err != nil {
		return false, fmt.Errorf("introspect: decode answer: %w", err)
	}
	return answer.Active, nil
}

// credentialToken extracts the token of an "Authorization: <scheme>
// <token>" value; the scheme is case-insensitive (RFC 7235 section 2.1).
func credentialToken(header, want string) (string, bool) {
	scheme, token, ok := strings.Cut(header, " ")
	if !ok || !strings.EqualFold(scheme, want) {
		return "", false
	}
	token = strings.TrimSpace(token)
	return token, token != ""
}

// bodyDigest describes a request body as received.
type bodyDigest struct {
	sha256 string // hex
	length int64
}

func hashBody(body io.Reader) (bodyDigest, error) {
	h := sha256.New()
	n, err := io.Copy(h, body)
	if err != nil {
		return bodyDigest{length: n}, err
	}
	return bodyDigest{sha256: hex.EncodeToString(h.Sum(nil)), length: n}, nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v) // a failure means the client went away
}
