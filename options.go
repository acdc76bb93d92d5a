package oauth2upstream

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap/zapcore"
	"golang.org/x/net/http/httpguts"

	"github.com/oauth2upstream/caddy-oauth2-upstream/credential"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
)

// Client authentication styles (the auth_style option, an alias of
// client_auth secret_basic|secret_post).
const (
	authStyleBasic = "basic"
	authStylePost  = "post"
)

// Defaults of the options documented on Handler.
const (
	defaultKeySet        = "default"
	defaultHeaderName    = "Authorization"
	defaultHeaderScheme  = "Bearer"
	rawHeaderScheme      = "raw"
	defaultReplayMemory  = 1 << 20
	defaultMaxReplayBody = 64 << 20
	defaultMaxWait       = 15 * time.Second
	defaultBodyTimeout   = 60 * time.Second
)

func (h *Handler) setDefaults() {
	if h.Grant == "" {
		h.Grant = credential.GrantRefreshToken
	}
	if h.KeySet == "" {
		h.KeySet = defaultKeySet
	}
	if h.Refresh == "" {
		h.Refresh = credential.ModeProactive
	}
	if len(h.RefreshOn) == 0 && !h.RefreshOnInvalidToken {
		h.RefreshOn = []int{http.StatusUnauthorized}
	}
	h.GrantOptions.setDefaults()
	if h.ExpirySkew == 0 {
		h.ExpirySkew = caddy.Duration(credential.DefaultSkew)
	}
	if h.TokenTimeout == 0 {
		h.TokenTimeout = caddy.Duration(credential.DefaultTokenTimeout)
	}
	if h.HeaderName == "" {
		h.HeaderName = defaultHeaderName
	}
	if h.HeaderScheme == "" {
		h.HeaderScheme = defaultHeaderScheme
		if h.DPoP != nil {
			h.HeaderScheme = dpopScheme
		}
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
	if h.UpstreamExpect == "" {
		h.UpstreamExpect = "auto"
	}
	h.setZeroCopyDefault()
	if h.BodyTimeout == 0 {
		h.BodyTimeout = caddy.Duration(defaultBodyTimeout)
	}
}

// reservedParams are token request fields the grant sets; a param may not
// replace them (x/oauth2 would refuse some, and silently take others).
var reservedParams = map[string]bool{
	"grant_type": true, "refresh_token": true, "scope": true,
	"client_id": true, "client_secret": true, "code": true,
	"assertion": true, "client_assertion": true, "client_assertion_type": true,
	"username": true, "password": true,
}

// validateOptions checks the options that Validate does not check itself.
func (h *Handler) validateOptions() error {
	if h.Grant != credential.GrantRefreshToken && !credential.SeedlessGrant(h.Grant) {
		return fmt.Errorf("grant %q: must be %q, %q, %q or %q", h.Grant, credential.GrantRefreshToken,
			credential.GrantClientCredentials, credential.GrantJWTBearer, credential.GrantPassword)
	}
	if err := h.validateResourceOwner(h.Grant); err != nil {
		return err
	}
	if err := h.validateKeyOptions(); err != nil {
		return err
	}
	switch h.Refresh {
	case credential.ModeProactive, credential.ModeReactive, credential.ModeAlways:
	default:
		return fmt.Errorf("refresh %q: must be %q, %q or %q", h.Refresh, credential.ModeProactive, credential.ModeReactive, credential.ModeAlways)
	}
	if err := h.validateKeySet(); err != nil {
		return err
	}
	for name := range h.Params {
		if reservedParams[name] {
			return fmt.Errorf("param %s: set by the grant itself (use scopes, client_id, client_secret, client_auth)", name)
		}
	}
	for _, status := range h.RefreshOn {
		if status < 400 || status > 599 {
			return fmt.Errorf("refresh_on %d: must be a 4xx or 5xx status", status)
		}
	}
	if h.UpstreamExpect != "auto" && h.UpstreamExpect != "on" && h.UpstreamExpect != "off" {
		return fmt.Errorf("upstream_expect %q: must be auto, on or off", h.UpstreamExpect)
	}
	if err := h.validateZeroCopy(); err != nil {
		return err
	}
	if !httpguts.ValidHeaderFieldName(h.HeaderName) {
		return fmt.Errorf("header_name %q: not a valid header field name", h.HeaderName)
	}
	if strings.ContainsAny(h.HeaderScheme, " \t\r\n") {
		return fmt.Errorf("header_scheme %q: must be one word", h.HeaderScheme)
	}
	if _, err := h.extraFields(); err != nil {
		return err
	}
	if err := h.NotifyOptions.validate(); err != nil {
		return err
	}
	if err := h.GrantOptions.validate(h.RefreshOn); err != nil {
		return err
	}
	return h.validateLimits()
}

// extraFields is the allow-list extra_fields names, the default without
// it.
func (h *Handler) extraFields() (keystore.ExtraFields, error) {
	extras, err := keystore.NewExtraFields(h.ExtraFields)
	if err != nil {
		return keystore.ExtraFields{}, fmt.Errorf("extra_fields: %w", err)
	}
	return extras, nil
}

// validateKeySet checks key_set and the seed that goes with it.
func (h *Handler) validateKeySet() error {
	switch {
	case !h.keySets.PerRequest():
		if err := keystore.ValidateName(h.KeySet); err != nil {
			return fmt.Errorf("key_set: %w", err)
		}
	case h.RefreshToken != "":
		return fmt.Errorf("refresh_token seeds one key set, but key_set %q has placeholders; seed each key set in the keystore", h.KeySet)
	case h.BindUnbound:
		// A request would choose which unbound document this client takes
		// up: any other client's, by name.
		return fmt.Errorf("bind_unbound binds the one key set a fixed key_set names, but key_set %q has placeholders, "+
			"so clients would choose which unbound document becomes this client's; seed each key set anew through the admin API "+
			"(caddy oauth2-upstream seed), which binds it", h.KeySet)
	case credential.SeedlessGrant(h.Grant):
		// One client's credentials give one token: key sets selected per
		// request would all hold the same, under names clients invent.
		return fmt.Errorf("key_set %q has placeholders, which the %s grant cannot use: it has no per-key-set seed", h.KeySet, h.Grant)
	case h.KeySetAllow == "":
		return fmt.Errorf("key_set %q has placeholders, so clients choose the key set: key_set_allow <regexp> must say which names they may choose", h.KeySet)
	}
	if h.KeySetAllow != "" && !h.keySets.PerRequest() {
		return fmt.Errorf("key_set_allow is for a key_set with placeholders; key_set %q names one key set", h.KeySet)
	}
	if h.RefreshToken != "" && credential.SeedlessGrant(h.Grant) {
		return fmt.Errorf("refresh_token is a seed for the refresh_token grant; the %s grant needs none", h.Grant)
	}
	return nil
}

// validateLimits checks durations and sizes.
func (h *Handler) validateLimits() error {
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
	// Provision, which Caddy runs before Validate, loaded the keystore.
	if h.engine != nil {
		if err := checkLockLease(h.engine.Store(), time.Duration(h.TokenTimeout)); err != nil {
			return err
		}
	}
	if h.ReplayMemory < 0 {
		return fmt.Errorf("replay_memory %d: must not be negative", h.ReplayMemory)
	}
	if h.MaxReplayBody < -1 {
		return fmt.Errorf("max_replay_body %d: must be a size in bytes, or -1 to disable body replay", h.MaxReplayBody)
	}
	return nil
}

// newEngine is the credential engine the options describe, over store,
// reading the clock now.
func (h *Handler) newEngine(store keystore.Store, now func() time.Time) *credential.Engine {
	seedName, bindUnbound := "", ""
	if !h.keySets.PerRequest() {
		seedName = h.KeySet
		if h.BindUnbound {
			bindUnbound = h.KeySet
		}
	}
	endpoint := credential.TokenEndpoint{
		URL: h.TokenURL, ClientID: h.ClientID, ClientSecret: h.ClientSecret,
		Grant: h.Grant, Scopes: h.Scopes, Params: h.Params,
		Username: h.Username, Password: h.Password,
		Timeout: time.Duration(h.TokenTimeout),
	}
	h.configureClientAuth(&endpoint)
	return credential.New(store, credential.Config{
		Endpoint:            endpoint,
		Mode:                h.Refresh,
		Skew:                time.Duration(h.ExpirySkew),
		MinRefreshInterval:  time.Duration(h.MinRefreshInterval),
		MaxRetryAfter:       time.Duration(h.MaxRetryAfter),
		SeedName:            seedName,
		SeedToken:           h.RefreshToken,
		BindUnbound:         bindUnbound,
		MaxWait:             time.Duration(h.MaxWait),
		Header:              h.headerValue,
		Logger:              h.logger,
		Observer:            h.ops.observer(),
		Now:                 now,
		Unstored:            h.unstored,
		Keepalive:           time.Duration(h.Keepalive),
		ReauthorizeWarning:  time.Duration(h.ReauthorizeWarning),
		MaxConcurrentGrants: h.MaxConcurrentGrants,
		Serves:              h.keySets.Serves,
	})
}

// headerValue is the header value that carries accessToken.
func (h *Handler) headerValue(accessToken string) string {
	if h.HeaderScheme == rawHeaderScheme {
		return accessToken
	}
	return h.HeaderScheme + " " + accessToken
}

// loadKeystore loads the keystore module (the file keystore in Caddy's data
// directory unless configured), encrypting when keys are set.
func (h *Handler) loadKeystore(ctx caddy.Context, repl *caddy.Replacer) (keystore.Store, error) {
	if h.KeystoreRaw == nil {
		h.KeystoreRaw = []byte(`{"backend":"file"}`)
	}
	// Before LoadModule, which drops the raw JSON.
	h.unstored = h.registry.Unstored(h.KeystoreRaw)
	mod, err := ctx.LoadModule(h, "KeystoreRaw")
	if err != nil {
		return nil, fmt.Errorf("loading keystore: %w", err)
	}
	store, ok := mod.(keystore.Store)
	if !ok {
		return nil, fmt.Errorf("keystore module %T is not a keystore.Store", mod)
	}
	if len(h.EncryptionKeys) == 0 {
		return store, nil
	}
	keys := make([]string, len(h.EncryptionKeys))
	for i, k := range h.EncryptionKeys {
		keys[i] = repl.ReplaceKnown(k, "")
	}
	codec, err := keystore.NewEncryptingCodec(keys...)
	if err != nil {
		return nil, fmt.Errorf("encryption_key: %w", err)
	}
	encrypting, ok := store.(keystore.CodecSetter)
	if !ok {
		return nil, fmt.Errorf("encryption_key: keystore %T cannot encrypt", store)
	}
	encrypting.UseCodec(codec)
	return store, nil
}

// lockLeaseMargin is how much longer than token_timeout a refresh lock must
// last without renewal. Besides the token request, its holder re-reads the
// key set before it and saves the result after it: one keystore round trip
// each, milliseconds normally, with room here for a slow Redis.
const lockLeaseMargin = 5 * time.Second

// checkLockLease refuses a keystore whose refresh locks, left unrenewed,
// could expire during one token request of at most tokenTimeout: a holder
// cut off from Redis would still be granting when another replica takes
// the lock and grants too, spending a rotating refresh token twice
// (DESIGN.md invariant 4). Keystores whose locks do not expire pass.
func checkLockLease(store keystore.Store, tokenTimeout time.Duration) error {
	lease, ok := store.(keystore.LockLeaser)
	if !ok {
		return nil
	}
	if ttl, need := lease.LockLease(), tokenTimeout+lockLeaseMargin; ttl < need {
		return fmt.Errorf("keystore lock_ttl %v: must be at least token_timeout %v plus %v, so that a refresh lock that cannot be renewed outlasts a token request",
			ttl, tokenTimeout, lockLeaseMargin)
	}
	return nil
}

// headersCaddyRedacts are the request headers whose values Caddy's logs
// replace with "REDACTED" (unless a server sets log_credentials).
var headersCaddyRedacts = []string{"Authorization", "Proxy-Authorization", "Cookie"}

// checkHeaderIsNotLogged refuses a credential header that reverse_proxy's
// debug log would print: its "upstream roundtrip" line holds the request's
// headers, and Caddy redacts only a few names. The token must appear in no
// log line at any level.
func (h *Handler) checkHeaderIsNotLogged(ctx caddy.Context) error {
	if slices.Contains(headersCaddyRedacts, http.CanonicalHeaderKey(h.HeaderName)) {
		return nil
	}
	if !ctx.Logger(new(reverseproxy.Handler)).Core().Enabled(zapcore.DebugLevel) {
		return nil
	}
	return fmt.Errorf("header %s: reverse_proxy logs at debug level, and its \"upstream roundtrip\" lines would hold the token "+
		"(Caddy redacts only %s); log http.handlers.reverse_proxy at info or above, or carry the token in Authorization",
		h.HeaderName, strings.Join(headersCaddyRedacts, ", "))
}
