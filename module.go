// Package oauth2upstream is a Caddy HTTP handler that authenticates proxied
// requests with an OAuth2 access token: it injects the token, refreshes it
// when the upstream rejects it (or before it expires), stores the whole new
// key set durably, and replays the request, body included. Placed before
// reverse_proxy, it lets a connector that knows nothing of OAuth2 talk to
// APIs that need it.
package oauth2upstream

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"golang.org/x/oauth2"

	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Grants (the `grant` option) and client authentication styles (`auth_style`).
const (
	grantRefreshToken      = "refresh_token"
	grantClientCredentials = "client_credentials"

	authStyleBasic = "basic"
	authStylePost  = "post"
)

// Defaults of the options documented on Handler.
const (
	defaultKeySet        = "default"
	defaultExpirySkew    = 30 * time.Second
	defaultTokenTimeout  = 10 * time.Second
	defaultHeaderName    = "Authorization"
	defaultHeaderScheme  = "Bearer"
	rawHeaderScheme      = "raw"
	defaultReplayMemory  = 1 << 20
	defaultMaxReplayBody = 64 << 20
	defaultMaxWait       = 15 * time.Second
	defaultBodyTimeout   = 60 * time.Second
)

// Handler injects an OAuth2 access token into every request it passes on,
// and when the upstream answers a trigger status (401 by default) it
// refreshes the token once, stores the new key set, and replays the request.
type Handler struct {
	// TokenURL is the provider's token endpoint. It must be https unless
	// its host is a loopback address or InsecureHTTP is set. Placeholders
	// such as {env.TOKEN_URL} are replaced when the handler starts.
	TokenURL string `json:"token_url"`

	// InsecureHTTP allows an http token_url on a host other than loopback.
	// The client secret and refresh tokens then cross the network in clear.
	InsecureHTTP bool `json:"insecure_http,omitempty"`

	// ClientID is the OAuth2 client identifier. Placeholders are replaced
	// when the handler starts.
	ClientID string `json:"client_id"`

	// ClientSecret is the OAuth2 client secret; empty for public clients.
	// Placeholders (usually {env.*}) are replaced when the handler starts.
	ClientSecret string `json:"client_secret,omitempty"`

	// AuthStyle is how the client authenticates at the token endpoint:
	// "basic" (HTTP Basic, RFC 6749 section 2.3.1) or "post" (form
	// fields). Never auto-detected: x/oauth2's detection resends a failed
	// grant with the other style, which spends a rotating refresh token
	// twice. Default: basic.
	AuthStyle string `json:"auth_style,omitempty"`

	// Grant is the grant that obtains new tokens: "refresh_token", which
	// spends the key set's refresh token, or "client_credentials", which
	// needs no seed. Default: refresh_token.
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

	// RefreshToken seeds the key set when the keystore has none of that
	// name; once a key set is stored it is ignored. Only for a key_set
	// without placeholders. Placeholders (usually {env.*}) are replaced
	// when the handler starts.
	RefreshToken string `json:"refresh_token,omitempty"`

	// Refresh is when tokens are refreshed: "proactive" (before a known
	// expiry, within ExpirySkew, without holding up requests while the
	// token is still valid; and on a trigger status), "reactive" (only on
	// a trigger status) or "always" (a grant before every request;
	// concurrent requests share one). Default: proactive.
	Refresh string `json:"refresh,omitempty"`

	// RefreshOn lists the upstream statuses that mean "token rejected":
	// the handler refreshes (unless a newer token already exists) and
	// replays the request once. Default: [401].
	RefreshOn []int `json:"refresh_on,omitempty"`

	// ExpirySkew is how long before the expiry a proactive refresh
	// starts. Default: 30s.
	ExpirySkew caddy.Duration `json:"expiry_skew,omitempty"`

	// TokenTimeout bounds one token request. Default: 10s.
	TokenTimeout caddy.Duration `json:"token_timeout,omitempty"`

	// HeaderName is the request header that carries the token; whatever
	// the client sent in it is replaced. Default: Authorization.
	HeaderName string `json:"header_name,omitempty"`

	// HeaderScheme prefixes the token in the header ("Bearer <token>");
	// "raw" sends the token alone. Default: Bearer.
	HeaderScheme string `json:"header_scheme,omitempty"`

	// ReplayMemory is how many bytes of a request body are kept in memory
	// for a replay; the rest goes to a temporary file. Default: 1048576.
	ReplayMemory int64 `json:"replay_memory,omitempty"`

	// MaxReplayBody is the largest request body, in bytes, that can be
	// replayed. A larger body streams to the upstream once, and a trigger
	// status then goes back to the client (the token is still refreshed
	// for the next request). -1 disables replaying requests with a body.
	// Default: 67108864 (64 MiB).
	MaxReplayBody int64 `json:"max_replay_body,omitempty"`

	// BodyTimeout is the longest the handler waits for the next bytes of
	// a request body from the client (an idle timeout, not a bound on the
	// whole upload, which may be slowed by the upstream); a stalled client
	// is cut off and its kept body freed. 0 uses the default; -1 disables.
	// Default: 60s.
	BodyTimeout caddy.Duration `json:"body_timeout,omitempty"`

	// EncryptionKeys encrypt key set documents at rest with AES-256-GCM:
	// each a base64 32-byte key, usually {env.KEYSTORE_KEY}, replaced when
	// the handler starts. The first encrypts; all decrypt, so a key is
	// rotated by putting the new one first and keeping the old until every
	// document was rewritten. With keys set, an unencrypted or undecryptable
	// document is an error, never silently replaced.
	EncryptionKeys []string `json:"encryption_keys,omitempty"`

	// MaxWait bounds how long a request waits for a refresh another
	// request started; past it the request gets 503 with Retry-After
	// while the refresh goes on. Default: 15s.
	MaxWait caddy.Duration `json:"max_wait,omitempty"`

	// KeystoreRaw configures where key sets are stored. Default: the file
	// keystore in Caddy's data directory.
	KeystoreRaw json.RawMessage `json:"keystore,omitempty" caddy:"namespace=oauth2_upstream.keystores inline_key=backend"`

	// Notify is a URL that receives every key set change this handler
	// stores, as a POSTed JSON {"name", "generation", "token"} (the whole
	// token response), in order per key set, retried with backoff. It
	// must be https unless its host is loopback. Placeholders such as
	// {env.NOTIFY_URL} are replaced when the handler starts.
	Notify string `json:"notify,omitempty"`

	refresher        *Refresher
	store            keystore.Store
	keySetIsTemplate bool
	headerKey        string // HeaderName, canonical: its key in http.Header
	triggers         []int
	logger           *zap.Logger
	ops              *operations // metrics, notifications, registration (registry.go)
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.oauth2_upstream",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision sets defaults, resolves {env.*} placeholders in the
// credentials, loads the keystore and builds the refresher.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	repl := caddy.NewReplacer()
	h.TokenURL = repl.ReplaceKnown(h.TokenURL, "")
	h.ClientID = repl.ReplaceKnown(h.ClientID, "")
	h.ClientSecret = repl.ReplaceKnown(h.ClientSecret, "")
	h.RefreshToken = repl.ReplaceKnown(h.RefreshToken, "")
	h.setDefaults()
	h.headerKey = http.CanonicalHeaderKey(h.HeaderName)
	h.keySetIsTemplate = strings.Contains(h.KeySet, "{")
	h.triggers = slices.Clone(h.RefreshOn)

	if h.KeystoreRaw == nil {
		h.KeystoreRaw = json.RawMessage(`{"backend":"file"}`)
	}
	mod, err := ctx.LoadModule(h, "KeystoreRaw")
	if err != nil {
		return fmt.Errorf("loading keystore: %w", err)
	}
	store, ok := mod.(keystore.Store)
	if !ok {
		return fmt.Errorf("keystore module %T is not a keystore.Store", mod)
	}
	h.store = store
	if err := h.useEncryption(repl); err != nil {
		return err
	}

	authStyle := oauth2.AuthStyleInHeader
	if h.AuthStyle == authStylePost {
		authStyle = oauth2.AuthStyleInParams
	}
	seedName := ""
	if !h.keySetIsTemplate {
		seedName = h.KeySet
	}
	h.refresher = &Refresher{
		store: h.store,
		client: &tokenClient{
			tokenURL: h.TokenURL, clientID: h.ClientID, clientSecret: h.ClientSecret,
			authStyle: authStyle, grantType: h.Grant, scopes: h.Scopes, params: h.Params,
			timeout: time.Duration(h.TokenTimeout), transport: http.DefaultTransport, now: time.Now,
		},
		mode:      h.Refresh,
		skew:      time.Duration(h.ExpirySkew),
		seedName:  seedName,
		seedToken: h.RefreshToken,
		headerFor: h.headerValue,
		maxWait:   time.Duration(h.MaxWait),
		jitter:    equalJitter,
		now:       time.Now,
		logger:    h.logger,
		states:    make(map[string]*keySetState),
	}
	return h.provisionOperations(ctx)
}

