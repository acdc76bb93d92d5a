package connect

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/oauth2"

	"github.com/oauth2upstream/caddy-oauth2-upstream/credential"
	"github.com/oauth2upstream/caddy-oauth2-upstream/internal/live"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
)

// maxPendingFlows bounds the authorizations started and not yet finished:
// each is a few hundred bytes, kept until its callback or its expiry.
const maxPendingFlows = 1000

// Why a redirect back is refused; the page says it to the operator.
var (
	errStateMissing  = errors.New("the redirect back has no state, or this browser holds no flow in progress (it may have expired): start again with Connect")
	errStateMismatch = errors.New("the redirect back's state is not the one this browser started: start again with Connect")
	errFlowUnknown   = errors.New("the flow is unknown or was already finished (a redirect back is good for one use): start again with Connect")
	errFlowExpired   = errors.New("the flow took too long: start again with Connect")
)

// unboundErrorPrefix leads the refusal of an error redirect back that ends
// no flow of this browser's, whose text the page does not show.
const unboundErrorPrefix = "The redirect back reports an error, not shown: the text is the provider's only when it ends a flow this browser started, and "

// pendingFlow is an authorization a browser started and the redirect back
// has not finished.
type pendingFlow struct {
	keySet      string
	verifier    string           // the PKCE code verifier (RFC 7636 section 4.1)
	redirectURI string           // sent again with the code (RFC 6749 section 4.1.3)
	client      keystore.Binding // the client the code is issued to
	expires     time.Time
}

// flowStore holds the pending flows by state. It is the pages' shared
// state's (familyState), not a page's: a config reload between Connect and
// the redirect back must not lose the flow.
type flowStore struct {
	mu    sync.Mutex // guards flows
	flows map[string]pendingFlow
}

// add keeps flow under state, after dropping the expired ones; it refuses
// when maxPendingFlows are pending.
func (s *flowStore) add(state string, flow pendingFlow, now time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, f := range s.flows {
		if now.After(f.expires) {
			delete(s.flows, k)
		}
	}
	if len(s.flows) >= maxPendingFlows {
		return fmt.Errorf("%d authorizations are in progress; try again in a few minutes", len(s.flows))
	}
	s.flows[state] = flow
	return nil
}

// take removes and returns the flow of state: a redirect back is good for
// one use, whatever its outcome.
func (s *flowStore) take(state string, now time.Time) (pendingFlow, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f, ok := s.flows[state]
	if !ok {
		return pendingFlow{}, errFlowUnknown
	}
	delete(s.flows, state)
	if now.After(f.expires) {
		return pendingFlow{}, errFlowExpired
	}
	return f, nil
}

// randomToken returns 32 random bytes, base64url without padding: a state,
// a CSRF cookie.
func randomToken() string {
	b := make([]byte, 32)
	rand.Read(b) // never fails (crypto/rand: it crashes the program instead)
	return base64.RawURLEncoding.EncodeToString(b)
}

// startConnect starts the authorization-code flow for key set name: it
// keeps a pending flow under a new state, binds the state to this browser
// with a cookie, and sends the browser to the provider with a PKCE S256
// challenge (RFC 7636 section 4.3).
func (c *Connect) startConnect(w http.ResponseWriter, r *http.Request, name string) {
	handlers := c.postFor(w, r, name)
	if handlers == nil {
		return
	}
	h, err := connectable(name, handlers)
	if err != nil {
		c.message(w, r, http.StatusConflict, "Cannot connect", err.Error(), name)
		return
	}
	state, verifier := randomToken(), oauth2.GenerateVerifier()
	flow := pendingFlow{keySet: name, verifier: verifier, redirectURI: c.redirectURI(r),
		client: h.Client, expires: c.now().Add(time.Duration(c.FlowTimeout))}
	if err := c.state.flows.add(state, flow, c.now()); err != nil {
		c.message(w, r, http.StatusServiceUnavailable, "Busy", err.Error(), name)
		return
	}
	http.SetCookie(w, c.flowCookie(r, state, time.Duration(c.FlowTimeout)))
	scopes := c.Scopes
	if len(scopes) == 0 {
		scopes = h.Scopes
	}
	if len(scopes) == 0 {
		scopes = c.providerScopes
	}
	cfg := oauth2.Config{ClientID: h.Client.ClientID, Endpoint: oauth2.Endpoint{AuthURL: c.AuthorizeURL},
		RedirectURL: flow.redirectURI, Scopes: scopes}
	options := []oauth2.AuthCodeOption{oauth2.S256ChallengeOption(verifier)}
	for k, v := range c.AuthorizeParams {
		options = append(options, oauth2.SetAuthURLParam(k, v))
	}
	c.logger.Info("connecting key set: sent the browser to the provider", zap.String("key_set", name))
	http.Redirect(w, r, cfg.AuthCodeURL(state, options...), http.StatusSeeOther)
}

