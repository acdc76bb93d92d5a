package oauth2upstream

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
)

var provisionMu sync.Mutex // serialises Caddy provisioning across parallel tests

// sidecar is the handler under test in front of Caddy's real reverse_proxy,
// served on a loopback listener.
type sidecar struct {
	handler *Handler
	store   *keystore.File
	server  *httptest.Server
	logs    *observer.ObservedLogs
}

// newSidecar provisions h (with a file keystore in a temporary directory
// unless h has one) in front of reverse_proxy to upstream. upstream may be
// a placeholder such as {http.oauth2_upstream.extra.instance_url.hostport}.
func newSidecar(t *testing.T, h *Handler, upstream string) *sidecar {
	t.Helper()
	return newSidecarWithProxy(t, h, &reverseproxy.Handler{Upstreams: reverseproxy.UpstreamPool{{Dial: upstream}}})
}

// newSidecarWithProxy is newSidecar with a reverse_proxy configured by the
// test, and options for the HTTP server applied before it starts.
func newSidecarWithProxy(t *testing.T, h *Handler, proxy *reverseproxy.Handler, serverOptions ...func(*http.Server)) *sidecar {
	t.Helper()
	// Caddy provisions one config at a time: ProvisionContext and
	// reverse_proxy's Provision set package-level state without a lock.
	provisionMu.Lock()
	defer provisionMu.Unlock()
	ctx, err := caddy.ProvisionContext(&caddy.Config{})
	if err != nil {
		t.Fatalf("ProvisionContext() = %v", err)
	}

	dir := t.TempDir()
	if h.KeystoreRaw == nil {
		raw, _ := json.Marshal(map[string]string{"backend": "file", "path": dir})
		h.KeystoreRaw = raw
	}
	if err := h.Provision(ctx); err != nil {
		t.Fatalf("Provision() = %v", err)
	}
	if err := h.Validate(); err != nil {
		t.Fatalf("Validate() = %v", err)
	}
	core, logs := observer.New(zap.DebugLevel)
	h.logger = zap.New(core)
	h.refresher.logger = h.logger
	t.Cleanup(func() { h.Cleanup() })

	if err := proxy.Provision(ctx); err != nil {
		t.Fatalf("provisioning reverse_proxy: %v", err)
	}
	t.Cleanup(func() { proxy.Cleanup() })
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		return proxy.ServeHTTP(w, r, caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return nil }))
	})

	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		repl := caddy.NewReplacer()
		r = caddyhttp.PrepareRequest(r, repl, w, &caddyhttp.Server{})
		if err := h.ServeHTTP(w, r, next); err != nil {
			t.Logf("handler error: %v", err)
			status := http.StatusInternalServerError
			var he caddyhttp.HandlerError
			if errors.As(err, &he) && he.StatusCode != 0 {
				status = he.StatusCode
			}
			w.WriteHeader(status)
		}
	}))
	for _, option := range serverOptions {
		option(srv.Config)
	}
	srv.Start()
	t.Cleanup(srv.Close)
	s := &sidecar{handler: h, server: srv, logs: logs}
	if f, ok := h.store.(*keystore.File); ok {
		s.store = f
	}
	return s
}

// hostPort is the host:port of a test server's URL.
func hostPort(t *testing.T, rawURL string) string {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	return u.Host
}

// fakeClock is a clock tests move by hand.
type fakeClock struct {
	mu  sync.Mutex // guards now
	now time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Date(2026, 11, 27, 8, 0, 0, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// useClock makes the handler's refresher and token client read clock.
func (s *sidecar) useClock(clock *fakeClock) {
	s.handler.refresher.now = clock.Now
	s.handler.refresher.client.now = clock.Now
}

// tokenEndpoint is a small token endpoint for unit tests: it issues access
// tokens "at-<n>" and rotating refresh tokens "rt-<n>", accepts only the
// newest refresh token, and counts grants.
type tokenEndpoint struct {
	server *httptest.Server

	mu           sync.Mutex // guards the fields below
	refreshToken string
	issued       int
	respond      func(w http.ResponseWriter, r *http.Request) bool // optional override; true when it answered
	extra        map[string]any
	expiresIn    int
	rotate       bool

	grants atomic.Int64
	// gate, when set, holds each grant until it is closed.
	gate chan struct{}
}

func newTokenEndpoint(t *testing.T, seed string) *tokenEndpoint {
	te := &tokenEndpoint{refreshToken: seed, expiresIn: 3600, rotate: true}
	te.server = httptest.NewServer(http.HandlerFunc(te.serve))
	t.Cleanup(te.server.Close)
	return te
}

func (te *tokenEndpoint) URL() string { return te.server.URL + "/token" }

func (te *tokenEndpoint) serve(w http.ResponseWriter, r *http.Request) {
	te.mu.Lock()
	gate, respond := te.gate, te.respond
	te.mu.Unlock()
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
	te.mu.Lock()
	defer te.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	if r.PostForm.Get("grant_type") == "refresh_token" && r.PostForm.Get("refresh_token") != te.refreshToken {
		w.WriteHeader(http.StatusBadRequest)
		json.NewEncoder(w).Encode(map[string]string{"error": "invalid_grant", "error_description": "refresh token is not valid"})
		return
	}
	te.grants.Add(1)
	te.issued++
	resp := map[string]any{"access_token": "at-" + strconv.Itoa(te.issued), "token_type": "Bearer"}
	if te.expiresIn > 0 {
		resp["expires_in"] = te.expiresIn
	}
	if te.rotate {
		te.refreshToken = "rt-" + strconv.Itoa(te.issued)
		resp["refresh_token"] = te.refreshToken
	}
	for k, v := range te.extra {
		resp[k] = v
	}
	json.NewEncoder(w).Encode(resp)
}