// useEncryption gives the keystore an encrypting codec when keys are set.
func (h *Handler) useEncryption(repl *caddy.Replacer) error {
	if len(h.EncryptionKeys) == 0 {
		return nil
	}
	keys := make([]string, len(h.EncryptionKeys))
	for i, k := range h.EncryptionKeys {
		keys[i] = repl.ReplaceKnown(k, "")
	}
	codec, err := keystore.NewEncryptingCodec(keys...)
	if err != nil {
		return fmt.Errorf("encryption_key: %w", err)
	}
	store, ok := h.store.(interface{ UseCodec(keystore.Codec) })
	if !ok {
		return fmt.Errorf("encryption_key: keystore %T cannot encrypt", h.store)
	}
	store.UseCodec(codec)
	return nil
}

func (h *Handler) setDefaults() {
	if h.AuthStyle == "" {
		h.AuthStyle = authStyleBasic
	}
	if h.Grant == "" {
		h.Grant = grantRefreshToken
	}
	if h.KeySet == "" {
		h.KeySet = defaultKeySet
	}
	if h.Refresh == "" {
		h.Refresh = modeProactive
	}
	if len(h.RefreshOn) == 0 {
		h.RefreshOn = []int{http.StatusUnauthorized}
	}
	if h.ExpirySkew == 0 {
		h.ExpirySkew = caddy.Duration(defaultExpirySkew)
	}
	if h.TokenTimeout == 0 {
		h.TokenTimeout = caddy.Duration(defaultTokenTimeout)
	}
	if h.HeaderName == "" {
		h.HeaderName = defaultHeaderName
	}
	if h.HeaderScheme == "" {
		h.HeaderScheme = defaultHeaderScheme
	}
	if h.ReplayMemory == 0 {
		h.ReplayMemory = defaultReplayMemory
	}
	if h.MaxReplayBody == 0 {
		h.MaxReplayBody = defaultMaxReplayBody
	}
	if h.MaxWait == 0 {
		h.MaxWait = caddy.Duration(defaultMaxWait)
	}
	if h.BodyTimeout == 0 {
		h.BodyTimeout = caddy.Duration(defaultBodyTimeout)
	}
}

