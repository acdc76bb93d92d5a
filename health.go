package oauth2upstream

import (
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/prometheus/client_golang/prometheus"
)

func init() {
	caddy.RegisterModule(Health{})
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
	config *prometheus.Registry
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
	h.config = ctx.GetMetricsRegistry()
	return nil
}

// ServeHTTP answers the probe; it never calls next.
func (h *Health) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	var failing []failingKeySet
	seen := make(map[failingKeySet]bool)
	for _, handler := range handlersOfConfig(h.config) {
		for _, s := range handler.handlerStatuses(r.Context(), "", 0) {
			f := failingKeySet{Name: s.Name, State: s.State, ErrorCode: s.ErrorCode}
			if !s.Healthy() && !seen[f] {
				seen[f] = true
				failing = append(failing, f)
			}
		}
	}
	if len(failing) > 0 {
		return writeJSON(w, http.StatusServiceUnavailable, healthAnswer{Status: "failing", KeySets: failing})
	}
	return writeJSON(w, http.StatusOK, healthAnswer{Status: "ok"})
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Health)(nil)
	_ caddyhttp.MiddlewareHandler = (*Health)(nil)
)
