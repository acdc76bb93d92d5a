package live

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/oauth2upstream/caddy-oauth2-upstream/credential"
	"github.com/oauth2upstream/caddy-oauth2-upstream/internal/discovery"
)

// Config identifies a loaded Caddy config. Caddy provisions a new config
// before it cleans up the old one, so during a reload the handlers of both
// are live; a route that speaks for one config (the health route, the
// connect page, the metrics) reads only that config's handlers.
type Config struct {
	// metrics is the config's metrics registry: Caddy gives every loaded
	// config its own context, and every context its own registry.
	metrics *prometheus.Registry
}

// ConfigOf is the config that ctx provisions.
func ConfigOf(ctx caddy.Context) Config {
	return Config{metrics: ctx.GetMetricsRegistry()}
}

// Page is a live connect page (oauth2_upstream_connect), as the admin
// endpoint's connect-url route sees it.
type Page struct {
	// Config is the Caddy config the page was provisioned in: it connects
	// the key sets of that config's handlers.
	Config Config
	// ClientID narrows the page to the handlers of one client; "" for
	// every handler of its config.
	ClientID string
	// Base is the scheme and host the page is reached at, "" when unknown.
	Base string
}

// Registry is the live oauth2_upstream handlers and connect pages of a
// process, each in the order they were provisioned, and the key sets the
// handlers granted but could not yet store, by keystore configuration. Its
// state outlives any one config, so a reload loses none of it.
type Registry struct {
	Handlers Set[*Handler]
	Pages    Set[*Page]

	mu       sync.Mutex // guards unstored and metadata
	unstored map[string]*credential.Unstored
	metadata *discovery.Cache
}

// process is the registry of every module provisioned in a context that
// names no other (see WithRegistry).
var process = new(Registry)

type registryKey struct{}

// WithRegistry returns ctx with a registry of its own: the modules
// provisioned in it register in, and read, r instead of the process's.
// Tests give each a registry of its own, so that parallel tests see only
// their own handlers.
func WithRegistry(ctx caddy.Context, r *Registry) caddy.Context {
	ctx.Context = context.WithValue(ctx.Context, registryKey{}, r)
	return ctx
}

// From returns the registry of ctx: the process's, unless WithRegistry gave
// ctx another.
func From(ctx context.Context) *Registry {
	if r, ok := ctx.Value(registryKey{}).(*Registry); ok {
		return r
	}
	return process
}

// HandlersOf returns the live handlers of config.
func (r *Registry) HandlersOf(config Config) []*Handler {
	return slices.DeleteFunc(r.Handlers.All(), func(h *Handler) bool { return h.Config != config })
}

// PageHandlers returns the live handlers whose key sets page connects.
func (r *Registry) PageHandlers(page *Page) []*Handler {
	return slices.DeleteFunc(r.HandlersOf(page.Config), func(h *Handler) bool {
		return page.ClientID != "" && h.Client.ClientID != page.ClientID
	})
}

// Unstored returns the key sets granted and not yet stored of every handler
// whose keystore configuration (the keystore module's JSON, after
// defaults) is keystore. A handler that stops while the keystore refuses
// its last grant leaves that key set to its successor over the same
// keystore, which stores it before any grant of its own, instead of
// spending a refresh token the provider already rotated. An entry stays for
// the life of the process: one per keystore configuration ever loaded.
func (r *Registry) Unstored(keystore []byte) *credential.Unstored {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.unstored == nil {
		r.unstored = make(map[string]*credential.Unstored)
	}
	u := r.unstored[string(keystore)]
	if u == nil {
		u = credential.NewUnstored()
		r.unstored[string(keystore)] = u
	}
	return u
}

// Metadata returns the authorization server metadata that the handlers and
// connect pages read from their issuer: kept for discovery.TTL, so the
// modules of one config that name an issuer read it once, and so does a
// reload soon after.
func (r *Registry) Metadata() *discovery.Cache {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.metadata == nil {
		r.metadata = discovery.NewCache(time.Now)
	}
	return r.metadata
}

// Set is the modules of one kind that are live, between their Provision
// and their Cleanup, in the order they were provisioned. Caddy provisions
// a new config before it cleans up the old one, so during a reload the
// modules of both configs are in it.
type Set[T comparable] struct {
	mu      sync.Mutex // guards modules
	modules []T
}

// Add puts m in the set, once.
func (s *Set[T]) Add(m T) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !slices.Contains(s.modules, m) {
		s.modules = append(s.modules, m)
	}
}

// Remove takes m out of the set.
func (s *Set[T]) Remove(m T) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.modules = slices.DeleteFunc(s.modules, func(x T) bool { return x == m })
}

// All returns a snapshot of the set.
func (s *Set[T]) All() []T {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.modules)
}
