package bench

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"strconv"
	"strings"
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
// drains a POST and answers small (a POST to unreadPath without reading
// its body), and answers 401 to a request whose Authorization header is
// not exactly want (empty for a bare proxy), before reading its body.
type Upstream struct {
	Addr string

	want   string
	opt    UpstreamOptions
	mu     sync.Mutex      // guards used
	used   map[string]bool // the tokens accepted so far, with opt.TokenOnce
	server *http.Server

	Requests atomic.Int64 // requests answered
	Rejected atomic.Int64 // 401s for a wrong or missing Authorization
	Short    atomic.Int64 // bodies that did not arrive whole, or not as sent
	Expected atomic.Int64 // requests that came with "Expect: 100-continue"
}

// UpstreamOptions change what an Upstream accepts and checks.
type UpstreamOptions struct {
	// TokenOnce accepts any token of the form want+"-<n>", each for one
	// request: the next request with it is rejected, as after a
	// revocation, and the sidecar refreshes and replays every request.
	// Its rejections are not counted in Rejected, which counts answers
	// the client sees.
	TokenOnce bool
	// Verify compares every byte of a POST body with the generated
	// pattern the load generator sends, not only its length.
	Verify bool
}

// unreadPath is the path whose POSTs the upstream answers without reading
// the body, as an API that takes what the head says does.
const unreadPath = "/unread"

// StartUpstream serves an Upstream on a kernel-chosen loopback port.
func StartUpstream(want string) (*Upstream, error) { return StartUpstreamWith(want, UpstreamOptions{}) }

// StartUpstreamWith is StartUpstream with options.
func StartUpstreamWith(want string, opt UpstreamOptions) (*Upstream, error) {
	u := &Upstream{want: want, opt: opt, used: map[string]bool{}}
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
	if strings.EqualFold(r.Header.Get("Expect"), "100-continue") {
		u.Expected.Add(1)
	}
	if !u.accept(r.Header["Authorization"]) {
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
	if r.URL.Path == unreadPath {
		h["Content-Length"] = []string{strconv.Itoa(len(postAnswer))}
		w.Write(postAnswer)
		return
	}
	n, err := u.drain(r.Body)
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
	// rotate appends "-<n>" to the access token of the n-th grant.
	rotate    bool
	expiresIn int
	latency   time.Duration
	server    *http.Server

	mu           sync.Mutex // guards refreshToken and issued
	refreshToken string
	issued       int

	Grants  atomic.Int64 // grants answered with a token
	Refused atomic.Int64 // grants refused (invalid_grant, bad request)
}

// StartTokenEndpoint serves a TokenEndpoint on a kernel-chosen loopback port.
// It accepts refreshToken, and issues accessToken valid for expiresIn.
func StartTokenEndpoint(refreshToken, accessToken string, expiresIn time.Duration, latency time.Duration) (*TokenEndpoint, error) {
	return startTokenEndpoint(&TokenEndpoint{accessToken: accessToken, expiresIn: int(expiresIn / time.Second), latency: latency, refreshToken: refreshToken})
}

// StartRotatingTokenEndpoint is StartTokenEndpoint issuing a new access
// token, accessToken+"-<n>", with the n-th grant, valid for an hour.
func StartRotatingTokenEndpoint(refreshToken, accessToken string) (*TokenEndpoint, error) {
	return startTokenEndpoint(&TokenEndpoint{accessToken: accessToken, rotate: true, expiresIn: int(time.Hour / time.Second), refreshToken: refreshToken})
}

// startTokenEndpoint serves te on a kernel-chosen loopback port.
func startTokenEndpoint(te *TokenEndpoint) (*TokenEndpoint, error) {
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
	access := te.accessToken
	if te.rotate {
		access += "-" + strconv.Itoa(te.issued)
	}
	json.NewEncoder(w).Encode(map[string]any{
		"access_token":  access,
		"token_type":    "Bearer",
		"expires_in":    te.expiresIn,
		"refresh_token": te.refreshToken,
	})
}

// accept reports whether a request with Authorization values auth is
// served, counting a rejection the client will see.
func (u *Upstream) accept(auth []string) bool {
	if !u.opt.TokenOnce {
		if len(auth) > 1 || strings.Join(auth, "") != u.want {
			u.Rejected.Add(1)
			return false
		}
		return true
	}
	if len(auth) != 1 || !strings.HasPrefix(auth[0], u.want+"-") {
		u.Rejected.Add(1)
		return false
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.used[auth[0]] {
		return false // revoked: the sidecar refreshes and replays
	}
	u.used[auth[0]] = true
	return true
}

// drain reads a body to its end, comparing it with the generated pattern
// when opt.Verify says so.
func (u *Upstream) drain(body io.Reader) (int64, error) {
	if !u.opt.Verify {
		return io.Copy(io.Discard, body)
	}
	buf := make([]byte, len(bodyPattern))
	var n int64
	for {
		m, err := io.ReadFull(body, buf)
		if m > 0 && !bytes.Equal(buf[:m], bodyPattern[:m]) {
			return n, errors.New("body differs from what was sent")
		}
		n += int64(m)
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
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
