package admin

import (
	"context"
	"net/http"
	"sync"
	"time"

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
// is ok or expiring, and 503 {"status":"failing"} otherwise. It names no
// key set: the route usually answers on a port the cluster reaches, and
// which accounts fail, and why, is for operators (GET
// /oauth2_upstream/health on the admin endpoint). The verdict is worked out
// at most once a second (verdictTTL), so a probe costs the same however
// many key sets there are. It suits a Kubernetes readiness probe; as a
// liveness probe it would restart the sidecar for a credential that only a
// person can fix.
type Health struct {
	// config identifies the Caddy config whose handlers count; a reload's
	// old handlers, still draining, do not.
	config   live.Config
	registry *live.Registry
	verdict  *verdict
}

// verdict is a Health's last worked-out answer.
type verdict struct {
	now     func() time.Time
	mu      sync.Mutex // guards healthy and checked
	healthy bool
	checked time.Time // when healthy was worked out; zero: never
}

// verdictTTL is how long a worked-out verdict answers probes.
const verdictTTL = time.Second

// healthAnswer is the body of a health answer. Only the admin endpoint's
// names the failing key sets.
type healthAnswer struct {
	Status  string          `json:"status"`
	KeySets []failingKeySet `json:"key_sets,omitempty"`
}

// failingKeySet is a key set that cannot serve, as the admin endpoint's
// health answer shows it.
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
	h.config, h.registry, h.verdict = live.ConfigOf(ctx), live.From(ctx), &verdict{now: time.Now}
	return nil
}

// ServeHTTP answers the probe; it never calls next.
func (h *Health) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	if h.isHealthy(r.Context()) {
		return answer.JSON(w, http.StatusOK, healthAnswer{Status: "ok"})
	}
	return answer.JSON(w, http.StatusServiceUnavailable, healthAnswer{Status: "failing"})
}

// isHealthy is the verdict of the last verdictTTL, worked out anew when it
// is older. Probes that come while it is worked out wait for it.
func (h *Health) isHealthy(ctx context.Context) bool {
	v := h.verdict
	v.mu.Lock()
	defer v.mu.Unlock()
	if now := v.now(); v.checked.IsZero() || now.Sub(v.checked) >= verdictTTL {
		v.healthy = len(failingKeySets(ctx, h.registry.HandlersOf(h.config))) == 0
		v.checked = now
	}
	return v.healthy
}

// failingKeySets returns the key sets among those handlers use that cannot
// serve, each once.
func failingKeySets(ctx context.Context, handlers []*live.Handler) []failingKeySet {
	var failing []failingKeySet
	seen := make(map[failingKeySet]bool)
	for _, handler := range handlers {
		for _, s := range handler.StatusesAfter(ctx, "", 0) {
			f := failingKeySet{Name: s.Name, State: s.State, ErrorCode: s.ErrorCode}
			if !s.Healthy() && !seen[f] {
				seen[f] = true
				failing = append(failing, f)
			}
		}
	}
	return failing
}

// health answers, on the admin endpoint, whether every live handler can
// serve, naming the key sets that cannot.
func (a *API) health(w http.ResponseWriter, r *http.Request) {
	if failing := failingKeySets(r.Context(), a.registry.Handlers.All()); len(failing) > 0 {
		answer.JSON(w, http.StatusServiceUnavailable, healthAnswer{Status: "failing", KeySets: failing})
		return
	}
	answer.JSON(w, http.StatusOK, healthAnswer{Status: "ok"})
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
