// Package connect is the oauth2_upstream_connect page, where an operator
// connects an account in a browser (the authorization-code flow with PKCE)
// and sees every key set's state, and its admin route, which tells the
// `caddy oauth2-upstream connect-url` command where a key set's Connect
// button is. It reads the live oauth2_upstream handlers from their registry
// (internal/live), never their fields.
package connect

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/oauth2upstream/caddy-oauth2-upstream/credential"
	"github.com/oauth2upstream/caddy-oauth2-upstream/internal/live"
)

func init() {
	caddy.RegisterModule(Connect{})
}

const (
	// defaultCallbackPath is where the provider sends the browser back.
	defaultCallbackPath = "/callback"
	// defaultFlowTimeout bounds how long a person may take between
	// Connect and the provider's redirect back.
	defaultFlowTimeout = 10 * time.Minute
	// connectTimeout bounds one page's keystore work and grant.
	connectTimeout = 2 * time.Minute
	// keySetsPath is the prefix of the per key set routes.
	keySetsPath = "/key_sets/"
)

// authorizeParamsReserved are the authorization request's parameters that
// the handler sets itself (RFC 6749 section 4.1.1, RFC 7636 section 4.3).
var authorizeParamsReserved = []string{"response_type", "client_id", "redirect_uri", "scope", "state", "code_challenge", "code_challenge_method"}

// Connect is an operator's page for the key sets of the oauth2_upstream
// handlers in its config: their status (never a token value), a Connect
// button per key set that runs the provider's authorization-code flow with
// PKCE in the operator's browser and stores the tokens it yields as the key
// set's next generation, and a Refresh now button. It authenticates no one:
// serve it on a site of its own behind basic_auth or forward_auth; without
// either before it, it refuses to start (AllowUnauthenticated).
//
//	GET  /                            the status page, ?limit= (default 100) and ?after=
//	GET  /key_sets/<name>/connect     a page with the Connect button of one key set
//	POST /key_sets/<name>/connect     start the authorization-code flow (CSRF token)
//	POST /key_sets/<name>/refresh     make a grant now (CSRF token)
//	GET  <callback_path>              the provider's redirect back (RFC 6749 section 4.1.2)
type Connect struct {
	// AuthorizeURL is the provider's authorization endpoint (RFC 6749
	// section 3.1). It must be https unless its host is loopback or
	// InsecureHTTP is set. Placeholders are replaced when the handler
	// starts. Required, unless Provider gives it or Issuer's metadata
	// names it.
	AuthorizeURL string `json:"authorize_url,omitempty"`

	// InsecureHTTP allows an http AuthorizeURL on a host other than
	// loopback.
	InsecureHTTP bool `json:"insecure_http,omitempty"`

	// CallbackPath is the path of this handler's redirection endpoint,
	// where the provider sends the browser back with the code. Default:
	// the path of RedirectURL when that is set, else /callback.
	CallbackPath string `json:"callback_path,omitempty"`

	// RedirectURL is the redirect_uri sent to the provider, which must be
	// registered there exactly. Default: the scheme and host the page was
	// reached at, and CallbackPath. Set it when the page is reached under
	// another name than the provider should redirect to, and for the
	// connect-url command.
	RedirectURL string `json:"redirect_url,omitempty"`

	// Scopes are requested in the authorization request. Default: the
	// scopes of the oauth2_upstream handler that serves the key set, else
	// Provider's.
	Scopes []string `json:"scopes,omitempty"`

	// CallbackFields name parameters of the provider's redirect back,
	// besides the code, to keep with the key set it connects (Intuit's
	// realmId, the company every API path names, comes only there): they
	// read as extra fields ({http.oauth2_upstream.extra.realmId}, when
	// the handler's extra_fields lists the name) and survive refreshes.
	// Each value is at most 256 bytes of printable ASCII, else dropped.
	// The redirect back's own parameters and names shaped like a
	// credential are refused. Default: the Provider's, else none.
	CallbackFields []string `json:"callback_fields,omitempty"`

	// AuthorizeParams are extra parameters of the authorization request,
	// such as prompt=consent, or access_type=offline, which Google needs
	// to issue a refresh token. They cannot replace the parameters the
	// flow sets (response_type, client_id, redirect_uri, scope, state,
	// code_challenge, code_challenge_method).
	AuthorizeParams map[string]string `json:"authorize_params,omitempty"`

	// Issuer is the provider's issuer identifier (RFC 8414), for a
	// provider that sends iss in its redirect back (RFC 9207; its metadata
	// says authorization_response_iss_parameter_supported). Set, every
	// redirect back, error responses included, must carry iss and it must
	// be exactly this: one without iss is refused (RFC 9207 section 2.4).
	// Without AuthorizeURL, the page reads it from the issuer's metadata
	// when it starts (authorization_endpoint; OpenID Connect Discovery's
	// or RFC 8414's document, as the oauth2_upstream handler's issuer
	// reads it, and shares), and a redirect back without iss is refused
	// only when the metadata says the server sends it
	// (authorization_response_iss_parameter_supported); one that cannot be
	// read stops the page. Default: iss is checked only when sent, and
	// must then have the scheme, host and port of AuthorizeURL.
	Issuer string `json:"issuer,omitempty"`

	// ClientID narrows the page to the oauth2_upstream handlers of this
	// client. Default: every handler of the config; set it when they use
	// several clients, with one connect handler per provider.
	ClientID string `json:"client_id,omitempty"`

	// FlowTimeout is how long a started authorization may take before the
	// redirect back. Default: 10m.
	FlowTimeout caddy.Duration `json:"flow_timeout,omitempty"`

	// AllowUnauthenticated lets the page start with no authenticating
	// handler before it. The page authenticates no one, so by default a
	// page that no basic_auth (an authentication handler) or forward_auth
	// precedes, for every request that reaches it in its server's routes,
	// is refused when it is provisioned (DESIGN.md invariant 11). Set it
	// only when something outside Caddy authenticates every request that
	// reaches the page's server, or with an authenticating handler the
	// check does not know.
	AllowUnauthenticated bool `json:"allow_unauthenticated,omitempty"`

	// Provider names an entry of the provider catalog (README,
	// "Providers"): when the page starts, its authorization URL, authorize
	// parameters and issuer fill the options that are not set (an
	// authorize_param given replaces the entry's of the same name), and
	// its scopes are requested when neither Scopes nor the handler's
	// scopes name any. Default: none.
	Provider string `json:"provider,omitempty"`

	// ProviderParams are the entry's parameters by name (tenant, domain,
	// region, ...), as the handler's provider_params: checked against an
	// allow-list of characters, placeholders replaced when the page
	// starts, a default for those left out. Default: none.
	ProviderParams map[string]string `json:"provider_params,omitempty"`

	registry        *live.Registry
	page            *live.Page // the page as the registry shows it
	state           *familyState
	logger          *zap.Logger
	now             func() time.Time
	mux             *http.ServeMux
	authorizeOrigin string // scheme://host[:port] of AuthorizeURL, for the CSP and iss
	issOptional     bool   // Issuer's metadata does not say it sends iss (discover)
	redirectOrigin  string // RedirectURL's, when set: the site whose cookies the page's are

	providerScopes []string // Provider's, requested when neither Scopes nor the handler's name any
}

