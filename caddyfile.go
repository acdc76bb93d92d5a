package oauth2upstream

import (
	"net/http"
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

	httpcaddyfile.RegisterHandlerDirective("oauth2_upstream_health", parseHealthCaddyfile)
	// It answers by itself, like respond; before respond also puts it
	// ahead of oauth2_upstream (ordered before reverse_proxy), so that
	// `oauth2_upstream_health /healthz` in a proxying site answers the
	// probe instead of proxying it.
	httpcaddyfile.RegisterDirectiveOrder("oauth2_upstream_health", httpcaddyfile.Before, "respond")
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
//		client_auth     secret_basic|secret_post|private_key_jwt|tls_client_auth|none
//		auth_style      basic|post
//		signing_key     <file|pem>   # more keys and claims: unmarshalKeyOption
//		grant           refresh_token|client_credentials|jwt_bearer
//		scopes          <scope...>
//		param           <name> <value...>
//		key_set         <name>
//		key_set_allow   <regexp>
//		refresh_token   <seed>
//		refresh         proactive|reactive|always
//		refresh_on      <status|invalid_token...>
//		min_refresh_interval <duration>|off
//		max_retry_after <duration>
//		keepalive <duration>|off
//		max_concurrent_grants <n>|off
//		expiry_skew     <duration>
//		token_timeout   <duration>
//		header          <name> [<scheme>|raw]
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
			if err := parseDuration(d, target, true); err != nil {
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
		"notify_secret": &h.NotifySecret,
	}
}

