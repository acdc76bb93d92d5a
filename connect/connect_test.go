package connect

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/oauth2upstream/caddy-oauth2-upstream/credential"
	"github.com/oauth2upstream/caddy-oauth2-upstream/credential/credentialtest"
	"github.com/oauth2upstream/caddy-oauth2-upstream/internal/live"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore/file"
)

// Token values the fake provider issues for a code: no page may show them.
const (
	codeAccessToken  = "access-SECRET-from-code"
	codeRefreshToken = "refresh-SECRET-from-code"
)

// connectRig is a connect page in front of one oauth2_upstream handler
// (key set "crm", client "client-1"), whose token endpoint also redeems
// authorization codes as a provider would: the code it issued, the PKCE
// verifier of the challenge sent, the same redirect_uri.
type connectRig struct {
	handler  *live.Handler // the one oauth2_upstream handler the page serves
	store    *file.Store
	connect  *Connect
	registry *live.Registry // the page's, holding handler
	server   *httptest.Server
	client   *http.Client // keeps cookies, follows no redirect
	te       *credentialtest.TokenEndpoint
	clock    *credentialtest.Clock

	mu          sync.Mutex // guards the fields below
	challenge   string     // code_challenge of the last authorization request
	redirectURI string
	exchanges   int                  // code exchanges answered with tokens
	verifiers   []string             // code_verifier of every exchange request
	fail        func() (int, string) // when set, answers every exchange
}

func newConnectRig(t *testing.T, configure func(*Connect)) *connectRig {
	t.Helper()
	rig := &connectRig{te: credentialtest.NewTokenEndpoint(t, "rt-0"), clock: credentialtest.NewClock()}
	rig.te.Respond = rig.respond
	c := &Connect{AuthorizeURL: "https://login.example.com/authorize?tenant=7", AuthorizeParams: map[string]string{"prompt": "consent"}}
	if configure != nil {
		configure(c)
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: t.Context()})
	t.Cleanup(cancel)
	rig.registry = new(live.Registry)
	ctx = live.WithRegistry(ctx, rig.registry)
	rig.handler, rig.store = newHandler(t, ctx, rig.te.URL())
	if err := c.Provision(ctx); err != nil {
		t.Fatalf("Provision() = %v", err)
	}
	t.Cleanup(func() { c.Cleanup() })
	if err := c.Validate(); err != nil {
		t.Fatalf("Validate() = %v", err)
	}
	c.now = rig.clock.Now
	c.logger = zap.NewNop()
	rig.connect = c
	rig.server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { c.ServeHTTP(w, r, nil) }))
	t.Cleanup(rig.server.Close)
	rig.client = newBrowser(t)
	return rig
}

// newHandler registers, in ctx's registry, an oauth2_upstream handler as
// the connect page sees it: key set "crm" of client "client-1" at tokenURL,
// with the refresh_token grant, over a file keystore of its own.
func newHandler(t *testing.T, ctx caddy.Context, tokenURL string) (*live.Handler, *file.Store) {
	t.Helper()
	store, err := file.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	keySets := live.KeySetRule{Name: "crm"}
	endpoint := credential.TokenEndpoint{URL: tokenURL, ClientID: "client-1", ClientSecret: "client-secret",
		Grant: credential.GrantRefreshToken, Scopes: []string{"api"}}
	engine := credential.New(store, credential.Config{Endpoint: endpoint, SeedName: "crm", MaxWait: 15 * time.Second,
		Serves: func(name string) bool { return keySets.Serves(name) }})
	t.Cleanup(engine.Close)
	h := &live.Handler{Engine: engine, Client: keystore.Binding{TokenURL: tokenURL, ClientID: "client-1"},
		Grant: credential.GrantRefreshToken, Scopes: endpoint.Scopes, KeySets: keySets, Config: live.ConfigOf(ctx)}
	live.From(ctx).Handlers.Add(h)
	return h, store
}

