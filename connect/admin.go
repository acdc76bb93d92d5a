package connect

import (
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/oauth2upstream/caddy-oauth2-upstream/internal/answer"
	"github.com/oauth2upstream/caddy-oauth2-upstream/internal/live"
)

func init() {
	caddy.RegisterModule(ConnectAdmin{})
}

// ConnectAdmin is the admin endpoint's route that tells where a key set is
// connected: the address of its Connect button on the connect page of a
// live oauth2_upstream_connect handler. The page itself runs the flow, in
// the browser of whoever opens the address.
//
//	GET /oauth2_upstream/connect/<name>   {"key_set":"<name>","connect_url":"https://..."}
type ConnectAdmin struct {
	registry *live.Registry // the live connect pages and handlers
}

// CaddyModule returns the Caddy module information.
func (ConnectAdmin) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.oauth2_upstream_connect",
		New: func() caddy.Module { return new(ConnectAdmin) },
	}
}

// Provision finds the registry of live connect pages.
func (a *ConnectAdmin) Provision(ctx caddy.Context) error {
	a.registry = live.From(ctx)
	return nil
}

// Routes returns the route; its pattern is more specific than AdminAPI's,
// so Caddy's admin mux sends it here.
func (a *ConnectAdmin) Routes() []caddy.AdminRoute {
	mux := http.NewServeMux()
	prefix := answer.ConnectAdminPrefix
	mux.HandleFunc("GET "+prefix+"{name}", live.WithKeySetName(func(w http.ResponseWriter, _ *http.Request, err error) {
		answer.AdminProblem(w, http.StatusBadRequest, "Invalid key set name", err.Error(), "")
	}, a.connectURL))
	mux.HandleFunc(prefix+"{name}", answer.MethodNotAllowed(http.MethodGet))
	mux.HandleFunc(prefix, answer.NotFound)
	serve := func(w http.ResponseWriter, r *http.Request) error {
		mux.ServeHTTP(w, r)
		return nil
	}
	return []caddy.AdminRoute{{Pattern: answer.ConnectAdminPrefix, Handler: caddy.AdminHandlerFunc(serve)}}
}

// connectURL answers the Connect address of key set name on the first
// live connect page whose handlers serve it.
func (a *ConnectAdmin) connectURL(w http.ResponseWriter, _ *http.Request, name string) {
	pages := a.registry.Pages.All()
	if len(pages) == 0 {
		answer.AdminProblem(w, http.StatusNotFound, "No connect page",
			"no oauth2_upstream_connect handler is configured: add one on a site of its own", name)
		return
	}
	for _, page := range pages {
		handlers := live.Serving(a.registry.PageHandlers(page), name)
		if len(handlers) == 0 {
			continue
		}
		if _, err := connectable(name, handlers); err != nil {
			answer.AdminProblem(w, http.StatusConflict, "Cannot connect", err.Error(), name)
			return
		}
		if page.Base == "" {
			answer.AdminProblem(w, http.StatusConflict, "Connect page address unknown",
				"the connect page's address is unknown: set its redirect_url", name)
			return
		}
		answer.JSON(w, http.StatusOK, answer.ConnectURL{KeySet: name, ConnectURL: page.Base + keySetsPath + name + "/connect"})
		return
	}
	answer.AdminProblem(w, http.StatusNotFound, "Unknown key set",
		fmt.Sprintf("no connect page's oauth2_upstream handlers can use key set %q", name), name)
}

// publicBase is the connect page's scheme and host: those of RedirectURL
// when it is set, else the first listener of the server ctx provisions.
func (c *Connect) publicBase(ctx caddy.Context) string {
	if u, err := url.Parse(c.RedirectURL); err == nil && c.RedirectURL != "" {
		return origin(u)
	}
	if srv, _ := ctx.Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server); srv != nil {
		return listenBase(srv)
	}
	return ""
}

// listenBase is srv's first listen address as a URL: https when the
// server has TLS connection policies, and localhost for a wildcard host.
func listenBase(srv *caddyhttp.Server) string {
	if len(srv.Listen) == 0 {
		return ""
	}
	addr, err := caddy.ParseNetworkAddress(srv.Listen[0])
	if err != nil || addr.IsUnixNetwork() || addr.IsFdNetwork() {
		return ""
	}
	host := addr.Host
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "localhost"
	}
	scheme := "http"
	if len(srv.TLSConnPolicies) > 0 {
		scheme = "https"
	}
	return scheme + "://" + net.JoinHostPort(host, strconv.FormatUint(uint64(addr.StartPort), 10))
}

// Interface guards
var (
	_ caddy.Provisioner = (*ConnectAdmin)(nil)
	_ caddy.AdminRouter = (*ConnectAdmin)(nil)
)
