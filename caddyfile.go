package oauth2upstream

import (
	"net/http"
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/oauth2upstream/caddy-oauth2-upstream/internal/caddyfileopt"
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
//		provider        <name> [<key>=<value>...]
//		token_url       <url>
//		issuer          <url>
//		discovery_timeout <duration>
//		insecure_http
//		allow_trace
//		allow_admin_tcp
//		client_id       <id>
//		client_secret   <secret>
//		client_auth     secret_basic|secret_post|client_secret_jwt|private_key_jwt|tls_client_auth|none
//		auth_style      basic|post
//		signing_key     <file|pem>   # more keys and claims: unmarshalKeyOption
//		grant           refresh_token|client_credentials|jwt_bearer|password
//		username        <resource owner>     # grant password only
//		password        <{env.PASSWORD}>
//		scopes          <scope...>
//		param           <name> <value...>
//		key_set         <name>
//		key_set_allow   <regexp>
//		refresh_token   <seed>
//		bind_unbound
//		refresh         proactive|reactive|always
//		refresh_on      <status|invalid_token...>
//		min_refresh_interval <duration>|off
//		max_retry_after <duration>
//		keepalive <duration>|off
//		reauthorize_warning <duration>|off
//		max_concurrent_grants <n>|off
//		expiry_skew     <duration>
//		token_timeout   <duration>
//		header          <name> [<scheme>|raw]
//		extra_fields    <name...>
//		replay_memory   <size>
//		max_replay_body <size>|off
//		keystore        <backend> [<args...>] [{ ... }]
//		notify          <url>
//		notify_secret   <secret>
//		notify_include_tokens
//		notify_header   <name> <value>
//		encryption_key  <key> [<older key>...]
//		max_wait        <duration>
//		body_timeout    <duration>|off
//		upstream_expect auto|on|off
//		zero_copy_min   <size>|off
//	}
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		option := d.Val()
		if target, ok := h.stringOptions()[option]; ok {
			if n := d.CountRemainingArgs(); !d.AllArgs(target) {
				return d.Errf("%s: want one argument, got %d", option, n)
			}
			continue
		}
		if target, ok := h.durationOptions()[option]; ok {
			// Zero would silently mean the default: refused.
			if err := caddyfileopt.Duration(d, target, true); err != nil {
				return err
			}
			continue
		}
		if err := h.unmarshalOption(d, option); err != nil {
			return err
		}
	}
	return nil
}

// stringOptions are the options that take one word, by name.
func (h *Handler) stringOptions() map[string]*string {
	return map[string]*string{
		"token_url": &h.TokenURL, "client_id": &h.ClientID, "client_secret": &h.ClientSecret,
		"auth_style": &h.AuthStyle, "grant": &h.Grant, "key_set": &h.KeySet, "key_set_allow": &h.KeySetAllow,
		"refresh_token": &h.RefreshToken, "refresh": &h.Refresh, "upstream_expect": &h.UpstreamExpect, "notify": &h.Notify,
		"notify_secret": &h.NotifySecret, "issuer": &h.Issuer, "username": &h.Username, "password": &h.Password,
	}
}

// durationOptions are the options that take one duration, by name.
func (h *Handler) durationOptions() map[string]*caddy.Duration {
	return map[string]*caddy.Duration{
		"expiry_skew": &h.ExpirySkew, "token_timeout": &h.TokenTimeout, "max_wait": &h.MaxWait,
		"max_retry_after": &h.MaxRetryAfter, "discovery_timeout": &h.DiscoveryTimeout,
	}
}

// unmarshalOption reads an option with arguments of its own shape.
func (h *Handler) unmarshalOption(d *caddyfile.Dispenser, option string) error {
	switch option {
	case "insecure_http":
		if d.NextArg() {
			return d.ArgErr()
		}
		h.InsecureHTTP = true
	case "allow_trace":
		if d.NextArg() {
			return d.ArgErr()
		}
		h.AllowTrace = true
	case "allow_admin_tcp":
		if d.NextArg() {
			return d.ArgErr()
		}
		h.AllowAdminTCP = true
	case "bind_unbound":
		if d.NextArg() {
			return d.ArgErr()
		}
		h.BindUnbound = true
	case "scopes":
		h.Scopes = append(h.Scopes, d.RemainingArgs()...)
		if len(h.Scopes) == 0 {
			return d.ArgErr()
		}
	case "extra_fields":
		args := d.RemainingArgs()
		if len(args) == 0 {
			return d.Errf("extra_fields: want <name...>")
		}
		h.ExtraFields = append(h.ExtraFields, args...)
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
		return h.parseRefreshOn(d)
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
		return caddyfileopt.Size(d, &h.ReplayMemory, "", 0)
	case "max_replay_body":
		return caddyfileopt.Size(d, &h.MaxReplayBody, "off", -1)
	case "zero_copy_min":
		return caddyfileopt.Size(d, &h.ZeroCopyMin, "off", -1)
	case "keystore":
		return h.parseKeystore(d)
	case "provider":
		return h.unmarshalProvider(d)
	case "notify_include_tokens":
		if d.NextArg() {
			return d.ArgErr()
		}
		h.NotifyIncludeTokens = true
	case "notify_header":
		args := d.RemainingArgs()
		if len(args) != 2 {
			return d.Errf("notify_header: want <name> <value>, got %d arguments", len(args))
		}
		if h.NotifyHeaders == nil {
			h.NotifyHeaders = make(http.Header)
		}
		h.NotifyHeaders[args[0]] = append(h.NotifyHeaders[args[0]], args[1])
	case "encryption_key":
		h.EncryptionKeys = d.RemainingArgs()
		if len(h.EncryptionKeys) == 0 {
			return d.Errf("encryption_key: want <key> [<older key>...]")
		}
	case "body_timeout":
		return caddyfileopt.DurationOrOff(d, &h.BodyTimeout)
	case "min_refresh_interval":
		return caddyfileopt.DurationOrOff(d, &h.MinRefreshInterval)
	case "keepalive":
		return caddyfileopt.DurationOrOff(d, &h.Keepalive)
	case "reauthorize_warning":
		return caddyfileopt.DurationOrOff(d, &h.ReauthorizeWarning)
	case "max_concurrent_grants":
		return caddyfileopt.CountOrOff(d, &h.MaxConcurrentGrants)
	default:
		return h.unmarshalKeyOption(d, option)
	}
	return nil
}

// parseRefreshOn reads refresh_on's statuses, and the word invalid_token:
// a 401 whose WWW-Authenticate says error="invalid_token".
func (h *Handler) parseRefreshOn(d *caddyfile.Dispenser) error {
	args := d.RemainingArgs()
	if len(args) == 0 {
		return d.ArgErr()
	}
	for _, arg := range args {
		if arg == invalidTokenError {
			h.RefreshOnInvalidToken = true
			continue
		}
		status, err := strconv.Atoi(arg)
		if err != nil {
			return d.Errf("refresh_on: %q is neither a status code nor %s", arg, invalidTokenError)
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

// Interface guard
var _ caddyfile.Unmarshaler = (*Handler)(nil)