// newBrowser is a client that keeps cookies and shows redirects as they are.
func newBrowser(t *testing.T) *http.Client {
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	return &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

// respond redeems authorization codes; refreshes go on to the endpoint's
// own logic, with the refresh token the code exchange issued.
func (rig *connectRig) respond(w http.ResponseWriter, r *http.Request) bool {
	if err := r.ParseForm(); err != nil || r.PostForm.Get("grant_type") != "authorization_code" {
		return false
	}
	rig.mu.Lock()
	defer rig.mu.Unlock()
	verifier := r.PostForm.Get("code_verifier")
	rig.verifiers = append(rig.verifiers, verifier)
	w.Header().Set("Content-Type", "application/json")
	if rig.fail != nil {
		status, body := rig.fail()
		w.WriteHeader(status)
		io.WriteString(w, body)
		return true
	}
	sum := sha256.Sum256([]byte(verifier))
	id, secret, _ := r.BasicAuth()
	if r.PostForm.Get("code") != "code-1" || base64.RawURLEncoding.EncodeToString(sum[:]) != rig.challenge ||
		r.PostForm.Get("redirect_uri") != rig.redirectURI || id != "client-1" || secret != "client-secret" {
		w.WriteHeader(http.StatusBadRequest)
		io.WriteString(w, `{"error":"invalid_grant","error_description":"code, verifier, redirect_uri or client do not match"}`)
		return true
	}
	rig.exchanges++
	rig.te.Mu.Lock()
	rig.te.RefreshToken = codeRefreshToken
	rig.te.Mu.Unlock()
	json.NewEncoder(w).Encode(map[string]any{"access_token": codeAccessToken, "refresh_token": codeRefreshToken,
		"token_type": "Bearer", "expires_in": 3600, "instance_url": "https://eu1.example.com"})
	return true
}

func (rig *connectRig) exchangeCount() int {
	rig.mu.Lock()
	defer rig.mu.Unlock()
	return rig.exchanges
}

// page is one answer of the connect page.
type page struct {
	status int
	header http.Header
	body   string
}

func (rig *connectRig) do(t *testing.T, client *http.Client, req *http.Request) page {
	t.Helper()
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return page{status: resp.StatusCode, header: resp.Header, body: string(body)}
}

func (rig *connectRig) get(t *testing.T, client *http.Client, path string) page {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, rig.server.URL+path, nil)
	return rig.do(t, client, req)
}

func (rig *connectRig) post(t *testing.T, client *http.Client, path string, form url.Values) page {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, rig.server.URL+path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	return rig.do(t, client, req)
}

var csrfInput = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// csrf loads the status page in client's browser and returns its forms'
// CSRF token.
func (rig *connectRig) csrf(t *testing.T, client *http.Client) string {
	t.Helper()
	p := rig.get(t, client, "/")
	m := csrfInput.FindStringSubmatch(p.body)
	if p.status != http.StatusOK || m == nil {
		t.Fatalf("GET / = %d with no CSRF token:\n%s", p.status, p.body)
	}
	return m[1]
}

// start presses Connect for key set name and returns the authorization
// request the browser is sent to, noting its challenge as the provider
// would.
func (rig *connectRig) start(t *testing.T, name string) *url.URL {
	t.Helper()
	p := rig.post(t, rig.client, "/key_sets/"+name+"/connect", url.Values{"csrf": {rig.csrf(t, rig.client)}})
	if p.status != http.StatusSeeOther {
		t.Fatalf("POST connect = %d; want 303:\n%s", p.status, p.body)
	}
	u, err := url.Parse(p.header.Get("Location"))
	if err != nil {
		t.Fatal(err)
	}
	rig.mu.Lock()
	rig.challenge, rig.redirectURI = u.Query().Get("code_challenge"), u.Query().Get("redirect_uri")
	rig.mu.Unlock()
	return u
}

// callback is the provider's redirect back, in rig.client's browser.
func (rig *connectRig) callback(t *testing.T, q url.Values) page {
	t.Helper()
	return rig.get(t, rig.client, "/callback?"+q.Encode())
}

// callbackRequest is a redirect back to the callback with q, in whichever
// browser does it.
func (rig *connectRig) callbackRequest(q url.Values) *http.Request {
	req, _ := http.NewRequest(http.MethodGet, rig.server.URL+"/callback?"+q.Encode(), nil)
	return req
}

// replay is the redirect back q again, with the flow cookie of its state:
// what someone who saw the redirect and the cookie could send.
func (rig *connectRig) replay(t *testing.T, q url.Values) page {
	t.Helper()
	req := rig.callbackRequest(q)
	req.AddCookie(&http.Cookie{Name: rig.connect.cookieName(req, flowCookieName), Value: q.Get("state")})
	return rig.do(t, newBrowser(t), req)
}

func (rig *connectRig) stored(t *testing.T) *keystore.KeySet {
	t.Helper()
	ks, err := rig.store.Load(t.Context(), "crm")
	if err != nil {
		return nil
	}
	return ks
}

