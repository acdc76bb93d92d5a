package oauth2upstream

import (
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dustin/go-humanize"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("oauth2_upstream", parseCaddyfile)
	// The token must be on the request before reverse_proxy sends it, so
	// no Caddyfile needs an `order` option or a `route` block for this.
	httpcaddyfile.RegisterDirectiveOrder("oauth2_upstream", httpcaddyfile.Before, "reverse_proxy")
}

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	handler := new(Handler)
	err := handler.UnmarshalCaddyfile(h.Dispenser)
	return handler, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	oauth2_upstream [<matcher>] {
//		token_url       <url>
//		insecure_http
//		client_id       <id>
//		client_secret   <secret>
//		auth_style      basic|post
//		grant           refresh_token|client_credentials
//		scopes          <scope...>
//		param           <name> <value...>
//		key_set         <name>
//		refresh_token   <seed>
//		refresh         proactive|reactive|always
//		refresh_on      <status...>
//		expiry_skew     <duration>
//		token_timeout   <duration>
//		header          <name> [<scheme>|raw]
//		replay_memory   <size>
//		max_replay_body <size>|off
//		keystore        <backend> [<args...>] [{ ... }]
//		notify          <url>
//		encryption_key  <key> [<older key>...]
//		max_wait        <duration>
//		body_timeout    <duration>|off
//	}
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		option := d.Val()
		var err error
		switch option {
		case "token_url":
			err = singleArg(d, &h.TokenURL)
		case "insecure_http":
			if d.NextArg() {
				return d.ArgErr()
			}
			h.InsecureHTTP = true
		case "client_id":
			err = singleArg(d, &h.ClientID)
		case "client_secret":
			err = singleArg(d, &h.ClientSecret)
		case "auth_style":
			err = singleArg(d, &h.AuthStyle)
		case "grant":
			err = singleArg(d, &h.Grant)
		case "key_set":
			err = singleArg(d, &h.KeySet)
		case "refresh_token":
			err = singleArg(d, &h.RefreshToken)
		case "refresh":
			err = singleArg(d, &h.Refresh)
		case "scopes":
			h.Scopes = append(h.Scopes, d.RemainingArgs()...)
			if len(h.Scopes) == 0 {
				return d.ArgErr()
			}
		case "param":
			args := d.RemainingArgs()
			if len(args) < 2 {
				return d.Errf("param: want <name> <value...>, got %d arguments", len(args))
			}
			if h.Params == nil {
				h.Params = make(map[string][]string)
			}
			h.Params[args[0]] = append(h.Params[args[0]], args[1:]...)
		case "refresh_on":
			err = h.parseRefreshOn(d)
		case "expiry_skew":
			err = durationArg(d, &h.ExpirySkew)
		case "token_timeout":
			err = durationArg(d, &h.TokenTimeout)
		case "header":
			args := d.RemainingArgs()
			if len(args) < 1 || len(args) > 2 {
				return d.Errf("header: want <name> [<scheme>|raw], got %d arguments", len(args))
			}
			h.HeaderName = args[0]
			if len(args) == 2 {
				h.HeaderScheme = args[1]
			}
		case "replay_memory":
			err = sizeArg(d, &h.ReplayMemory, "", 0)
		case "max_replay_body":
			err = sizeArg(d, &h.MaxReplayBody, "off", -1)
		case "keystore":
			err = h.parseKeystore(d)
		case "notify":
			err = singleArg(d, &h.Notify)
		case "encryption_key":
			h.EncryptionKeys = d.RemainingArgs()
			if len(h.EncryptionKeys) == 0 {
				return d.Errf("encryption_key: want <key> [<older key>...]")
			}
		case "max_wait":
			err = durationArg(d, &h.MaxWait)
		case "body_timeout":
			var v string
			if err = singleArg(d, &v); err == nil && v == "off" {
				h.BodyTimeout = -1
			} else if err == nil {
				d.Prev()
				err = durationArg(d, &h.BodyTimeout)
			}
		default:
			return d.Errf("unrecognized oauth2_upstream option %q", option)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (h *Handler) parseRefreshOn(d *caddyfile.Dispenser) error {
	args := d.RemainingArgs()
	if len(args) == 0 {
		return d.ArgErr()
	}
	for _, arg := range args {
		status, err := strconv.Atoi(arg)
		if err != nil {
			return d.Errf("refresh_on: %q is not a status code", arg)
		}
		h.RefreshOn = append(h.RefreshOn, status)
	}
	return nil
}

func (h *Handler) parseKeystore(d *caddyfile.Dispenser) error {
	if !d.NextArg() {
		return d.Errf("keystore: want a backend name (file, redis, caddy_storage)")
	}
	backend := d.Val()
	unm, err := caddyfile.UnmarshalModule(d, "oauth2_upstream.keystores."+backend)
	if err != nil {
		return err
	}
	h.KeystoreRaw = caddyconfig.JSONModuleObject(unm, "backend", backend, nil)
	return nil
}

func singleArg(d *caddyfile.Dispenser, dst *string) error {
	option := d.Val()
	if !d.NextArg() {
		return d.Errf("%s: want one argument", option)
	}
	*dst = d.Val()
	if d.NextArg() {
		return d.Errf("%s: want one argument, got more", option)
	}
	return nil
}

func durationArg(d *caddyfile.Dispenser, dst *caddy.Duration) error {
	option := d.Val()
	var s string
	if err := singleArg(d, &s); err != nil {
		return err
	}
	dur, err := caddy.ParseDuration(s)
	if err != nil {
		return d.Errf("%s: %q is not a duration: %v", option, s, err)
	}
	*dst = caddy.Duration(dur)
	return nil
}

// sizeArg reads a size such as 64MiB, 1MB or 1048576 (bytes); the word
// keyword, when not empty, stands for the value keywordValue.
func sizeArg(d *caddyfile.Dispenser, dst *int64, keyword string, keywordValue int64) error {
	option := d.Val()
	var s string
	if err := singleArg(d, &s); err != nil {
		return err
	}
	if keyword != "" && s == keyword {
		*dst = keywordValue
		return nil
	}
	size, err := humanize.ParseBytes(s)
	if err != nil || size > 1<<62 {
		return d.Errf("%s: %q is not a size (like 64MiB or 1048576)", option, strings.TrimSpace(s))
	}
	*dst = int64(size)
	return nil
}

// Interface guard
var _ caddyfile.Unmarshaler = (*Handler)(nil)