// reservedParams are token request fields the grant sets; a param may not
// replace them (x/oauth2 would refuse some, and silently take others).
var reservedParams = map[string]bool{
	"grant_type": true, "refresh_token": true, "scope": true,
	"client_id": true, "client_secret": true, "code": true,
}

// Validate rejects a configuration that cannot work, naming the option.
func (h *Handler) Validate() error {
	if err := h.validateTokenURL(); err != nil {
		return err
	}
	if h.ClientID == "" {
		return fmt.Errorf("client_id is required")
	}
	if h.AuthStyle != authStyleBasic && h.AuthStyle != authStylePost {
		return fmt.Errorf("auth_style %q: must be %q or %q", h.AuthStyle, authStyleBasic, authStylePost)
	}
	if h.Grant != grantRefreshToken && h.Grant != grantClientCredentials {
		return fmt.Errorf("grant %q: must be %q or %q", h.Grant, grantRefreshToken, grantClientCredentials)
	}
	if h.Refresh != modeProactive && h.Refresh != modeReactive && h.Refresh != modeAlways {
		return fmt.Errorf("refresh %q: must be %q, %q or %q", h.Refresh, modeProactive, modeReactive, modeAlways)
	}
	if !h.keySetIsTemplate {
		if err := keystore.ValidateName(h.KeySet); err != nil {
			return fmt.Errorf("key_set: %w", err)
		}
	} else if h.RefreshToken != "" {
		return fmt.Errorf("refresh_token seeds one key set, but key_set %q has placeholders; seed each key set in the keystore", h.KeySet)
	} else if h.Grant == grantClientCredentials {
		// One client's credentials give one token: key sets selected per
		// request would all hold the same, under names clients invent.
		return fmt.Errorf("key_set %q has placeholders, which the client_credentials grant cannot use: it has no per-key-set seed", h.KeySet)
	}
	if h.RefreshToken != "" && h.Grant == grantClientCredentials {
		return fmt.Errorf("refresh_token is a seed for the refresh_token grant; the client_credentials grant needs none")
	}
	for name := range h.Params {
		if reservedParams[name] {
			return fmt.Errorf("param %s: set by the grant itself (use scopes, client_id, client_secret, auth_style)", name)
		}
	}
	for _, status := range h.RefreshOn {
		if status < 400 || status > 599 {
			return fmt.Errorf("refresh_on %d: must be a 4xx or 5xx status", status)
		}
	}
	if h.ExpirySkew < 0 {
		return fmt.Errorf("expiry_skew %s: must not be negative", time.Duration(h.ExpirySkew))
	}
	if h.BodyTimeout < -1 {
		return fmt.Errorf("body_timeout %s: must be positive, or -1 to disable", time.Duration(h.BodyTimeout))
	}
	if h.MaxWait < 0 {
		return fmt.Errorf("max_wait %s: must be positive", time.Duration(h.MaxWait))
	}
	if h.TokenTimeout < 0 {
		return fmt.Errorf("token_timeout %s: must be positive", time.Duration(h.TokenTimeout))
	}
	if !validHeaderName(h.HeaderName) {
		return fmt.Errorf("header_name %q: not a valid header field name", h.HeaderName)
	}
	if strings.ContainsAny(h.HeaderScheme, " \t\r\n") {
		return fmt.Errorf("header_scheme %q: must be one word", h.HeaderScheme)
	}
	if h.ReplayMemory < 0 {
		return fmt.Errorf("replay_memory %d: must not be negative", h.ReplayMemory)
	}
	if h.MaxReplayBody < -1 {
		return fmt.Errorf("max_replay_body %d: must be a size in bytes, or -1 to disable body replay", h.MaxReplayBody)
	}
	return h.validateOperations()
}