// Connect runs the authorization-code flow with PKCE S256 (RFC 7636): the
// authorization request carries the client, the redirect URI, the scopes,
// the extra parameters, a state that the browser's flow cookie holds and an
// S256 challenge; the exchange sends the verifier of that challenge (a
// 43-character base64url string) with the same redirect URI, and the tokens
// become generation 1 of the key set, bound to the client, in use at once.
func TestConnectRunsTheCodeFlowWithPKCE(t *testing.T) {
	t.Parallel()
	rig := newConnectRig(t, nil)
	auth := rig.start(t, "crm")
	q := auth.Query()
	want := map[string]string{
		"response_type": "code", "client_id": "client-1", "redirect_uri": rig.server.URL + "/callback",
		"scope": "api", "prompt": "consent", "code_challenge_method": "S256", "tenant": "7",
	}
	for k, v := range want {
		if got := q.Get(k); got != v {
			t.Errorf("authorization request %s = %q; want %q", k, got, v)
		}
	}
	if auth.Scheme+"://"+auth.Host+auth.Path != "https://login.example.com/authorize" {
		t.Errorf("authorization request goes to %s", auth)
	}
	if len(q.Get("code_challenge")) != 43 || len(q.Get("state")) < 43 {
		t.Errorf("code_challenge %q, state %q: want a 43-character challenge and a 256-bit state", q.Get("code_challenge"), q.Get("state"))
	}
	callbackURL, _ := url.Parse(rig.server.URL + "/callback")
	var flowCookie *http.Cookie
	for _, c := range rig.client.Jar.Cookies(callbackURL) {
		if strings.HasPrefix(c.Name, flowCookieName) {
			flowCookie = c
		}
	}
	if flowCookie == nil || flowCookie.Value != q.Get("state") {
		t.Fatalf("flow cookie %v; want one holding the state %q", flowCookie, q.Get("state"))
	}

	p := rig.callback(t, url.Values{"code": {"code-1"}, "state": {q.Get("state")}})
	if p.status != http.StatusSeeOther || p.header.Get("Location") != "/?connected=crm" {
		t.Fatalf("callback = %d %q; want 303 to /?connected=crm:\n%s", p.status, p.header.Get("Location"), p.body)
	}
	rig.mu.Lock()
	verifiers := rig.verifiers
	rig.mu.Unlock()
	if len(verifiers) != 1 || len(verifiers[0]) != 43 || rig.exchangeCount() != 1 {
		t.Fatalf("exchange requests sent verifiers %q, %d accepted; want one 43-character verifier, accepted", verifiers, rig.exchangeCount())
	}
	ks := rig.stored(t)
	if ks == nil || ks.Generation != 1 || ks.Token.AccessToken() != codeAccessToken || ks.Client == nil || ks.Client.ClientID != "client-1" {
		t.Fatalf("stored key set = %+v; want generation 1 with the code's tokens, bound to client-1", ks)
	}
	cred, err := rig.handler.Engine.Current(t.Context(), "crm")
	if err != nil || cred.KeySet.Generation != 1 {
		t.Fatalf("Current(crm) = %v, %v; want generation 1 in use", cred, err)
	}
	status := rig.get(t, rig.client, "/?connected=crm")
	for _, want := range []string{"Connected crm.", `<span class="state">ok</span>`, "Reconnect", "Refresh now"} {
		if !strings.Contains(status.body, want) {
			t.Errorf("status page after connecting lacks %q:\n%s", want, status.body)
		}
	}
}

