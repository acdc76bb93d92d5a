package oauth2upstream

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/oauth2upstream/caddy-oauth2-upstream/credential"
	"github.com/oauth2upstream/caddy-oauth2-upstream/credential/credentialtest"
	"github.com/oauth2upstream/caddy-oauth2-upstream/internal/live"
	"github.com/oauth2upstream/caddy-oauth2-upstream/internal/proxyhops"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore/file"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystores"
)

var provisionMu sync.Mutex // serialises Caddy provisioning across parallel tests

// testRegistries holds each top-level test's registry of live handlers:
// its sidecars, admin API, health routes and connect pages share it, and
// see no other test's.
var testRegistries sync.Map // top-level test name -> *live.Registry

// testRegistry is the registry of the test t belongs to.
func testRegistry(t *testing.T) *live.Registry {
	top, _, _ := strings.Cut(t.Name(), "/")
	reg, _ := testRegistries.LoadOrStore(top, new(live.Registry))
	return reg.(*live.Registry)
}

// adminOff is a config whose admin endpoint is off: the handler refuses
// one that listens on TCP (adminendpoint.go).
func adminOff() *caddy.Config {
	return &caddy.Config{Admin: &caddy.AdminConfig{Disabled: true}}
}

// provisionContext is a Caddy context of its own (a config of its own)
// that registers in the test's registry.
func provisionContext(t *testing.T) caddy.Context {
	t.Helper()
	provisionMu.Lock()
	defer provisionMu.Unlock()
	ctx, err := caddy.ProvisionContext(adminOff())
	if err != nil {
		t.Fatalf("ProvisionContext() = %v", err)
	}
	return live.WithRegistry(ctx, testRegistry(t))
}

// sidecar is the handler under test in front of Caddy's real reverse_proxy,
// served on a loopback listener.
type sidecar struct {
	handler *Handler
	ctx     caddy.Context // the handler's context: its config, in the test's registry
	store   *file.Store   // the handler's store, when it is a file keystore
	dir     string        // its directory
	server  *httptest.Server
	logs    *observer.ObservedLogs
}

// client is the binding of the key sets the sidecar's handler stores: a
// document a test stores for it must carry it, or the handler refuses the
// document (key_set_unbound).
func (s *sidecar) client() *keystore.Binding {
	return &keystore.Binding{TokenURL: s.handler.TokenURL, ClientID: s.handler.ClientID}
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
	ctx, err := caddy.ProvisionContext(adminOff())
	if err != nil {
		t.Fatalf("ProvisionContext() = %v", err)
	}
	ctx = live.WithRegistry(ctx, testRegistry(t))

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
	// Rebuild what logs, so that it logs to the observer; unregistered
	// meanwhile, since scrapes and probes read the live handlers.
	h.unregister()
	h.logger = zap.New(core)
	h.ops.stop()
	if h.ops, err = newOperations(ctx, h.NotifyOptions.config(h.extras), h.logger); err != nil {
		t.Fatalf("newOperations() = %v", err)
	}
	h.engine.Close()
	h.engine = h.newEngine(h.engine.Store(), time.Now)
	h.register(live.ConfigOf(ctx))
	t.Cleanup(func() { h.Cleanup() })

	// What judgeExpectHops reads of a server's routes, here of the proxy
	// the test gave: this context has no server.
	var hop proxyhops.Hop
	if proxy.TransportRaw != nil {
		if err := json.Unmarshal(proxy.TransportRaw, &hop.Transport); err != nil {
			t.Fatal(err)
		}
	}
	h.zeroCopyReady = waitForContinue([]proxyhops.Hop{hop})
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
	s := &sidecar{handler: h, ctx: ctx, server: srv, logs: logs}
	if fk, ok := h.engine.Store().(*keystores.FileKeystore); ok {
		s.store, s.dir = fk.Store, fk.Path
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

// useClock makes the handler's engine read clock. It replaces the engine, so
// it must come before the first request.
func (s *sidecar) useClock(clock *credentialtest.Clock) {
	s.replaceEngine(s.handler.engine.Store(), clock.Now)
}

// ageTokens moves clock, which the handler reads (see useClock), past
// min_refresh_interval: a rejection of the tokens granted so far then makes
// a grant, as when an API revokes a token it has accepted for a while.
func ageTokens(clock *credentialtest.Clock) {
	clock.Advance(credential.DefaultMinRefreshInterval)
}

// replaceEngine gives the handler a new engine over store, reading the
// clock now, before the first request. The handler is unregistered
// meanwhile: scrapes and health probes read the live handlers.
func (s *sidecar) replaceEngine(store keystore.Store, now func() time.Time) {
	s.handler.unregister()
	defer s.handler.register(live.ConfigOf(s.ctx))
	s.handler.engine.Close()
	s.handler.engine = s.handler.newEngine(store, now)
}
