package oauth2upstream

import (
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
)

func init() {
	caddy.RegisterModule(ConnectAdmin{})
}

// connectAdminPrefix is where ConnectAdmin's route lives on Caddy's admin
// endpoint, beside the AdminAPI's.
const connectAdminPrefix = adminPrefix + "connect/"

// liveConnects is every live oauth2_upstream_connect handler of the
// process, for connect-url.
var liveConnects liveSet[*Connect]

func registerConnect(c *Connect)     { liveConnects.add(c) }
func unregisterConnect(c *Connect)   { liveConnects.remove(c) }
func registeredConnects() []*Connect { return liveConnects.all() }

// ConnectAdmin is the admin endpoint's route that tells where a key set is
// connected: the address of its Connect button on the connect page of a
// live oauth2_upstream_connect handler. The page itself runs the flow, in
// the browser of whoever opens the address.
//
//	GET /oauth2_upstream/connect/<name>   {"key_set":"<name>","connect_url":"https://..."}
type ConnectAdmin struct {
	// connects returns the connect handlers to look in; tests narrow it.
	connects func() []*Connect
}

// connectURLAnswer is the route's answer.
type connectURLAnswer struct {
	KeySet     string `json:"key_set"`
	ConnectURL string `json:"connect_url"`
}

// CaddyModule returns the Caddy module information.
func (ConnectAdmin) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.oauth2_upstream_connect",
		New: func() caddy.Module { return new(ConnectAdmin) },
	}
}

// Routes returns the route; its pattern is more specific than AdminAPI's,
// so Caddy's admin mux sends it here.
func (a *ConnectAdmin) Routes() []caddy.AdminRoute {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+connectAdminPrefix+"{name}", a.connectURL)
	mux.HandleFunc(connectAdminPrefix+"{name}", methodNotAllowed(http.MethodGet))
	mux.HandleFunc(connectAdminPrefix, func(w http.ResponseWriter, r *http.Request) {
		adminProblem(w, http.StatusNotFound, "Not found", fmt.Sprintf("no such resource %q", r.URL.Path), "")
	})
	serve := func(w http.ResponseWriter, r *http.Request) error {
		mux.ServeHTTP(w, r)
		return nil
	}
	return []caddy.AdminRoute{{Pattern: connectAdminPrefix, Handler: caddy.AdminHandlerFunc(serve)}}
}

// connectURL answers the Connect address of key set name on the first
// live connect page whose handlers serve it.
func (a *ConnectAdmin) connectURL(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if err := keystore.ValidateName(name); err != nil {
		adminProblem(w, http.StatusBadRequest, "Invalid key set name", err.Error(), "")
		return
	}
	connects := registeredConnects()
	if a.connects != nil {
		connects = a.connects()
	}
	if len(connects) == 0 {
		adminProblem(w, http.StatusNotFound, "No connect page",
			"no oauth2_upstream_connect handler is configured: add one on a site of its own", name)
		return
	}
	for _, c := range connects {
		handlers := c.serving(name)
		if len(handlers) == 0 {
			continue
		}
		if _, err := connectable(name, handlers); err != nil {
			adminProblem(w, http.StatusConflict, "Cannot connect", err.Error(), name)
			return
		}
		base := c.publicBase()
		if base == "" {
			adminProblem(w, http.StatusConflict, "Connect page address unknown",
				"the connect page's address is unknown: set its redirect_url", name)
			return
		}
		writeJSON(w, http.StatusOK, connectURLAnswer{KeySet: name, ConnectURL: base + keySetsPath + name + "/connect"})
		return
	}
	adminProblem(w, http.StatusNotFound, "Unknown key set",
		fmt.Sprintf("no connect page's oauth2_upstream handlers can use key set %q", name), name)
}

// publicBase is the connect page's scheme and host: those of RedirectURL
// when it is set, else its server's first listener.
func (c *Connect) publicBase() string {
	if u, err := url.Parse(c.RedirectURL); err == nil && c.RedirectURL != "" {
		return origin(u)
	}
	return c.listenBase
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

// Interface guard
var _ caddy.AdminRouter = (*ConnectAdmin)(nil)
