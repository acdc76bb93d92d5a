// Package proxyhops reads, from the raw JSON of the routes of the HTTP
// server being provisioned, the reverse_proxy handlers that run after an
// oauth2_upstream handler: what the checks an oauth2_upstream handler makes
// when it is provisioned judge (the self-proxy loop, the Expect handshake).
package proxyhops

import (
	"encoding/json"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

// Hop is what the checks read of a reverse_proxy handler's JSON.
type Hop struct {
	Upstreams reverseproxy.UpstreamPool `json:"upstreams"`
	Transport Transport                 `json:"transport"`
}

// Transport is what the checks read of a reverse_proxy's transport.
type Transport struct {
	Protocol        string                         `json:"protocol"`
	TLS             json.RawMessage                `json:"tls"`
	Resolver        *reverseproxy.UpstreamResolver `json:"resolver"`
	NetworkProxy    json.RawMessage                `json:"network_proxy"`
	ForwardProxyURL string                         `json:"forward_proxy_url"`
	// ExpectContinueTimeout is the http transport's: without it Go sends a
	// body at once, whatever the request's Expect header says.
	ExpectContinueTimeout caddy.Duration `json:"expect_continue_timeout"`
}

// HTTP reports whether the transport is reverse_proxy's http transport
// (the default), whose options the fields above are.
func (t Transport) HTTP() bool { return t.Protocol == "" || t.Protocol == "http" }

// OfServer returns the HTTP server being provisioned, and the
// reverse_proxy handlers that run after an oauth2_upstream handler in its
// routes. The http app provisions each server with itself in the context
// (caddyhttp.App.Provision), so a handler knows the server whose routes
// hold it; outside one, or with routes that do not decode (their handlers
// fail their own provisioning, with Caddy's error), there are none.
func OfServer(ctx caddy.Context) (*caddyhttp.Server, []Hop) {
	srv, _ := ctx.Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server)
	if srv == nil {
		return nil, nil
	}
	hops, _, err := after(srv.Routes, false)
	if err != nil {
		return srv, nil
	}
	return srv, hops
}

// after walks routes depth first, in the order their handlers run, and
// returns every reverse_proxy that comes after an oauth2_upstream handler
// (handlerBefore says whether one came before routes). It reads the
// routes' raw JSON: routes already provisioned have none left
// (caddy.Context.LoadModule clears it), and their oauth2_upstream handlers
// judged what follows them when they were provisioned, as the caller does
// now; the route being provisioned keeps its raw handlers until all of
// them are loaded.
func after(routes caddyhttp.RouteList, handlerBefore bool) ([]Hop, bool, error) {
	var hops []Hop
	for _, route := range routes {
		for _, raw := range route.HandlersRaw {
			var handler struct {
				Name   string              `json:"handler"`
				Routes caddyhttp.RouteList `json:"routes"`
			}
			if err := json.Unmarshal(raw, &handler); err != nil {
				return nil, handlerBefore, err
			}
			switch handler.Name {
			case "oauth2_upstream":
				handlerBefore = true
			case "subroute":
				nested, nestedAfter, err := after(handler.Routes, handlerBefore)
				if err != nil {
					return nil, handlerBefore, err
				}
				hops, handlerBefore = append(hops, nested...), nestedAfter
			case "reverse_proxy":
				if !handlerBefore {
					continue
				}
				var hop Hop
				if err := json.Unmarshal(raw, &hop); err != nil {
					return nil, handlerBefore, err
				}
				hops = append(hops, hop)
			}
		}
	}
	return hops, handlerBefore, nil
}