func (h *Handler) validateTokenURL() error {
	if h.TokenURL == "" {
		return fmt.Errorf("token_url is required")
	}
	return validateSecretsURL("token_url", h.TokenURL, h.InsecureHTTP,
		"the client secret and refresh token cross it", "insecure_http is set")
}

// validateSecretsURL checks a URL that secrets are sent to: absolute
// http(s), no credentials of its own, and https unless its host is loopback
// or allowHTTP (whose option is named by allowedBy) permits plain http.
func validateSecretsURL(option, raw string, allowHTTP bool, why, allowedBy string) error {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
		return fmt.Errorf("%s %q: must be an absolute http(s) URL", option, raw)
	}
	if u.User != nil {
		return fmt.Errorf("%s: must not carry credentials", option)
	}
	if u.Scheme == "http" && !allowHTTP && !isLoopback(u.Hostname()) {
		unless := "its host is loopback"
		if allowedBy != "" {
			unless += " or " + allowedBy
		}
		return fmt.Errorf("%s %q: must be https (%s) unless %s", option, raw, why, unless)
	}
	return nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// validHeaderName reports whether s is an RFC 9110 field name (a token).
func validHeaderName(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if c >= 0x7f || c <= ' ' || strings.ContainsRune(`"(),/:;<=>?@[\]{}`, c) {
			return false
		}
	}
	return true
}