// callback is the redirection endpoint (RFC 6749 section 4.1.2): it checks
// that the redirect back finishes a flow this browser started, exchanges
// the code, and shows the status page.
func (c *Connect) callback(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	flow, err := c.takeFlow(w, r, q.Get("state"))
	if err != nil {
		detail := err.Error()
		if q.Has("error") {
			// Anyone can send the operator's browser here with an error
			// and a text of their own ("call this number", "paste your
			// password at ..."): only a redirect back that ends a flow
			// this browser started is the provider's word.
			detail = unboundErrorPrefix + detail
		}
		c.message(w, r, http.StatusBadRequest, "Not connected", detail, "")
		return
	}
	// Before the error text too: RFC 9207 section 2.4, a client must not
	// take an error response for the intended authorization server's.
	if err := c.checkIssuer(q); err != nil {
		c.message(w, r, http.StatusBadRequest, "Not connected", err.Error(), flow.keySet)
		return
	}
	if code := q.Get("error"); code != "" {
		// RFC 6749 section 4.1.2.1: the person declined (access_denied),
		// or the provider refused the request.
		detail := "The provider answered " + code
		if d := q.Get("error_description"); d != "" {
			detail += ": " + d
		}
		c.message(w, r, http.StatusBadRequest, "Not connected", detail+".", flow.keySet)
		return
	}
	code := q.Get("code")
	if code == "" {
		c.message(w, r, http.StatusBadRequest, "Not connected", "The redirect back carries no code.", flow.keySet)
		return
	}
	ks, err := c.redeem(r.Context(), flow, code, c.callbackValues(q))
	if err != nil {
		c.logger.Error("connecting key set failed", zap.String("key_set", flow.keySet), zap.Error(err))
		c.failure(w, r, "Not connected", err, flow.keySet)
		return
	}
	c.logger.Info("connected key set", zap.String("key_set", flow.keySet), zap.Int64("generation", ks.Generation),
		zap.Bool("has_refresh_token", ks.Token.RefreshToken() != ""))
	http.Redirect(w, r, "/?"+url.Values{"connected": {flow.keySet}}.Encode(), http.StatusSeeOther)
}

// takeFlow ends and returns the flow of the redirect back's state, which
// must be the state this browser's flow cookie holds (compared in constant
// time). Once it is, the flow and its cookie are spent whatever follows: a
// second redirect back with the same state is refused. A redirect back
// without this browser's state changes nothing: anyone can send the browser
// to the callback with a state of their own, and the flow the browser did
// start must still finish when its own redirect back comes.
func (c *Connect) takeFlow(w http.ResponseWriter, r *http.Request, state string) (pendingFlow, error) {
	cookie, err := r.Cookie(c.cookieName(r, flowCookieName))
	if state == "" || err != nil || cookie.Value == "" {
		return pendingFlow{}, errStateMissing
	}
	if subtle.ConstantTimeCompare([]byte(state), []byte(cookie.Value)) != 1 {
		return pendingFlow{}, errStateMismatch
	}
	http.SetCookie(w, c.flowCookie(r, "", -1))
	return c.state.flows.take(state, c.now())
}

// checkIssuer compares the redirect back's iss with the provider the flow
// was started at (RFC 9207 section 2.4): a code from another authorization
// server must not be sent to this one's token endpoint. A configured Issuer
// says the provider sends iss, so a redirect back without it is refused
// (section 2.4: a client that knows the server supports iss must reject a
// response without it), unless the issuer's metadata, read for the
// authorization endpoint, does not say so; otherwise iss is checked when
// sent.
func (c *Connect) checkIssuer(q url.Values) error {
	_, sent := q["iss"]
	iss := q.Get("iss")
	switch {
	case c.Issuer != "" && sent:
		if iss != c.Issuer {
			return fmt.Errorf("the redirect back comes from issuer %q, not %q (RFC 9207): not connected", iss, c.Issuer)
		}
		return nil
	case c.Issuer != "" && !c.issOptional:
		return fmt.Errorf("the redirect back carries no iss, and issuer %q is configured, which sends one (RFC 9207 section 2.4): not connected", c.Issuer)
	case !sent:
		return nil
	}
	u, err := url.Parse(iss)
	if err != nil || u.Host == "" || origin(u) != c.authorizeOrigin {
		return fmt.Errorf("the redirect back comes from issuer %q, not from %s, where the flow started (RFC 9207): not connected", iss, c.authorizeOrigin)
	}
	return nil
}

// redeem redeems code with the engine of a handler serving the flow's
// key set for the flow's client, and stores the tokens through every other
// keystore such a handler uses: a code is good for one exchange.
func (c *Connect) redeem(ctx context.Context, flow pendingFlow, code string, callback map[string]string) (*keystore.KeySet, error) {
	var handlers []*live.Handler
	for _, h := range c.serving(flow.keySet) {
		if h.Client == flow.client {
			handlers = append(handlers, h)
		}
	}
	if len(handlers) == 0 {
		return nil, &credential.Error{KeySet: flow.keySet, Code: credential.CodeNoKeySet,
			Description: "no oauth2_upstream handler of this page serves the key set for the client the flow started with"}
	}
	var redeemed *keystore.KeySet
	ks, err := live.OncePerKeystore(ctx, flow.keySet, handlers, func(e *credential.Engine) (*keystore.KeySet, error) {
		if redeemed != nil {
			return live.SkipForeign(e.PutConnected(ctx, flow.keySet, redeemed.Token, redeemed.Callback))
		}
		ks, err := live.SkipForeign(e.RedeemCode(ctx, flow.keySet, code, flow.verifier, flow.redirectURI, callback))
		redeemed = ks
		return ks, err
	})
	if err == nil && ks == nil {
		err = &credential.Error{KeySet: flow.keySet, Code: credential.CodeKeySetForeign,
			Description: "the stored key set is bound to another client; remove it from the keystore to connect it anew"}
	}
	return ks, err
}
