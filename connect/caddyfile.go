package connect

import (
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/oauth2upstream/caddy-oauth2-upstream/internal/caddyfileopt"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("oauth2_upstream_connect", parseConnectCaddyfile)
	// The page answers every request of its site; basic_auth and
	// forward_auth, which guard it, come earlier in Caddy's own order.
	httpcaddyfile.RegisterDirectiveOrder("oauth2_upstream_connect", httpcaddyfile.Before, "respond")
}

func parseConnectCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	c := new(Connect)
	err := c.UnmarshalCaddyfile(h.Dispenser)
	return c, err
}

// UnmarshalCaddyfile sets up the connect page from Caddyfile tokens.
// Syntax:
//
//	oauth2_upstream_connect [<matcher>] {
//		provider        <name> [<key>=<value>...]
//		authorize_url   <url>
//		insecure_http
//		callback_path   <path>
//		redirect_url    <url>
//		scopes          <scope...>
//		callback_fields <name...>
//		authorize_param <name> <value>
//		issuer          <url>
//		client_id       <id>
//		flow_timeout    <duration>
//		allow_unauthenticated
//	}
func (c *Connect) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	stringOptions := map[string]*string{
		"authorize_url": &c.AuthorizeURL, "callback_path": &c.CallbackPath,
		"redirect_url": &c.RedirectURL, "issuer": &c.Issuer, "client_id": &c.ClientID,
	}
	for d.NextBlock(0) {
		option := d.Val()
		if dst, ok := stringOptions[option]; ok {
			if !d.AllArgs(dst) {
				return d.ArgErr()
			}
			continue
		}
		switch option {
		case "insecure_http":
			if d.NextArg() {
				return d.ArgErr()
			}
			c.InsecureHTTP = true
		case "allow_unauthenticated":
			if d.NextArg() {
				return d.ArgErr()
			}
			c.AllowUnauthenticated = true
		case "scopes":
			c.Scopes = append(c.Scopes, d.RemainingArgs()...)
			if len(c.Scopes) == 0 {
				return d.ArgErr()
			}
		case "callback_fields":
			c.CallbackFields = append(c.CallbackFields, d.RemainingArgs()...)
			if len(c.CallbackFields) == 0 {
				return d.ArgErr()
			}
		case "authorize_param":
			var name, value string
			if !d.AllArgs(&name, &value) {
				return d.ArgErr()
			}
			if c.AuthorizeParams == nil {
				c.AuthorizeParams = make(map[string]string)
			}
			if _, dup := c.AuthorizeParams[name]; dup {
				return d.Errf("authorize_param %q given twice", name)
			}
			c.AuthorizeParams[name] = value
		case "provider":
			if err := c.unmarshalProvider(d); err != nil {
				return err
			}
		case "flow_timeout":
			if err := caddyfileopt.Duration(d, &c.FlowTimeout, true); err != nil {
				return err
			}
		default:
			return d.Errf("unknown oauth2_upstream_connect option %q", option)
		}
	}
	return nil
}

// Interface guard
var _ caddyfile.Unmarshaler = (*Connect)(nil)
