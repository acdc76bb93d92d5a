package connect

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"net/http"
	"net/url"
	"time"
)

// Cookies of the connect page. Browsers do not scope cookies by port (RFC
// 6265 section 8.5), so a page on a plain-HTTP loopback port shares its
// host's cookies with every other port of it: the sidecar's proxy port,
// another connect page. Each name therefore ends with siteID of the page's
// own origin, so that a cookie of another page or port is not taken for
// this page's, and the flow cookie's path is the callback's (cookiePath).
// Every name starts with oauth2_upstream_ (__Host-oauth2_upstream_ under
// TLS): the prefix by which a proxying handler knows them, to keep them
// from upstreams. Under TLS the names take the __Host- prefix, which
// browsers accept only from a secure origin, on path /, for this host
// alone: a neighbouring subdomain cannot plant them.
const (
	csrfCookieName = "oauth2_upstream_csrf_"
	flowCookieName = "oauth2_upstream_flow_"
	hostPrefix     = "__Host-"
	// csrfField is the form field that carries the CSRF token.
	csrfField = "csrf"
	// maxFormBody caps a POST body: a CSRF token and little else.
	maxFormBody = 4 << 10
)

// cookieName is base followed by the identifier of the page's site, with
// the __Host- prefix under TLS.
func (c *Connect) cookieName(r *http.Request, base string) string {
	site := c.redirectOrigin
	if site == "" {
		site = requestOrigin(r)
	}
	name := base + siteID(site)
	if r.TLS != nil {
		return hostPrefix + name
	}
	return name
}

// siteID is a short, stable identifier of origin: the first 4 bytes of its
// SHA-256, in hex. It tells a browser's connect pages apart, not secrets:
// the CSRF token's HMAC is what no one else can make.
func siteID(origin string) string {
	sum := sha256.Sum256([]byte(origin))
	return hex.EncodeToString(sum[:4])
}

// cookiePath is the Path of a cookie that only the routes at path need.
// Under TLS it is /, which the __Host- prefix requires (RFC 6265bis section
// 4.1.3.2); there Secure keeps the cookie from plain-HTTP ports, and the
// name from other pages.
func cookiePath(r *http.Request, path string) string {
	if r.TLS != nil {
		return "/"
	}
	return path
}

// csrfToken returns the token that this browser's forms carry, setting
// the cookie it is derived from when the browser has none. The token is
// an HMAC of the cookie under the pages' key (familyState), so a token is good only
// with its own cookie, and a cookie planted by someone else yields no
// token they could know (the signed double-submit cookie pattern). The
// cookie's Path is /: the status page and the key set pages under
// /key_sets/ both need it, and no narrower path covers both, so its name
// narrows it to this page's site.
func (c *Connect) csrfToken(w http.ResponseWriter, r *http.Request) string {
	name := c.cookieName(r, csrfCookieName)
	value := ""
	if cookie, err := r.Cookie(name); err == nil && validCSRFCookie(cookie.Value) {
		value = cookie.Value
	} else {
		value = randomToken()
		http.SetCookie(w, &http.Cookie{
			Name: name, Value: value, Path: "/",
			HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode,
		})
	}
	return c.state.signCSRF(value)
}

func validCSRFCookie(value string) bool {
	b, err := base64.RawURLEncoding.DecodeString(value)
	return err == nil && len(b) == 32
}

func (st *familyState) signCSRF(cookie string) string {
	mac := hmac.New(sha256.New, st.csrfKey)
	mac.Write([]byte("oauth2_upstream_connect csrf\x00" + cookie))
	return base64.RawURLEncoding.EncodeToString(mac.Sum(nil))
}

// checkCSRF accepts a POST whose form carries the token of the browser's
// CSRF cookie (compared in constant time) and, when the browser says where
// the form came from (Origin), came from this page's own origin.
func (c *Connect) checkCSRF(r *http.Request) error {
	if o := r.Header.Get("Origin"); o != "" && o != "null" {
		u, err := url.Parse(o)
		if err != nil || u.Host != r.Host {
			return errors.New("the form was sent from another site")
		}
	}
	cookie, err := r.Cookie(c.cookieName(r, csrfCookieName))
	if err != nil || !validCSRFCookie(cookie.Value) {
		return errors.New("this browser holds no CSRF cookie of this page: reload the page and try again")
	}
	r.Body = http.MaxBytesReader(nil, r.Body, maxFormBody)
	if err := r.ParseForm(); err != nil {
		return errors.New("the form could not be read")
	}
	given := r.PostForm.Get(csrfField)
	if given == "" || !hmac.Equal([]byte(given), []byte(c.state.signCSRF(cookie.Value))) {
		return errors.New("the form's CSRF token is missing or not this browser's: reload the page and try again")
	}
	return nil
}

// flowCookie binds a flow's state to the browser that started it. It is
// SameSite=Lax: the provider's redirect back is a cross-site top-level
// navigation, which Lax cookies accompany and Strict ones do not. Only the
// callback reads it, so its Path is the callback's. A negative maxAge
// deletes it.
func (c *Connect) flowCookie(r *http.Request, state string, maxAge time.Duration) *http.Cookie {
	seconds := int(maxAge / time.Second)
	if maxAge < 0 {
		seconds = -1
	}
	return &http.Cookie{
		Name: c.cookieName(r, flowCookieName), Value: state, Path: cookiePath(r, c.CallbackPath), MaxAge: seconds,
		HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteLaxMode,
	}
}
