package admin

import (
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/oauth2upstream/caddy-oauth2-upstream/internal/answer"
	"github.com/oauth2upstream/caddy-oauth2-upstream/internal/live"
)

func init() {
	caddy.RegisterModule(Health{})
	httpcaddyfile.RegisterHandlerDirective("oauth2_upstream_health", parseHealthCaddyfile)
	// It answers by itself, like respond; before respond also puts it
	// ahead of oauth2_upstream (ordered before reverse_proxy), so that
	// `oauth2_upstream_health /healthz` in a proxying site answers the
	// probe instead of proxying it.
	httpcaddyfile.RegisterDirectiveOrder("oauth2_upstream_health", httpcaddyfile.Before, "respond")
}

// Health answers whether the oauth2_upstream handlers of its config can
// serve: 200 {"status":"ok"} while every key set they use (each one's
// configured key set, and every key set a placeholder key_set has loaded)
// is ok or expiring, and 503 naming the failing key sets and their states
// otherwise. It suits a Kubernetes readiness probe; as a liveness probe it
// would restart the sidecar for a credential that only a person can fix.
type Health struct {
	// config identifies the Caddy config whose handlers count; a reload's
	// old handlers, still draining, do not.
	config   live.Config
	registry *live.Registry
}

// healthAnswer is the body of the health route's answer.
type healthAnswer struct {
	Status  string          `json:"status"`
	KeySets []failingKeySet `json:"key_sets,omitempty"`
}

// failingKeySet is a key set that cannot serve, as the health route shows it.
type failingKeySet struct {
	Name      string `json:"name"`
	State     string `json:"state"`
	ErrorCode string `json:"error_code,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (Health) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.oauth2_upstream_health",
		New: func() caddy.Module { return new(Health) },
	}
}

// Provision notes which config the route belongs to.
func (h *Health) Provision(ctx caddy.Context) error {
	h.config, h.registry = live.ConfigOf(ctx), live.From(ctx)
	return nil
}

// ServeHTTP answers the probe; it never calls next.
func (h *Health) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	var failing []failingKeySet
	seen := make(map[failingKeySet]bool)
	for _, handler := range h.registry.HandlersOf(h.config) {
		for _, s := range handler.StatusesAfter(r.Context(), "", 0) {
			f := failingKeySet{Name: s.Name, State: s.State, ErrorCode: s.ErrorCode}
			if !s.Healthy() && !seen[f] {
				seen[f] = true
				failing = append(failing, f)
			}
		}
	}
	if len(failing) > 0 {
		return answer.JSON(w, http.StatusServiceUnavailable, healthAnswer{Status: "failing", KeySets: failing})
	}
	return answer.JSON(w, http.StatusOK, healthAnswer{Status: "ok"})
}

func parseHealthCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	health := new(Health)
	err := health.UnmarshalCaddyfile(h.Dispenser)
	return health, err
}

// UnmarshalCaddyfile sets up the health route from Caddyfile tokens. It
// takes no options. Syntax:
//
//	oauth2_upstream_health [<matcher>]
func (h *Health) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	if d.NextBlock(0) {
		return d.Errf("oauth2_upstream_health takes no options, got %q", d.Val())
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Health)(nil)
	_ caddyhttp.MiddlewareHandler = (*Health)(nil)
	_ caddyfile.Unmarshaler       = (*Health)(nil)
)