// durationOptions are the options that take one duration, by name.
func (h *Handler) durationOptions() map[string]*caddy.Duration {
	return map[string]*caddy.Duration{
		"expiry_skew": &h.ExpirySkew, "token_timeout": &h.TokenTimeout, "max_wait": &h.MaxWait,
		"max_retry_after": &h.MaxRetryAfter,
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
		return parseSize(d, &h.ReplayMemory, "", 0)
	case "max_replay_body":
		return parseSize(d, &h.MaxReplayBody, "off", -1)
	case "keystore":
		return h.parseKeystore(d)
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
		return parseDurationOrOff(d, &h.BodyTimeout)
	case "min_refresh_interval":
		return parseDurationOrOff(d, &h.MinRefreshInterval)
	case "keepalive":
		return parseDurationOrOff(d, &h.Keepalive)
	case "max_concurrent_grants":
		return parseCountOrOff(d, &h.MaxConcurrentGrants)
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

// parseDuration reads the one duration argument of the current option;
// with positive, a duration of zero or less is refused.
func parseDuration(d *caddyfile.Dispenser, dst *caddy.Duration, positive bool) error {
	option := d.Val()
	var s string
	if !d.AllArgs(&s) {
		return d.ArgErr()
	}
	dur, err := caddy.ParseDuration(s)
	if err != nil {
		return d.Errf("%s: %q is not a duration: %v", option, s, err)
	}
	if positive && dur <= 0 {
		return d.Errf("%s must be a positive duration, got %q", option, s)
	}
	*dst = caddy.Duration(dur)
	return nil
}

// parseDurationOrOff reads the one argument of the current option: a
// positive duration, or "off" for -1.
func parseDurationOrOff(d *caddyfile.Dispenser, dst *caddy.Duration) error {
	if d.CountRemainingArgs() == 1 && d.NextArg() {
		if d.Val() == "off" {
			*dst = -1
			return nil
		}
		d.Prev() // back to the option's name, for parseDuration
	}
	return parseDuration(d, dst, true)
}

// parseCountOrOff reads a positive whole number, or "off" as -1.
func parseCountOrOff(d *caddyfile.Dispenser, dst *int) error {
	option := d.Val()
	var s string
	if !d.AllArgs(&s) {
		return d.ArgErr()
	}
	if s == "off" {
		*dst = -1
		return nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 {
		return d.Errf("%s must be a positive whole number or off, got %q", option, s)
	}
	*dst = n
	return nil
}

// parseSize reads a size such as 64MiB, 1MB or 1048576 (bytes); the word
// keyword, when not empty, stands for the value keywordValue.
func parseSize(d *caddyfile.Dispenser, dst *int64, keyword string, keywordValue int64) error {
	option := d.Val()
	var s string
	if !d.AllArgs(&s) {
		return d.ArgErr()
	}
	if keyword != "" && s == keyword {
		*dst = keywordValue
		return nil
	}
	size, err := humanize.ParseBytes(s)
	if err != nil || size > 1<<62 {
		return d.Errf("%s: %q is not a size (like 64MiB or 1048576)", option, strings.TrimSpace(s))
	}
	if size == 0 {
		// Zero would silently mean the default.
		if keyword != "" {
			return d.Errf("%s: must be a positive size, or %s", option, keyword)
		}
		return d.Errf("%s: must be a positive size", option)
	}
	*dst = int64(size)
	return nil
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

// UnmarshalCaddyfile sets up the store from Caddyfile tokens. Syntax:
//
//	keystore file [<directory>]
func (f *FileKeystore) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the backend name
	if d.NextArg() {
		f.Path = d.Val()
	}
	if d.NextArg() {
		return d.ArgErr()
	}
	if d.NextBlock(d.Nesting()) {
		return d.Errf("keystore file takes no block, got %q", d.Val())
	}
	return nil
}

// UnmarshalCaddyfile sets up the store from Caddyfile tokens. Syntax:
//
//	keystore redis [<address>...] {
//		address     <host:port>...   # several: Cluster, or Sentinels with master_name
//		username    <user>
//		password    <password>       # e.g. {env.REDIS_PASSWORD}
//		db          <number>
//		key_prefix  <prefix>
//		master_name <name>
//		tls         [<server_name>]
//		lock_ttl    <duration>
//		lock_wait   <duration>
//		dial_timeout <duration>
//		read_timeout <duration>
//	}
func (r *RedisKeystore) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the backend name
	r.Addresses = append(r.Addresses, d.RemainingArgs()...)
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		if err := r.unmarshalOption(d); err != nil {
			return err
		}
	}
	return nil
}

// unmarshalOption reads the option of the block that d is at, with its
// arguments.
func (r *RedisKeystore) unmarshalOption(d *caddyfile.Dispenser) error {
	switch option := d.Val(); option {
	case "address":
		args := d.RemainingArgs()
		if len(args) == 0 {
			return d.ArgErr()
		}
		r.Addresses = append(r.Addresses, args...)
	case "username":
		if !d.AllArgs(&r.Username) {
			return d.ArgErr()
		}
	case "password":
		if !d.AllArgs(&r.Password) {
			return d.ArgErr()
		}
	case "key_prefix":
		if !d.AllArgs(&r.KeyPrefix) {
			return d.ArgErr()
		}
	case "master_name":
		if !d.AllArgs(&r.MasterName) {
			return d.ArgErr()
		}
	case "db":
		var db string
		if !d.AllArgs(&db) {
			return d.ArgErr()
		}
		n, err := strconv.Atoi(db)
		if err != nil || n < 0 {
			return d.Errf("db must be a database number, got %q", db)
		}
		r.DB = n
	case "tls":
		r.TLS = true
		if d.NextArg() {
			r.TLSServerName = d.Val()
		}
		if d.NextArg() {
			return d.ArgErr()
		}
	case "lock_ttl":
		return parseDuration(d, &r.LockTTL, true)
	case "lock_wait":
		return parseDuration(d, &r.LockWait, true)
	case "dial_timeout":
		return parseDuration(d, &r.DialTimeout, true)
	case "read_timeout":
		return parseDuration(d, &r.ReadTimeout, true)
	default:
		return d.Errf("unrecognized keystore redis option %q", option)
	}
	return nil
}

// UnmarshalCaddyfile sets up the store from Caddyfile tokens. Syntax:
//
//	keystore caddy_storage
func (s *CaddyStorageKeystore) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the backend name
	if d.NextArg() {
		return d.ArgErr()
	}
	if d.NextBlock(d.Nesting()) {
		return d.Errf("keystore caddy_storage takes no block, got %q", d.Val())
	}
	return nil
}

// Interface guards
var (
	_ caddyfile.Unmarshaler = (*Handler)(nil)
	_ caddyfile.Unmarshaler = (*Health)(nil)
	_ caddyfile.Unmarshaler = (*FileKeystore)(nil)
	_ caddyfile.Unmarshaler = (*RedisKeystore)(nil)
	_ caddyfile.Unmarshaler = (*CaddyStorageKeystore)(nil)
)
