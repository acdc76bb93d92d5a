package connect

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/oauth2upstream/caddy-oauth2-upstream/internal/answer"
	"github.com/oauth2upstream/caddy-oauth2-upstream/internal/live"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
)

var styleElement = regexp.MustCompile(`(?s)<style>(.*?)</style>`)

// checkPageHeaders checks what every answer of the connect page must
// carry: a CSP that allows no script and no resource but the inline style
// sheet (admitted by its hash, which must be the page's), no framing, and
// no caching.
func checkPageHeaders(t *testing.T, what string, p page) {
	t.Helper()
	csp := p.header.Get("Content-Security-Policy")
	for _, want := range []string{"default-src 'none'", "frame-ancestors 'none'", "base-uri 'none'", "form-action 'self' https://login.example.com"} {
		if !strings.Contains(csp, want) {
			t.Errorf("%s: Content-Security-Policy %q lacks %q", what, csp, want)
		}
	}
	for _, banned := range []string{"script-src", "unsafe-inline", "unsafe-eval", "*"} {
		if strings.Contains(csp, banned) {
			t.Errorf("%s: Content-Security-Policy %q allows %q", what, csp, banned)
		}
	}
	if cc := p.header.Get("Cache-Control"); cc != "no-store" {
		t.Errorf("%s: Cache-Control = %q; want no-store", what, cc)
	}
	if strings.Contains(strings.ToLower(p.body), "<script") {
		t.Errorf("%s: the page holds a script", what)
	}
	m := styleElement.FindStringSubmatch(p.body)
	if !strings.HasPrefix(p.header.Get("Content-Type"), "text/html") || m == nil {
		return
	}
	sum := sha256.Sum256([]byte(m[1]))
	if hash := "style-src 'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"; !strings.Contains(csp, hash) {
		t.Errorf("%s: Content-Security-Policy %q does not admit the page's style element (%s)", what, csp, hash)
	}
}

// Every answer of the connect page carries the CSP and no-store, and none
// holds a token value: the status page, the Connect page, a redirect, the
// callback, a refused POST, a 404, after a connect and a refresh.
func TestConnectPagesHeadersAndNoTokenValues(t *testing.T) {
	t.Parallel()
	rig := newConnectRig(t, nil)
	var pages []page
	note := func(p page) page { pages = append(pages, p); return p }
	note(rig.get(t, rig.client, "/"))
	note(rig.get(t, rig.client, "/key_sets/crm/connect"))
	note(rig.post(t, rig.client, "/key_sets/crm/connect", url.Values{"csrf": {rig.csrf(t, rig.client)}}))
	state := rig.start(t, "crm").Query().Get("state")
	note(rig.callback(t, url.Values{"code": {"code-1"}, "state": {state}}))
	note(rig.get(t, rig.client, "/?connected=crm"))
	if p := note(rig.post(t, rig.client, "/key_sets/crm/refresh", url.Values{"csrf": {rig.csrf(t, rig.client)}})); p.status != http.StatusSeeOther {
		t.Fatalf("Refresh now = %d; want 303:\n%s", p.status, p.body)
	}
	note(rig.get(t, rig.client, "/?refreshed=crm"))
	note(rig.post(t, rig.client, "/key_sets/crm/refresh", url.Values{"csrf": {"forged"}}))
	note(rig.get(t, rig.client, "/callback?error=access_denied"))
	note(rig.get(t, rig.client, "/nowhere"))
	note(rig.get(t, rig.client, "/key_sets/../connect"))

	ks := rig.stored(t)
	if ks == nil || ks.Generation != 2 {
		t.Fatalf("stored key set %+v; want generation 2 (connect, then refresh)", ks)
	}
	secrets := []string{codeAccessToken, codeRefreshToken, ks.Token.AccessToken(), ks.Token.RefreshToken(), "client-secret", "code-1"}
	for i, p := range pages {
		what := "answer " + string(rune('0'+i))
		checkPageHeaders(t, what, p)
		for _, s := range secrets {
			if strings.Contains(p.body, s) || strings.Contains(p.header.Get("Location"), s) {
				t.Errorf("%s holds the secret %q:\n%s", what, s, p.body)
			}
		}
	}
}

