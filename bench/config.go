package bench

import (
	"context"
	"encoding/json"
	"time"

	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore/file"
)

// keySetName is the key set the sidecar configurations use.
const keySetName = "default"

// OAuth2Options configures the oauth2_upstream handler of a Caddy under
// test.
type OAuth2Options struct {
	TokenURL    string
	KeystoreDir string
	Refresh     string // proactive (default), reactive or always

	// KeySet and KeySetAllow select the key set per request (the
	// accounts harness); empty: the one key set keySetName.
	KeySet      string
	KeySetAllow string
	// RedisAddr, when set, is the Redis keystore used instead of the
	// file keystore at KeystoreDir.
	RedisAddr string
	// ExpirySkew and MaxConcurrentGrants: zero leaves the defaults.
	ExpirySkew          time.Duration
	MaxConcurrentGrants int
	// Params are extra token request fields (`param`).
	Params map[string][]string
	// KeepBodies sets zero_copy_min off: every body is kept for a
	// replay, as before zero-copy uploads.
	KeepBodies bool
	// RefreshAnyTime sets min_refresh_interval off, so that every
	// rejection makes a grant, however young the token.
	RefreshAnyTime bool
}

// CaddySpec is what a Caddy under test runs.
type CaddySpec struct {
	Upstream string         // host:port of the upstream
	OAuth2   *OAuth2Options // nil: bare reverse_proxy
	// StaticAuthorization, when set, is put in the request's Authorization
	// header by Caddy's own `request_header` handler before reverse_proxy:
	// the control that tells what any injected header costs.
	StaticAuthorization string
	// Admin serves Caddy's admin API, for its /debug/pprof, on a second
	// inherited listener. Off, the admin API is disabled.
	Admin bool
	// UpstreamExpect sends every request upstream with "Expect:
	// 100-continue" (reverse_proxy's header_up): bare Caddy paying the
	// exchange that zero-copy uploads make, without the handler.
	UpstreamExpect bool
}

// caddyConfig is the JSON config of a Caddy under test: one server on the
// inherited listener fd 3, a health route, then reverse_proxy to the
// upstream, preceded by oauth2_upstream when spec.OAuth2 is not nil (or by
// a static header). The variants share everything else, so a difference
// between them is the handler's.
func caddyConfig(spec CaddySpec) []byte {
	var handlers []any
	if spec.StaticAuthorization != "" {
		handlers = append(handlers, map[string]any{
			"handler": "headers",
			"request": map[string]any{"set": map[string][]string{"Authorization": {spec.StaticAuthorization}}},
		})
	}
	if oauth := spec.OAuth2; oauth != nil {
		h := oauth2Handler(oauth)
		if spec.Admin {
			// The admin API listens on an inherited TCP socket, for the
			// harness alone on this machine: the handler refuses a TCP
			// admin endpoint unless told so.
			h["allow_admin_tcp"] = true
		}
		handlers = append(handlers, h)
	}
	proxy := map[string]any{
		"handler":   "reverse_proxy",
		"upstreams": []any{map[string]any{"dial": spec.Upstream}},
		// More idle upstream connections than client connections: with
		// the default (32) a 64-connection run closes and redials
		// upstream connections, and TIME_WAIT sockets pile up. The
		// transport waits for a 100 Continue, as the shipped
		// configurations set it (README, caddyfile.example): the
		// handler's zero-copy uploads need it, and it changes nothing
		// for a request without Expect.
		"transport": map[string]any{
			"protocol":                "http",
			"keep_alive":              map[string]any{"max_idle_conns_per_host": 1024},
			"expect_continue_timeout": int64(time.Second),
		},
	}
	if spec.UpstreamExpect {
		proxy["headers"] = map[string]any{"request": map[string]any{"set": map[string][]string{"Expect": {"100-continue"}}}}
	}
	handlers = append(handlers, proxy)
	admin := map[string]any{"disabled": true}
	if spec.Admin {
		admin = map[string]any{"listen": "fd/4"}
	}
	cfg := map[string]any{
		"admin":   admin,
		"logging": map[string]any{"logs": map[string]any{"default": map[string]any{"level": "INFO"}}},
		"apps": map[string]any{"http": map[string]any{"grace_period": "1s", "servers": map[string]any{"bench": map[string]any{
			"listen":          []string{"fd/3"},
			"protocols":       []string{"h1"},
			"automatic_https": map[string]any{"disable": true},
			"routes": []any{
				map[string]any{
					"match":    []any{map[string]any{"path": []string{healthPath}}},
					"handle":   []any{map[string]any{"handler": "static_response", "status_code": 200}},
					"terminal": true,
				},
				map[string]any{"handle": handlers},
			},
		}}}},
	}
	data, err := json.Marshal(cfg)
	if err != nil {
		panic(err) // maps of strings and slices always marshal
	}
	return data
}

// oauth2Handler is the JSON config of the oauth2_upstream handler.
func oauth2Handler(oauth *OAuth2Options) map[string]any {
	h := map[string]any{
		"handler":       "oauth2_upstream",
		"token_url":     oauth.TokenURL,
		"client_id":     benchClientID,
		"client_secret": benchSecret,
		"key_set":       keySetName,
		"refresh":       oauth.Refresh,
		"keystore":      map[string]any{"backend": "file", "path": oauth.KeystoreDir},
	}
	if oauth.KeySet != "" {
		h["key_set"], h["key_set_allow"] = oauth.KeySet, oauth.KeySetAllow
	}
	if oauth.RedisAddr != "" {
		h["keystore"] = map[string]any{"backend": "redis", "addresses": []string{oauth.RedisAddr}}
	}
	if oauth.ExpirySkew != 0 {
		h["expiry_skew"] = oauth.ExpirySkew
	}
	if oauth.MaxConcurrentGrants != 0 {
		h["max_concurrent_grants"] = oauth.MaxConcurrentGrants
	}
	if len(oauth.Params) > 0 {
		h["params"] = oauth.Params
	}
	if oauth.KeepBodies {
		h["zero_copy_min"] = -1
	}
	if oauth.RefreshAnyTime {
		h["min_refresh_interval"] = -1
	}
	return h
}

// SeedKeySet stores generation 1 of the key set the sidecar uses in the
// file keystore at dir (a 0700 directory, a 0600 document), the way an
// operator seeds one: accessToken valid until expiry (zero: unknown, as
// from Salesforce) and refreshToken for the next grant. It is dated an
// hour ago, as a key set in use for a while: a rejection of its token makes
// a grant (min_refresh_interval). It is bound to the sidecar's client at
// tokenURL, as a grant binds it: the sidecar refuses a document bound to
// none (key_set_unbound).
func SeedKeySet(dir, tokenURL, accessToken, refreshToken string, expiry time.Time) error {
	store, err := file.New(dir)
	if err != nil {
		return err
	}
	client := bindingOf(tokenURL)
	ks := &keystore.KeySet{Name: keySetName, Generation: 1, UpdatedAt: time.Now().Add(-time.Hour).UTC(), Token: keystore.Token{}, Client: &client}
	if !expiry.IsZero() {
		ks.Expiry = expiry.UTC()
		ks.Token[keystore.FieldExpiresIn] = json.RawMessage("3600")
	}
	ks.Token.SetString(keystore.FieldAccessToken, accessToken)
	ks.Token.SetString(keystore.FieldRefreshToken, refreshToken)
	ks.Token.SetString(keystore.FieldTokenType, "Bearer")
	return store.Save(context.Background(), ks)
}
