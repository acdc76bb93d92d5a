package connect

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

// The page authenticates no one, and whoever reaches it can connect a key
// set to an account of their own or spend refreshes (DESIGN.md invariant
// 11). Provision therefore refuses a page that no authenticating handler
// runs before, in the routes of its server: basic_auth, which adapts to an
// authentication handler, or forward_auth, which adapts to a reverse_proxy
// whose handle_response routes go on to the next handler only for a 2xx
// answer of the auth service. Such a handler guards the page when it runs
// for every request that reaches it: earlier in the page's route, or in an
// earlier route that no matcher or group narrows, at the page's level or in
// a subroute that leads to it.

// errUnguarded is the refusal of a page nothing authenticates in front of.
var errUnguarded = errors.New("oauth2_upstream_connect authenticates no one, and no authenticating handler runs before it " +
	"for every request that reaches it: put basic_auth or forward_auth before it, in the same site or route, " +
	"with no matcher of its own; or set allow_unauthenticated if something outside Caddy authenticates " +
	"every request that reaches this server (README, \"Connect page\")")

// errNotInRoutes is the refusal of a page the check cannot find, so cannot
// judge: one in a reverse_proxy's handle_response routes, say.
var errNotInRoutes = errors.New("oauth2_upstream_connect is not in its server's routes, subroutes, error routes or named routes, " +
	"so what runs before it cannot be told: serve it from a site's routes, after basic_auth or forward_auth; " +
	"or set allow_unauthenticated if something outside Caddy authenticates every request that reaches this server " +
	"(README, \"Connect page\")")

// refuseUnguarded returns an error when the page whose config is own (as
// json.Marshal gives it, before Provision changes it) has no authenticating
// handler before it in the server ctx provisions. Outside a server there
// is nothing to judge.
func (c *Connect) refuseUnguarded(ctx caddy.Context, own []byte) error {
	if c.AllowUnauthenticated {
		return nil
	}
	// The http app provisions each server with itself in the context
	// (caddyhttp.App.Provision), as internal/selfproxy reads it.
	srv, _ := ctx.Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server)
	if srv == nil {
		return nil
	}
	// Each list runs on its own: error routes after a handler failed (an
	// authentication refusal among them), named routes wherever invoked.
	lists := []caddyhttp.RouteList{srv.Routes}
	if srv.Errors != nil {
		lists = append(lists, srv.Errors.Routes)
	}
	for _, route := range srv.NamedRoutes {
		lists = append(lists, caddyhttp.RouteList{*route})
	}
	w := guardWalk{own: own}
	for _, routes := range lists {
		if _, err := w.routes(routes, false); err != nil {
			return fmt.Errorf("reading the routes before oauth2_upstream_connect: %w", err)
		}
	}
	switch {
	case w.unguarded:
		return errUnguarded
	case !w.found:
		return errNotInRoutes
	}
	return nil
}

// guardWalk looks for a page in routes, in the order their handlers run.
// It reads the raw JSON of routes not yet provisioned, and the handlers of
// those that are (caddy.Context.LoadModule clears a route's raw handlers
// once it has loaded them all, so the routes before the page's hold only
// their modules, while the page's own route keeps its raw JSON until all
// its handlers are loaded). Only unprovisioned pages can be the one being
// provisioned; those provisioned already passed this check themselves. The
// page is known by its config: when several pages share one, each of them
// must be guarded.
type guardWalk struct {
	own       []byte // the config of the page being provisioned
	found     bool   // a page of that config is in the routes
	unguarded bool   // one such runs with nothing authenticating before it
}

