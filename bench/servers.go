package bench

import (
	"encoding/json"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// getAnswerSize is the size of the upstream's answer to a GET.
const getAnswerSize = 1 << 10

// bodyLengthHeader tells the upstream how many body bytes the client sent,
// so it can check a chunked body arrived whole.
const bodyLengthHeader = "X-Body-Length"

var (
	getAnswer  = make([]byte, getAnswerSize)
	postAnswer = []byte("ok\n")
)

// Upstream is the fast API behind the proxies: it answers 1 KiB to a GET,
// drains a POST and answers small, and answers 401 to a request whose
// Authorization header is not exactly want (empty for a bare proxy).
type Upstream struct {
	Addr string

	want   string
	server *http.Server

	Requests atomic.Int64 // requests answered
	Rejected atomic.Int64 // 401s for a wrong or missing Authorization
	Short    atomic.Int64 // bodies that did not arrive whole
}

// StartUpstream serves an Upstream on a kernel-chosen loopback port.
func StartUpstream(want string) (*Upstream, error) {
	u := &Upstream{want: want}
	srv, addr, err := serve(u)
	if err != nil {
		return nil, err
	}
	u.server, u.Addr = srv, addr
	return u, nil
}

// Close stops the server and its connections.
func (u *Upstream) Close() error { return u.server.Close() }

func (u *Upstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	u.Requests.Add(1)
	if auth := r.Header["Authorization"]; len(auth) > 1 || r.Header.Get("Authorization") != u.want {
		u.Rejected.Add(1)
		w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	h := w.Header()
	if r.Method == http.MethodGet || r.Method == http.MethodHead {
		h["Content-Type"] = []string{"application/octet-stream"}
		h["Content-Length"] = []string{strconv.Itoa(getAnswerSize)}
		w.Write(getAnswer)
		return
	}
	n, err := io.Copy(io.Discard, r.Body)
	if want, _ := strconv.ParseInt(r.Header.Get(bodyLengthHeader), 10, 64); err != nil || n != want {
		u.Short.Add(1)
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	h["Content-Type"] = []string{"text/plain"}
	h["Content-Length"] = []string{strconv.Itoa(len(postAnswer))}
	w.Write(postAnswer)
}

// TokenEndpoint is a small OAuth2 token endpoint: it answers the
// refresh_token grant with a fixed access token and a rotated refresh token
// after Latency, accepts only the newest refresh token, and counts grants.
type TokenEndpoint struct {
	URL string

	accessToken string
	expiresIn   int
	latency     time.Duration
	server      *http.Server

	mu           sync.Mutex // guards refreshToken and issued
	refreshToken string
	issued       int

	Grants  atomic.Int64 // grants answered with a token
	Refused atomic.Int64 // grants refused (invalid_grant, bad request)
}

// StartTokenEndpoint serves a TokenEndpoint on a kernel-chosen loopback port.
// It accepts refreshToken, and issues accessToken valid for expiresIn.
func StartTokenEndpoint(refreshToken, accessToken string, expiresIn time.Duration, latency time.Duration) (*TokenEndpoint, error) {
	te := &TokenEndpoint{accessToken: accessToken, expiresIn: int(expiresIn / time.Second), latency: latency, refreshToken: refreshToken}
	srv, addr, err := serve(http.HandlerFunc(te.serve))
	if err != nil {
		return nil, err
	}
	te.server, te.URL = srv, "http://"+addr+"/token"
	return te, nil
}

// Close stops the server and its connections.
func (te *TokenEndpoint) Close() error { return te.server.Close() }

func (te *TokenEndpoint) serve(w http.ResponseWriter, r *http.Request) {
	if te.latency > 0 {
		// The provider's own latency, so that requests pile up behind a
		// grant in flight.
		timer := time.NewTimer(te.latency)
		select {
		case <-timer.C:
		case <-r.Context().Done():
			timer.Stop()
			return
		}
	}
	if err := r.ParseForm(); err != nil || r.PostForm.Get("grant_type") != "refresh_token" {
		te.Refused.Add(1)
		http.Error(w, "bad token request", http.StatusBadRequest)
		return
	}
	te.mu.Lock()
	defer te.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	if r.PostForm.Get("refresh_token") != te.refreshToken {
		te.Refused.Add(1)
		w.WriteHeader(http.StatusBadRequest)
		json.NewEncoder(w).Encode(map[string]string{"error": "invalid_grant"})
		return
	}
	te.issued++
	te.refreshToken = "bench-refresh-" + strconv.Itoa(te.issued)
	te.Grants.Add(1)
	json.NewEncoder(w).Encode(map[string]any{
		"access_token":  te.accessToken,
		"token_type":    "Bearer",
		"expires_in":    te.expiresIn,
		"refresh_token": te.refreshToken,
	})
}

// serve starts an HTTP server for h on a kernel-chosen loopback port.
func serve(h http.Handler) (*http.Server, string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, "", err
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          log.New(io.Discard, "", 0),
	}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Printf("bench server on %s: %v", ln.Addr(), err)
		}
	}()
	return srv, ln.Addr().String(), nil
}