// CaddyModule returns the Caddy module information.
func (Connect) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.oauth2_upstream_connect",
		New: func() caddy.Module { return new(Connect) },
	}
}

// Provision refuses a page with nothing authenticating in front of it,
// replaces placeholders, sets defaults and builds the routes.
func (c *Connect) Provision(ctx caddy.Context) error {
	// The config as it was loaded, before the defaults below: how the
	// check finds this page among its server's raw routes.
	own, err := json.Marshal(c)
	if err != nil {
		return fmt.Errorf("encoding oauth2_upstream_connect: %w", err)
	}
	if err := c.refuseUnguarded(ctx, own); err != nil {
		return err
	}
	c.logger = ctx.Logger()
	c.now = time.Now
	repl := caddy.NewReplacer()
	if err := c.applyProvider(repl); err != nil {
		return err
	}
	for _, field := range []*string{&c.AuthorizeURL, &c.RedirectURL, &c.Issuer, &c.ClientID} {
		*field = repl.ReplaceKnown(*field, "")
	}
	if err := c.discover(ctx); err != nil {
		return err
	}
	if u, err := url.Parse(c.RedirectURL); err == nil && c.RedirectURL != "" {
		c.redirectOrigin = origin(u)
		if c.CallbackPath == "" {
			c.CallbackPath = u.Path
		}
	}
	if c.CallbackPath == "" {
		c.CallbackPath = defaultCallbackPath
	}
	if c.FlowTimeout == 0 {
		c.FlowTimeout = caddy.Duration(defaultFlowTimeout)
	}
	if u, err := url.Parse(c.AuthorizeURL); err == nil {
		c.authorizeOrigin = origin(u)
	}
	c.page = &live.Page{Config: live.ConfigOf(ctx), ClientID: c.ClientID, Base: c.publicBase(ctx)}
	c.routes()
	c.registry = live.From(ctx)
	state, err := loadFamilyState()
	if err != nil {
		return err
	}
	c.state = state
	c.registry.Pages.Add(c.page)
	return nil
}