// routes walks routes, guarded saying whether an authenticating handler
// runs before each of them. It returns whether one runs before whatever
// follows routes.
func (w *guardWalk) routes(routes caddyhttp.RouteList, guarded bool) (bool, error) {
	for i, route := range routes {
		handlers, err := routeHandlers(route)
		if err != nil {
			return false, fmt.Errorf("route %d: %w", i, err)
		}
		inRoute := guarded
		for _, h := range handlers {
			switch {
			case h.authenticates():
				inRoute = true
			case h.name == "subroute":
				if inRoute, err = w.routes(h.routes, inRoute); err != nil {
					return false, fmt.Errorf("route %d: subroute: %w", i, err)
				}
			case h.page != nil && bytes.Equal(h.page, w.own):
				w.found = true
				w.unguarded = w.unguarded || !inRoute
			}
		}
		// A matcher, or a group (whose first matching route is the only
		// one of it that runs), lets requests past the route without its
		// handlers: they guard only the rest of it.
		if len(route.MatcherSetsRaw) == 0 && len(route.MatcherSets) == 0 && route.Group == "" {
			guarded = inRoute
		}
	}
	return guarded, nil
}

// handlerView is what the check reads of one handler, raw or provisioned.
type handlerView struct {
	name           string
	routes         caddyhttp.RouteList         // a subroute's
	handleResponse []caddyhttp.ResponseHandler // a reverse_proxy's
	page           []byte                      // an unprovisioned page's config, as json.Marshal gives it
}

// routeHandlers returns the handlers of route in order: from its raw JSON
// while it has any, else its provisioned modules.
func routeHandlers(route caddyhttp.Route) ([]handlerView, error) {
	var views []handlerView
	if route.HandlersRaw == nil {
		for _, h := range route.Handlers {
			v := handlerView{name: caddy.GetModuleName(h)}
			switch h := h.(type) {
			case *caddyhttp.Subroute:
				v.routes = h.Routes
			case *reverseproxy.Handler:
				v.handleResponse = h.HandleResponse
			}
			views = append(views, v)
		}
		return views, nil
	}
	for _, raw := range route.HandlersRaw {
		v, err := rawHandler(raw)
		if err != nil {
			return nil, err
		}
		views = append(views, v)
	}
	return views, nil
}

// rawHandler reads one handler's raw JSON: of a subroute its routes, of a
// reverse_proxy its handle_response, of a page its config.
func rawHandler(raw json.RawMessage) (handlerView, error) {
	var v handlerView
	var h struct {
		Name string `json:"handler"`
	}
	if err := json.Unmarshal(raw, &h); err != nil {
		return v, fmt.Errorf("decoding a handler: %w", err)
	}
	v.name = h.Name
	var err error
	switch h.Name {
	case "subroute":
		var sub struct {
			Routes caddyhttp.RouteList `json:"routes"`
		}
		err = json.Unmarshal(raw, &sub)
		v.routes = sub.Routes
	case "reverse_proxy":
		var rp struct {
			HandleResponse []caddyhttp.ResponseHandler `json:"handle_response"`
		}
		err = json.Unmarshal(raw, &rp)
		v.handleResponse = rp.HandleResponse
	case "oauth2_upstream_connect":
		var page Connect
		if err = json.Unmarshal(raw, &page); err == nil {
			v.page, err = json.Marshal(&page)
		}
	}
	if err != nil {
		return v, fmt.Errorf("decoding %s: %w", h.Name, err)
	}
	return v, nil
}

// authenticates reports whether the handler lets a request on to the next
// only once someone is authenticated: an authentication handler (what
// basic_auth adapts to), or a reverse_proxy that forward_auth adapts to,
// whose handle_response routes go on to the next handler, each matching
// only 2xx answers of the auth service; any other answer goes back to the
// client.
func (h handlerView) authenticates() bool {
	switch h.name {
	case "authentication":
		return true
	case "reverse_proxy":
		passes := false
		for _, rh := range h.handleResponse {
			if rh.StatusCode.String() != "" {
				continue // answers the upstream's response, with another status: never the next handler
			}
			if rh.Match == nil || len(rh.Match.StatusCode) == 0 {
				return false
			}
			for _, code := range rh.Match.StatusCode {
				if code != 2 && (code < 200 || code > 299) {
					return false
				}
			}
			passes = true
		}
		return passes
	}
	return false
}