// A redirect back is refused, and no code is exchanged, unless it carries
// the state of a flow this browser started (its cookie's, compared in
// constant time), once, within flow_timeout, from the provider the flow
// went to (RFC 9207 iss, required when issuer is configured); an error
// answer (the person declined) ends the flow.
func TestConnectCallbackRefusals(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		issuer   string
		callback func(t *testing.T, rig *connectRig, state string) page
		want     string
	}{
		{"state missing", "", func(t *testing.T, rig *connectRig, state string) page {
			return rig.callback(t, url.Values{"code": {"code-1"}})
		}, "has no state"},
		{"no flow cookie", "", func(t *testing.T, rig *connectRig, state string) page {
			return rig.get(t, newBrowser(t), "/callback?"+url.Values{"code": {"code-1"}, "state": {state}}.Encode())
		}, "has no state"},
		{"state wrong", "", func(t *testing.T, rig *connectRig, state string) page {
			return rig.callback(t, url.Values{"code": {"code-1"}, "state": {randomToken()}})
		}, "not the one this browser started"},
		{"replayed", "", func(t *testing.T, rig *connectRig, state string) page {
			q := url.Values{"code": {"code-1"}, "state": {state}}
			if first := rig.callback(t, q); first.status != http.StatusSeeOther {
				t.Fatalf("first callback = %d; want 303:\n%s", first.status, first.body)
			}
			return rig.replay(t, q)
		}, "already finished"},
		{"expired", "", func(t *testing.T, rig *connectRig, state string) page {
			rig.clock.Advance(defaultFlowTimeout + time.Second)
			return rig.callback(t, url.Values{"code": {"code-1"}, "state": {state}})
		}, "took too long"},
		{"iss of another server", "", func(t *testing.T, rig *connectRig, state string) page {
			return rig.callback(t, url.Values{"code": {"code-1"}, "state": {state}, "iss": {"https://attacker.example.com"}})
		}, "RFC 9207"},
		{"iss not the configured issuer", "https://login.example.com/tenant-7", func(t *testing.T, rig *connectRig, state string) page {
			return rig.callback(t, url.Values{"code": {"code-1"}, "state": {state}, "iss": {"https://login.example.com"}})
		}, "RFC 9207"},
		// RFC 9207 section 2.4: a client that knows its server sends iss
		// refuses a response without it.
		{"no iss, issuer configured", "https://login.example.com/tenant-7", func(t *testing.T, rig *connectRig, state string) page {
			return rig.callback(t, url.Values{"code": {"code-1"}, "state": {state}})
		}, "carries no iss, and issuer"},
		// Nor is an error response without it taken for the server's.
		{"error without iss, issuer configured", "https://login.example.com/tenant-7", func(t *testing.T, rig *connectRig, state string) page {
			p := rig.callback(t, url.Values{"error": {"access_denied"}, "error_description": {"declined"}, "state": {state}})
			if strings.Contains(p.body, "declined") {
				t.Errorf("the page shows the text of an error response without iss:\n%s", p.body)
			}
			return p
		}, "carries no iss, and issuer"},
		{"access_denied", "", func(t *testing.T, rig *connectRig, state string) page {
			p := rig.callback(t, url.Values{"error": {"access_denied"}, "error_description": {"The user declined <b>"}, "state": {state}})
			if strings.Contains(p.body, "<b>") {
				t.Errorf("the provider's description reached the page unescaped:\n%s", p.body)
			}
			// The error ended the flow: its code is good for nothing.
			if again := rig.replay(t, url.Values{"code": {"code-1"}, "state": {state}}); !strings.Contains(again.body, "already finished") {
				t.Errorf("a code after the flow's error answer = %d; want 400 saying it is finished:\n%s", again.status, again.body)
			}
			return p
		}, "access_denied: The user declined &lt;b&gt;"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rig := newConnectRig(t, func(c *Connect) { c.Issuer = tt.issuer })
			state := rig.start(t, "crm").Query().Get("state")
			p := tt.callback(t, rig, state)
			if p.status != http.StatusBadRequest || !strings.Contains(p.body, tt.want) {
				t.Errorf("callback = %d; want 400 saying %q:\n%s", p.status, tt.want, p.body)
			}
			wantExchanges := 0
			if tt.name == "replayed" {
				wantExchanges = 1
			}
			if n := rig.exchangeCount(); n != wantExchanges {
				t.Errorf("codes exchanged = %d; want %d", n, wantExchanges)
			}
		})
	}
}