// Validate rejects a configuration that cannot work, naming the option.
func (c *Connect) Validate() error {
	if c.AuthorizeURL == "" {
		return errors.New("authorize_url is required (or issuer, whose metadata names it)")
	}
	if err := credential.CheckSecretsURL("authorize_url", c.AuthorizeURL, c.InsecureHTTP,
		"the authorization request and its state cross it", "insecure_http is set"); err != nil {
		return err
	}
	if !strings.HasPrefix(c.CallbackPath, "/") || c.CallbackPath == "/" || strings.HasPrefix(c.CallbackPath, keySetsPath) {
		return fmt.Errorf("callback_path %q: must be a path of its own, starting with /, outside / and %s", c.CallbackPath, keySetsPath)
	}
	if c.RedirectURL != "" {
		u, err := url.Parse(c.RedirectURL)
		if err != nil || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") || u.RawQuery != "" || u.Fragment != "" {
			return fmt.Errorf("redirect_url %q: must be an absolute http(s) URL without query or fragment", c.RedirectURL)
		}
		if u.Path != c.CallbackPath {
			return fmt.Errorf("redirect_url %q: its path must be callback_path %q", c.RedirectURL, c.CallbackPath)
		}
	}
	for name := range c.AuthorizeParams {
		for _, reserved := range authorizeParamsReserved {
			if name == reserved {
				return fmt.Errorf("authorize_param %q: the flow sets it itself", name)
			}
		}
	}
	if c.Issuer != "" {
		if u, err := url.Parse(c.Issuer); err != nil || u.Host == "" || u.Scheme == "" {
			return fmt.Errorf("issuer %q: must be an absolute URL", c.Issuer)
		}
	}
	if c.FlowTimeout <= 0 {
		return fmt.Errorf("flow_timeout must be positive")
	}
	return c.validateCallbackFields()
}

// Cleanup takes the handler out of the connect-url lookup. Flows it
// started stay valid: the callback of a reloaded config finishes them.
func (c *Connect) Cleanup() error {
	if c.state == nil {
		return nil // Provision failed before it took a share of the state
	}
	c.registry.Pages.Remove(c.page)
	return releaseFamilyState()
}

// routes builds the handler's ServeMux.
func (c *Connect) routes() {
	mux := http.NewServeMux()
	one := keySetsPath + "{name}"
	mux.HandleFunc("GET /{$}", c.statusPage)
	mux.HandleFunc("GET "+one+"/connect", c.withName(c.confirmPage))
	mux.HandleFunc("POST "+one+"/connect", c.withName(c.startConnect))
	mux.HandleFunc("POST "+one+"/refresh", c.withName(c.refreshNow))
	mux.HandleFunc("GET "+c.CallbackPath, c.callback)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		c.message(w, r, http.StatusNotFound, "Not found", "There is no page at this address.", "")
	})
	c.mux = mux
}

// ServeHTTP answers the page; it never calls next. Every answer carries a
// strict Content-Security-Policy and is never cached.
func (c *Connect) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	setPageHeaders(w.Header(), c.authorizeOrigin)
	ctx, cancel := context.WithTimeout(r.Context(), connectTimeout)
	defer cancel()
	c.mux.ServeHTTP(w, r.WithContext(ctx))
	return nil
}

// withName checks the {name} of the path before serve acts on it.
func (c *Connect) withName(serve func(w http.ResponseWriter, r *http.Request, name string)) http.HandlerFunc {
	return live.WithKeySetName(func(w http.ResponseWriter, r *http.Request, err error) {
		c.message(w, r, http.StatusBadRequest, "Invalid key set name", err.Error(), "")
	}, serve)
}

// serving returns the live handlers of the page that can use key set name.
func (c *Connect) serving(name string) []*live.Handler {
	return live.Serving(c.registry.PageHandlers(c.page), name)
}

// postFor checks a form POST about key set name (its CSRF token) and
// returns the handlers that serve name. Else it answers the refusal, or 404
// for a name no handler serves, and returns nil.
func (c *Connect) postFor(w http.ResponseWriter, r *http.Request, name string) []*live.Handler {
	if err := c.checkCSRF(r); err != nil {
		c.message(w, r, http.StatusForbidden, "Refused", err.Error(), name)
		return nil
	}
	handlers := c.serving(name)
	if len(handlers) == 0 {
		c.message(w, r, http.StatusNotFound, "Unknown key set", fmt.Sprintf("No oauth2_upstream handler of this page can use key set %q.", name), name)
	}
	return handlers
}

// connectable returns the handler whose client a key set served by
// handlers is connected for: they must all be of one client, with the
// refresh_token grant.
func connectable(name string, handlers []*live.Handler) (*live.Handler, error) {
	first := handlers[0]
	for _, h := range handlers {
		if h.Grant != credential.GrantRefreshToken {
			return nil, fmt.Errorf("key set %q is granted with %s, which needs no authorization; use Refresh now", name, h.Grant)
		}
		if h.Client != first.Client {
			return nil, fmt.Errorf("handlers of several clients serve key set %q; give each provider a connect handler of its own, with client_id", name)
		}
	}
	return first, nil
}

// origin is the scheme, host and port of u: what browsers and RFC 6454
// compare.
func origin(u *url.URL) string {
	return u.Scheme + "://" + u.Host
}

// redirectURI is the redirect_uri of a flow started by r.
func (c *Connect) redirectURI(r *http.Request) string {
	if c.RedirectURL != "" {
		return c.RedirectURL
	}
	return requestOrigin(r) + c.CallbackPath
}

// requestOrigin is the scheme and host r reached the page at.
func requestOrigin(r *http.Request) string {
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Connect)(nil)
	_ caddy.Validator             = (*Connect)(nil)
	_ caddy.CleanerUpper          = (*Connect)(nil)
	_ caddyhttp.MiddlewareHandler = (*Connect)(nil)
)