// Refresh now is a POST that needs this browser's CSRF token: no cookie, a
// wrong token, another browser's token or a form from another origin are
// refused (403) and make no grant; the right token makes one.
func TestConnectRefreshNeedsCSRFToken(t *testing.T) {
	t.Parallel()
	rig := newConnectRig(t, nil)
	if _, err := rig.handler.Engine.Put(t.Context(), "crm", keystore.Token{"refresh_token": json.RawMessage(`"rt-0"`)}); err != nil {
		t.Fatal(err)
	}
	token := rig.csrf(t, rig.client)
	other := newBrowser(t)
	otherToken := rig.csrf(t, other)
	crossSite := func() page {
		req, _ := http.NewRequest(http.MethodPost, rig.server.URL+"/key_sets/crm/refresh", strings.NewReader(url.Values{"csrf": {token}}.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Origin", "https://attacker.example.com")
		return rig.do(t, rig.client, req)
	}
	refused := map[string]func() page{
		"no cookie": func() page { return rig.post(t, &http.Client{}, "/key_sets/crm/refresh", url.Values{"csrf": {token}}) },
		"no token":  func() page { return rig.post(t, rig.client, "/key_sets/crm/refresh", nil) },
		"wrong token": func() page {
			return rig.post(t, rig.client, "/key_sets/crm/refresh", url.Values{"csrf": {token[:len(token)-2] + "AA"}})
		},
		"other browser's token": func() page { return rig.post(t, rig.client, "/key_sets/crm/refresh", url.Values{"csrf": {otherToken}}) },
		"cross-site form":       crossSite,
		"connect without token": func() page { return rig.post(t, rig.client, "/key_sets/crm/connect", url.Values{"csrf": {otherToken}}) },
	}
	for name, send := range refused {
		if p := send(); p.status != http.StatusForbidden {
			t.Errorf("%s: POST = %d; want 403:\n%s", name, p.status, p.body)
		}
	}
	if g := rig.te.Grants.Load(); g != 0 {
		t.Fatalf("refused POSTs made %d grants; want 0", g)
	}
	if p := rig.post(t, rig.client, "/key_sets/crm/refresh", url.Values{"csrf": {token}}); p.status != http.StatusSeeOther {
		t.Fatalf("POST with the browser's token = %d; want 303:\n%s", p.status, p.body)
	}
	if g := rig.te.Grants.Load(); g != 1 {
		t.Errorf("grants after Refresh now = %d; want 1", g)
	}
}

// A key set that no handler of the page serves gets 404 everywhere, and no
// flow starts for it.
func TestConnectUnknownKeySet(t *testing.T) {
	t.Parallel()
	rig := newConnectRig(t, nil)
	token := rig.csrf(t, rig.client)
	for what, p := range map[string]page{
		"Connect page": rig.get(t, rig.client, "/key_sets/billing/connect"),
		"Connect":      rig.post(t, rig.client, "/key_sets/billing/connect", url.Values{"csrf": {token}}),
		"Refresh now":  rig.post(t, rig.client, "/key_sets/billing/refresh", url.Values{"csrf": {token}}),
	} {
		if p.status != http.StatusNotFound || p.header.Get("Location") != "" {
			t.Errorf("%s for an unknown key set = %d (Location %q); want 404", what, p.status, p.header.Get("Location"))
		}
	}
}

// The status page lists every key set the keystore holds that a
// placeholder key_set may select, a page at a time like the admin list,
// with a link to the next page; each shows its state, generation, expiry
// and schedule.
func TestConnectStatusPagePages(t *testing.T) {
	t.Parallel()
	rig := newConnectRig(t, nil)
	perRequest, err := live.NewKeySetRule("{http.request.header.X-Account}", "acct-[0-9]+")
	if err != nil {
		t.Fatal(err)
	}
	rig.handler.KeySets = perRequest // before the first request
	now := time.Now()
	for _, name := range []string{"acct-1", "acct-2", "acct-3", "other"} {
		ks := &keystore.KeySet{Name: name, Generation: 1, UpdatedAt: now.Add(-time.Hour), Expiry: now.Add(time.Hour), Token: keystore.Token{},
			Client: &keystore.Binding{TokenURL: rig.te.URL(), ClientID: "client-1"}}
		ks.Token.SetString(keystore.FieldAccessToken, "at-"+name)
		ks.Token.SetString(keystore.FieldRefreshToken, "rt-"+name)
		if err := rig.store.Save(t.Context(), ks); err != nil {
			t.Fatal(err)
		}
	}
	first := rig.get(t, rig.client, "/?limit=2")
	second := rig.get(t, rig.client, "/?after=acct-2&limit=2")
	for _, tt := range []struct {
		name    string
		p       page
		want    []string
		notWant []string
	}{
		{"first page", first, []string{`id="key-set-acct-1"`, `id="key-set-acct-2"`, `href="/?after=acct-2&amp;limit=2"`, "Reconnect", "Refresh now", "Proactive refresh", "Keepalive"},
			[]string{"acct-3", "other", "at-acct", "rt-acct"}},
		{"second page", second, []string{`id="key-set-acct-3"`, `<span class="state">ok</span>`, "<dd>1</dd>"},
			[]string{"acct-1", "acct-2", "other", `rel="next"`}},
	} {
		if tt.p.status != http.StatusOK {
			t.Fatalf("%s = %d:\n%s", tt.name, tt.p.status, tt.p.body)
		}
		for _, s := range tt.want {
			if !strings.Contains(tt.p.body, s) {
				t.Errorf("%s lacks %q:\n%s", tt.name, s, tt.p.body)
			}
		}
		for _, s := range tt.notWant {
			if strings.Contains(tt.p.body, s) {
				t.Errorf("%s holds %q:\n%s", tt.name, s, tt.p.body)
			}
		}
	}
	if p := rig.get(t, rig.client, "/?limit=0"); p.status != http.StatusBadRequest {
		t.Errorf("limit=0 = %d; want 400", p.status)
	}
}

// The admin endpoint's connect route answers where a key set's Connect
// button is: on the page whose handlers serve it, at its redirect_url's
// origin; 404 for a key set no page serves, or without a connect page.
func TestConnectAdminAnswersConnectURL(t *testing.T) {
	t.Parallel()
	rig := newConnectRig(t, func(c *Connect) { c.RedirectURL = "https://ops.example.com:9443/oauth2/callback" })
	call := func(a *ConnectAdmin, path string) *httptest.ResponseRecorder {
		routes := a.Routes()
		req := httptest.NewRequest(http.MethodGet, "http://127.0.0.1:2019"+path, nil)
		rec := httptest.NewRecorder()
		if err := routes[0].Handler.ServeHTTP(rec, req); err != nil {
			t.Fatal(err)
		}
		return rec
	}
	a := &ConnectAdmin{registry: rig.registry}
	rec := call(a, "/oauth2_upstream/connect/crm")
	var got answer.ConnectURL
	if rec.Code != http.StatusOK || json.Unmarshal(rec.Body.Bytes(), &got) != nil ||
		got.ConnectURL != "https://ops.example.com:9443/key_sets/crm/connect" {
		t.Errorf("GET connect/crm = %d %s; want the Connect page on the redirect_url's origin", rec.Code, rec.Body)
	}
	if rec := call(a, "/oauth2_upstream/connect/billing"); rec.Code != http.StatusNotFound {
		t.Errorf("GET connect/billing = %d; want 404", rec.Code)
	}
	none := &ConnectAdmin{registry: new(live.Registry)}
	if rec := call(none, "/oauth2_upstream/connect/crm"); rec.Code != http.StatusNotFound {
		t.Errorf("GET connect/crm without a connect page = %d; want 404", rec.Code)
	}
}

// The connect page refuses configurations that cannot work.
func TestConnectValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		c    Connect
		want string
	}{
		{"no authorize_url", Connect{}, "authorize_url is required"},
		{"http authorize_url", Connect{AuthorizeURL: "http://login.example.com/authorize"}, "must be https"},
		{"callback at the root", Connect{AuthorizeURL: "https://a.example/authorize", CallbackPath: "/"}, "callback_path"},
		{"redirect_url elsewhere", Connect{AuthorizeURL: "https://a.example/authorize", CallbackPath: "/cb", RedirectURL: "https://ops.example/other"}, "its path must be callback_path"},
		{"reserved param", Connect{AuthorizeURL: "https://a.example/authorize", CallbackPath: "/cb", AuthorizeParams: map[string]string{"state": "x"}}, "sets it itself"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.c.FlowTimeout == 0 {
				tt.c.FlowTimeout = 1
			}
			if tt.c.CallbackPath == "" {
				tt.c.CallbackPath = defaultCallbackPath
			}
			if err := tt.c.Validate(); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Validate() = %v; want an error saying %q", err, tt.want)
			}
		})
	}
}

