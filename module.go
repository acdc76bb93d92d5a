// Package oauth2upstream is a Caddy HTTP handler that authenticates proxied
// requests with an OAuth2 access token: it injects the token, refreshes it
// when the upstream rejects it (or before it expires), stores the whole new
// key set durably, and replays the request, body included. Placed before
// reverse_proxy, it lets a connector that knows nothing of OAuth2 talk to
// APIs that need it. The life of the credential is the credential
// package's; this package adapts it to Caddy.
package oauth2upstream

import (
	"encoding/json"
	"fmt"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/oauth2upstream/caddy-oauth2-upstream/credential"
	"github.com/oauth2upstream/caddy-oauth2-upstream/internal/live"
	"github.com/oauth2upstream/caddy-oauth2-upstream/internal/selfproxy"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Handler injects an OAuth2 access token into every request it passes on,
// and when the upstream answers a trigger status (401 by default) it
// refreshes the token once, stores the new key set, and replays the request.
type Handler struct {
	// TokenURL is the provider's token endpoint. It must be https unless
	// its host is a loopback address or InsecureHTTP is set. Placeholders
	// such as {env.TOKEN_URL} are replaced when the handler starts.
	// Required, unless Provider gives it or Issuer's metadata names it.
	TokenURL string `json:"token_url,omitempty"`

	// InsecureHTTP allows an http token_url on a host other than loopback.
	// The client secret and refresh tokens then cross the network in clear.
	InsecureHTTP bool `json:"insecure_http,omitempty"`

	// ClientID is the OAuth2 client identifier. Placeholders are replaced
	// when the handler starts.
	ClientID string `json:"client_id"`

	// ClientSecret is the OAuth2 client secret; empty for public clients.
	// Placeholders (usually {env.*}) are replaced when the handler starts.
	ClientSecret string `json:"client_secret,omitempty"`

	// AuthStyle is an alias of ClientAuth: "basic" is secret_basic,
	// "post" secret_post. Default: none (ClientAuth's default).
	AuthStyle string `json:"auth_style,omitempty"`

	// Grant is the grant that obtains new tokens: "refresh_token", which
	// spends the key set's refresh token, or "client_credentials",
	// "jwt_bearer" (an assertion signed with SigningKey, RFC 7523 section
	// 2.1) or "password" (the resource owner's Username and Password, RFC
	// 6749 section 4.3, for legacy APIs: a refresh token it issues is kept
	// and spent by later grants), which need no seed. Default:
	// refresh_token.
	Grant string `json:"grant,omitempty"`

	// Scopes are sent with every grant (space-separated as `scope`).
	Scopes []string `json:"scopes,omitempty"`

	// Params are extra form fields of every token request, such as
	// `resource` or `audience`. Fields that x/oauth2 sets itself
	// (grant_type, refresh_token) cannot be overridden.
	Params map[string][]string `json:"params,omitempty"`

	// KeySet names the key set whose tokens this handler sends. It may
	// hold request placeholders, so that one sidecar serves several
	// accounts of the same client, selected per request (by a header, for
	// instance); the resolved name must be 1-128 letters, digits, '.', '_'
	// or '-'. Default: "default".
	KeySet string `json:"key_set,omitempty"`

	// KeySetAllow is a regular expression (RE2, anchored at both ends)
	// that a key_set with placeholders must match once resolved; a name
	// that does not match gets 403 key_set_not_allowed and touches no
	// keystore. Required when key_set has placeholders: a client must not
	// pick any key set the keystore holds.
	KeySetAllow string `json:"key_set_allow,omitempty"`

	// RefreshToken seeds the key set when the keystore has none of that
	// name; once a key set is stored it is ignored. Only for a key_set
	// without placeholders. Placeholders (usually {env.*}) are replaced
	// when the handler starts.
	RefreshToken string `json:"refresh_token,omitempty"`

	// BindUnbound lets the handler take up its key set's stored document
	// when it names no client (its "client" is missing: written by hand,
	// or by a version before key sets were bound), and bind it to this
	// handler's client with the next write. Without it such a document is
	// refused (502 key_set_unbound): nothing in it says whose tokens it
	// holds, and a handler of another client that shares the keystore
	// would otherwise spend its refresh token first. A one-time migration
	// switch: once the key set is bound it does nothing, and it can be
	// removed. Only for a key_set without placeholders. Default: false.
	BindUnbound bool `json:"bind_unbound,omitempty"`

	// Refresh is when tokens are refreshed: "proactive" (before a known
	// expiry, within ExpirySkew, without holding up requests while the
	// token is still valid; and on a trigger status), "reactive" (only on
	// a trigger status) or "always" (a grant before every request;
	// concurrent requests share one). Default: proactive.
	Refresh string `json:"refresh,omitempty"`

	// RefreshOn lists the upstream statuses that mean "token rejected":
	// the handler refreshes (unless a newer token already exists) and
	// replays the request once. Default: [401], or none with
	// RefreshOnInvalidToken, which narrows it.
	RefreshOn []int `json:"refresh_on,omitempty"`

	// ExpirySkew is how long before the expiry a proactive refresh
	// starts. Zero or absent: the default, 30s (the Caddyfile refuses 0).
	ExpirySkew caddy.Duration `json:"expiry_skew,omitempty"`

	// TokenTimeout bounds one token request. Zero or absent: the default,
	// 10s (the Caddyfile refuses 0).
	TokenTimeout caddy.Duration `json:"token_timeout,omitempty"`

	// HeaderName is the request header that carries the token; whatever
	// the client sent in it is replaced. Default: Authorization.
	HeaderName string `json:"header_name,omitempty"`

	// HeaderScheme prefixes the token in the header ("Bearer <token>");
	// "raw" sends the token alone. Default: Bearer.
	HeaderScheme string `json:"header_scheme,omitempty"`

	// ExtraFields names the token response fields that
	// {http.oauth2_upstream.extra.<field>} placeholders resolve and that
	// notifications carry under "extra": only those, and only as top-level
	// strings, numbers or booleans (an object or an array may nest tokens,
	// so it is never exposed, named or not). A list replaces the default:
	// repeat the defaults still needed. A name shaped like a credential
	// (ending in token, tokens, key, keys or code, or holding secret,
	// password, passwd, credential, assertion or cookie: access_token,
	// id_token, api_key, ...) is refused. Default: api_domain, expires_in,
	// id, instance_url, issued_at, scope, token_type
	// (keystore.DefaultExtraFields).
	ExtraFields []string `json:"extra_fields,omitempty"`

	// EncryptionKeys encrypt key set documents at rest with AES-256-GCM:
	// each a base64 32-byte key, usually {env.KEYSTORE_KEY}, replaced when
	// the handler starts. The first encrypts; all decrypt, so a key is
	// rotated by putting the new one first and keeping the old until every
	// document was rewritten. With keys set, an unencrypted or undecryptable
	// document is an error, never silently replaced.
	EncryptionKeys []string `json:"encryption_keys,omitempty"`

	// MaxWait bounds how long a request waits for a refresh another
	// request started; past it the request gets 503 with Retry-After
	// while the refresh goes on. Zero or absent: the default, 15s (the
	// Caddyfile refuses 0).
	MaxWait caddy.Duration `json:"max_wait,omitempty"`

	// AllowTrace passes TRACE requests on. An upstream answers TRACE by
	// echoing the request, the injected credential included, back to the
	// client, so the handler refuses TRACE with 405 unless this is set.
	// Default: false.
	AllowTrace bool `json:"allow_trace,omitempty"`

	// AllowAdminTCP lets the handler start while Caddy's admin endpoint
	// listens on TCP (given, or Caddy's default localhost:2019). Whoever
	// reaches the endpoint can replace key sets, and so choose the token
	// the upstream gets, or read the configuration; without this the
	// handler refuses such a config, naming the fix: a unix socket
	// (admin unix//path|0600) or admin off. Default: false.
	AllowAdminTCP bool `json:"allow_admin_tcp,omitempty"`

	// KeystoreRaw configures where key sets are stored. Default: the file
	// keystore in Caddy's data directory.
	KeystoreRaw json.RawMessage `json:"keystore,omitempty" caddy:"namespace=oauth2_upstream.keystores inline_key=backend"`

	// ClientAuthOptions configure client authentication and assertions
	// (clientauthoptions.go).
	ClientAuthOptions

	// DPoPOptions bind tokens to a key (dpop.go).
	DPoPOptions

	// BodyOptions configure how request bodies are kept, replayed and
	// sent (bodyoptions.go).
	BodyOptions

	// GrantOptions bound when grants are made (grantoptions.go).
	GrantOptions

	// ResourceOwnerOptions are the password grant's credentials
	// (ownerpassword.go).
	ResourceOwnerOptions

	// NotifyOptions configure change notifications (notify.go).
	NotifyOptions

	// DiscoveryOptions read the authorization server's metadata
	// (discoveryoptions.go).
	DiscoveryOptions

	// ProviderOptions name a provider catalog entry whose settings fill
	// the options left unset (provideroptions.go).
	ProviderOptions

	engine       *credential.Engine
	keySets      live.KeySetRule      // KeySet and KeySetAllow
	extras       keystore.ExtraFields // ExtraFields
	ownedHeaders []string             // canonical: the headers the sidecar owns, HeaderName and DPoP
	logger       *zap.Logger
	ops          *operations          // metrics and notifications (operations.go)
	unstored     *credential.Unstored // shared with handlers over the same keystore (live.Registry.Unstored)
	registry     *live.Registry       // where the handler registers what it serves
	live         *live.Handler        // what it registered
	// lateRejection: the upstream rejected a token after its 100
	// Continue once, so bodies are kept again (zerocopy.go). A pointer,
	// set by Provision, so that a Handler value can still be copied.
	lateRejection *atomic.Bool
	// zeroCopyReady: every reverse_proxy after the handler waits for a
	// 100 Continue, which the zero-copy path needs (judgeExpectHops).
	zeroCopyReady bool
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.oauth2_upstream",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision fills unset options from the provider catalog, sets defaults,
// resolves {env.*} placeholders in the credentials, loads the keystore and
// starts the credential engine.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	h.registry = live.From(ctx)
	h.lateRejection = new(atomic.Bool)
	repl := caddy.NewReplacer()
	if err := h.applyProvider(repl); err != nil {
		return err
	}
	for _, field := range []*string{&h.TokenURL, &h.ClientID, &h.ClientSecret, &h.RefreshToken} {
		*field = repl.ReplaceKnown(*field, "")
	}
	h.NotifyOptions.replacePlaceholders(repl)
	if err := h.provisionResourceOwner(repl); err != nil {
		return err
	}
	err := h.provisionKeys(repl)
	if err != nil {
		return err
	}
	if err := h.discover(ctx, repl); err != nil {
		return err
	}
	h.setDefaults()
	h.ownedHeaders = []string{http.CanonicalHeaderKey(h.HeaderName), dpopHeader}
	if h.keySets, err = live.NewKeySetRule(h.KeySet, h.KeySetAllow); err != nil {
		return fmt.Errorf("key_set_allow %q: %w", h.KeySetAllow, err)
	}
	if h.extras, err = h.extraFields(); err != nil {
		return err
	}
	if err := h.checkHeaderIsNotLogged(ctx); err != nil {
		return err
	}
	if err := h.refuseAdminOnTCP(ctx); err != nil {
		return err
	}
	if err := selfproxy.Refuse(ctx, h.logger); err != nil {
		return err
	}
	h.judgeExpectHops(ctx)
	store, err := h.loadKeystore(ctx, repl)
	if err != nil {
		return err
	}
	if h.ops, err = newOperations(ctx, h.NotifyOptions.config(h.extras), h.logger); err != nil {
		return err
	}
	h.engine = h.newEngine(store, time.Now)
	h.register(live.ConfigOf(ctx))
	return nil
}

// Validate rejects a configuration that cannot work, naming the option.
func (h *Handler) Validate() error {
	if h.TokenURL == "" {
		return fmt.Errorf("token_url is required (or issuer, whose metadata names it)")
	}
	if err := credential.CheckSecretsURL("token_url", h.TokenURL, h.InsecureHTTP,
		"the client secret and refresh token cross it", "insecure_http is set"); err != nil {
		return err
	}
	if h.ClientID == "" {
		return fmt.Errorf("client_id is required")
	}
	return h.validateOptions()
}

// Cleanup waits for refreshes in flight to store their result, then stops
// the change notifier after it delivered them.
func (h *Handler) Cleanup() error {
	h.unregister()
	if h.engine != nil {
		h.engine.Close()
	}
	h.ops.stop()
	h.cleanupClientAuth()
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