// Cleanup waits for refreshes in flight to store their result and releases
// the keystore.
func (h *Handler) Cleanup() error {
	if h.refresher != nil {
		h.refresher.Close()
	}
	h.cleanupOperations()
	return nil
}

// ServeHTTP sends the request on with the key set's token, and when the
// upstream answers a trigger status, refreshes and replays it once.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	name := h.KeySet
	if h.keySetIsTemplate {
		name = repl.ReplaceAll(h.KeySet, "")
		if err := keystore.ValidateName(name); err != nil {
			return writeProblem(w, &RefreshError{KeySet: name, Code: codeInvalidKeySetName, Description: err.Error(), Err: err})
		}
	}
	cred, err := h.refresher.Current(r.Context(), name)
	if err != nil {
		return writeProblem(w, err)
	}
	x := &exchange{vars: requestPlaceholders{keySet: name, cred: cred}}
	repl.Map(x.vars.lookup)

	body := newReplayBody(r, h.ReplayMemory, h.MaxReplayBody)
	if body != nil {
		defer body.release()
		body.idleTimeout(w, time.Duration(h.BodyTimeout))
		r.Body = body
	}
	x.before.take(w.Header())
	// Set, not Add: whatever the client sent in this header is replaced.
	// The value's slice is x's, so setting it allocates nothing.
	x.auth[0] = cred.header
	r.Header[h.headerKey] = x.auth[:]

	attempt := &x.attempt
	attempt.reset(w, h.triggers)
	defer attempt.free()
	if err := next.ServeHTTP(attempt, r); err != nil || !attempt.held {
		return err
	}

	// The upstream rejected the token: get a newer one (the current one if
	// another request already refreshed), then replay once.
	fresh, err := h.refresher.Rejected(r.Context(), name, cred.ks.Generation)
	if err != nil {
		h.ops.countReplay(name, replayRefreshFailed)
		x.before.restore(w.Header())
		return writeProblem(w, err)
	}
	if body != nil {
		replay, err := body.rewind()
		if err != nil {
			h.ops.countReplay(name, replayNotReplayable)
			h.logger.Debug("not replaying", zap.String("key_set", name), zap.String("reason", err.Error()))
			return attempt.sendHeld()
		}
		r.Body = replay
	}
	x.before.restore(w.Header())
	x.vars.cred = fresh
	r.Header.Set(h.HeaderName, fresh.header)
	h.logger.Debug("replaying request with refreshed token",
		zap.String("key_set", name),
		zap.Int("rejected_status", attempt.status),
		zap.Int64("rejected_generation", cred.ks.Generation),
		zap.Int64("generation", fresh.ks.Generation))
	h.ops.countReplay(name, replayReplayed)
	return next.ServeHTTP(w, r)
}

// equalJitter returns a duration in [d/2, d): half the backoff is kept, the
// other half is random, so replicas that failed together spread out.
func equalJitter(d time.Duration) time.Duration {
	if d < 2 {
		return d
	}
	return d/2 + rand.N(d/2)
}

// exchange is what ServeHTTP keeps for one request, in one allocation: the
// first attempt's writer, the placeholders, the response header before the
// attempt, and the value of the injected header.
type exchange struct {
	attempt attemptWriter
	vars    requestPlaceholders
	before  headerSnapshot
	auth    [1]string
}

// headerValue is the header value that carries accessToken.
func (h *Handler) headerValue(accessToken string) string {
	if h.HeaderScheme == rawHeaderScheme {
		return accessToken
	}
	return h.HeaderScheme + " " + accessToken
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