// setCookies are the cookies an answer sets, with their attributes.
func setCookies(p page) map[string]*http.Cookie {
	set := make(map[string]*http.Cookie)
	for _, c := range (&http.Response{Header: p.header}).Cookies() {
		set[c.Name] = c
	}
	return set
}

// Browsers share a host's cookies among all its ports (RFC 6265 section
// 8.5): on the plain-HTTP loopback site the page gets, its cookies reach
// the sidecar's proxy port and any other page of the host. So the flow
// cookie's Path is the callback's, and each name carries the page's site:
// the proxy port is sent no flow cookie and only cookies named
// oauth2_upstream_, which a proxying handler knows by that prefix; two
// pages of one host in one browser each run their own flow.
func TestConnectCookiesScopedToTheSite(t *testing.T) {
	t.Parallel()
	rig := newConnectRig(t, nil)
	site := siteID(rig.server.URL)
	status := rig.get(t, rig.client, "/")
	csrf := setCookies(status)[csrfCookieName+site]
	if csrf == nil || csrf.Path != "/" || csrf.Secure || !csrf.HttpOnly || csrf.SameSite != http.SameSiteStrictMode {
		t.Errorf("status page sets %v; want the HttpOnly, Strict CSRF cookie %s on /", status.header["Set-Cookie"], csrfCookieName+site)
	}
	start := rig.post(t, rig.client, "/key_sets/crm/connect", url.Values{"csrf": {rig.csrf(t, rig.client)}})
	flow := setCookies(start)[flowCookieName+site]
	if flow == nil || flow.Path != "/callback" || !flow.HttpOnly || flow.SameSite != http.SameSiteLaxMode {
		t.Errorf("Connect sets %v; want the HttpOnly, Lax flow cookie %s on /callback", start.header["Set-Cookie"], flowCookieName+site)
	}

	// The sidecar's proxy port, on the page's host.
	var mu sync.Mutex
	var proxied []*http.Cookie
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		proxied = append(proxied, r.Cookies()...)
		mu.Unlock()
	}))
	t.Cleanup(proxy.Close)
	// (Under the callback's path the proxy port would get it too: the
	// name's prefix is what a proxying handler knows it by.)
	for _, path := range []string{"/", "/v1/records"} {
		resp, err := rig.client.Get(proxy.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	mu.Lock()
	for _, c := range proxied {
		if strings.HasPrefix(c.Name, flowCookieName) || !strings.HasPrefix(c.Name, "oauth2_upstream_") {
			t.Errorf("the proxy port was sent cookie %s; want no flow cookie, and only oauth2_upstream_ names", c.Name)
		}
	}
	mu.Unlock()

	// A second page of the host, in the same browser.
	other := newConnectRig(t, nil)
	other.client = rig.client
	first := rig.start(t, "crm").Query().Get("state")
	second := other.start(t, "crm").Query().Get("state")
	if p := rig.callback(t, url.Values{"code": {"code-1"}, "state": {first}}); p.status != http.StatusSeeOther {
		t.Errorf("the first page's redirect back, after the second page's Connect = %d; want 303:\n%s", p.status, p.body)
	}
	if p := other.callback(t, url.Values{"code": {"code-1"}, "state": {second}}); p.status != http.StatusSeeOther {
		t.Errorf("the second page's redirect back = %d; want 303:\n%s", p.status, p.body)
	}
}

// Under TLS the cookies keep the __Host- prefix, which requires Path /
// and Secure, and the site in the name; the flow still connects.
func TestConnectCookiesUnderTLS(t *testing.T) {
	t.Parallel()
	rig := newConnectRig(t, nil)
	rig.server = httptest.NewTLSServer(rig.server.Config.Handler)
	t.Cleanup(rig.server.Close)
	rig.client.Transport = rig.server.Client().Transport
	site := siteID(rig.server.URL)
	csrf := setCookies(rig.get(t, rig.client, "/"))[hostPrefix+csrfCookieName+site]
	if csrf == nil || csrf.Path != "/" || !csrf.Secure {
		t.Errorf("CSRF cookie %v; want %s, Secure, on /", csrf, hostPrefix+csrfCookieName+site)
	}
	start := rig.post(t, rig.client, "/key_sets/crm/connect", url.Values{"csrf": {rig.csrf(t, rig.client)}})
	flow := setCookies(start)[hostPrefix+flowCookieName+site]
	if flow == nil || flow.Path != "/" || !flow.Secure {
		t.Errorf("flow cookie %v; want %s, Secure, on /", flow, hostPrefix+flowCookieName+site)
	}
	state := rig.start(t, "crm").Query().Get("state")
	if p := rig.callback(t, url.Values{"code": {"code-1"}, "state": {state}}); p.status != http.StatusSeeOther {
		t.Errorf("redirect back under TLS = %d; want 303:\n%s", p.status, p.body)
	}
}

// With redirect_url, the cookies are named after its origin, where the
// redirect back comes, whatever name the page was reached at.
func TestConnectCookiesNamedAfterRedirectURL(t *testing.T) {
	t.Parallel()
	rig := newConnectRig(t, func(c *Connect) { c.RedirectURL = "http://ops.example.com:9443/oauth2/callback" })
	name := csrfCookieName + siteID("http://ops.example.com:9443")
	if c := setCookies(rig.get(t, rig.client, "/"))[name]; c == nil {
		t.Errorf("status page sets no cookie %s", name)
	}
	start := rig.post(t, rig.client, "/key_sets/crm/connect", url.Values{"csrf": {rig.csrf(t, rig.client)}})
	if c := setCookies(start)[flowCookieName+siteID("http://ops.example.com:9443")]; c == nil || c.Path != "/oauth2/callback" {
		t.Errorf("Connect sets %v; want the flow cookie named after redirect_url, on its path", start.header["Set-Cookie"])
	}
}