// A redirect back that does not carry the state of this browser's flow
// cookie is anyone's link: it neither ends the flow in progress, which its
// real redirect back still finishes, nor has its error text shown, which
// could tell the operator anything. A wrong state, an error with a wrong
// state, without state, or in a browser holding no flow: each is refused
// with the page's own words, and then the provider's redirect back connects.
func TestConnectForgedRedirectLeavesFlow(t *testing.T) {
	t.Parallel()
	const lure = "Call 1-555-0100 to finish"
	tests := []struct {
		name    string
		forge   func(rig *connectRig) *http.Request
		want    string
		notWant []string
	}{
		{"code with a wrong state", func(rig *connectRig) *http.Request {
			return rig.callbackRequest(url.Values{"code": {"code-attacker"}, "state": {randomToken()}})
		}, "not the one this browser started", nil},
		{"error with a wrong state", func(rig *connectRig) *http.Request {
			return rig.callbackRequest(url.Values{"error": {"server_error"}, "error_description": {lure}, "state": {randomToken()}})
		}, "not shown", []string{lure, "server_error", "1-555"}},
		{"error without state", func(rig *connectRig) *http.Request {
			return rig.callbackRequest(url.Values{"error": {"access_denied"}, "error_description": {lure}})
		}, "not shown", []string{lure, "access_denied", "1-555"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rig := newConnectRig(t, nil)
			state := rig.start(t, "crm").Query().Get("state")
			forged := rig.do(t, rig.client, tt.forge(rig))
			if forged.status != http.StatusBadRequest || !strings.Contains(forged.body, tt.want) {
				t.Errorf("forged redirect back = %d; want 400 saying %q:\n%s", forged.status, tt.want, forged.body)
			}
			for _, s := range tt.notWant {
				if strings.Contains(forged.body, s) {
					t.Errorf("the forged redirect's text %q reached the page:\n%s", s, forged.body)
				}
			}
			// Another browser, which holds no flow, is not told the text either.
			if other := rig.do(t, newBrowser(t), tt.forge(rig)); other.status != http.StatusBadRequest || strings.Contains(other.body, lure) {
				t.Errorf("forged redirect back in a browser without a flow = %d:\n%s", other.status, other.body)
			}
			p := rig.callback(t, url.Values{"code": {"code-1"}, "state": {state}})
			if p.status != http.StatusSeeOther || rig.exchangeCount() != 1 {
				t.Fatalf("the provider's redirect back after a forged one = %d, %d codes exchanged; want 303 and 1:\n%s", p.status, rig.exchangeCount(), p.body)
			}
			if ks := rig.stored(t); ks == nil || ks.Generation != 1 {
				t.Errorf("stored key set = %+v; want generation 1", ks)
			}
		})
	}
}

// Without issuer, iss is optional (RFC 9207 section 2.4): a redirect back
// without it, or with the authorization endpoint's origin, connects; with
// issuer, one carrying it connects.
func TestConnectAcceptsMatchingIssuer(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct{ name, issuer, iss string }{
		{"none sent", "", ""},
		{"origin of authorize_url", "", "https://login.example.com"},
		{"configured issuer", "https://login.example.com/tenant-7", "https://login.example.com/tenant-7"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rig := newConnectRig(t, func(c *Connect) { c.Issuer = tt.issuer })
			q := url.Values{"code": {"code-1"}, "state": {rig.start(t, "crm").Query().Get("state")}}
			if tt.iss != "" {
				q.Set("iss", tt.iss)
			}
			if p := rig.callback(t, q); p.status != http.StatusSeeOther {
				t.Errorf("callback with iss %q = %d; want 303:\n%s", tt.iss, p.status, p.body)
			}
		})
	}
}

// A code exchange the provider refuses stores nothing and says why: 502
// naming the OAuth error for a permanent refusal, 503 with Retry-After for
// a provider that is down. The key set in use stays as it was.
func TestConnectFailingExchange(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		status     int
		body       string
		wantStatus int
		want       string
	}{
		{"invalid_grant", http.StatusBadRequest, `{"error":"invalid_grant","error_description":"code expired"}`, http.StatusBadGateway, "invalid_grant"},
		{"provider down", http.StatusServiceUnavailable, `{"error":"temporarily_unavailable"}`, http.StatusServiceUnavailable, "temporarily_unavailable"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rig := newConnectRig(t, nil)
			rig.mu.Lock()
			rig.fail = func() (int, string) { return tt.status, tt.body }
			rig.mu.Unlock()
			p := rig.callback(t, url.Values{"code": {"code-1"}, "state": {rig.start(t, "crm").Query().Get("state")}})
			if p.status != tt.wantStatus || !strings.Contains(p.body, tt.want) {
				t.Errorf("callback = %d; want %d naming %s:\n%s", p.status, tt.wantStatus, tt.want, p.body)
			}
			if tt.wantStatus == http.StatusServiceUnavailable && p.header.Get("Retry-After") == "" {
				t.Errorf("503 without Retry-After")
			}
			if ks := rig.stored(t); ks != nil {
				t.Errorf("a refused exchange stored %+v", ks)
			}
		})
	}
}
