package connect

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"net/http"
	"net/url"
	"time"
)

// Cookies of the connect page. Under TLS their names take the __Host-
// prefix, which browsers accept only from a secure origin, on path /, for
// this host alone: a neighbouring subdomain cannot plant them.
const (
	csrfCookieName = "oauth2_upstream_csrf"
	flowCookieName = "oauth2_upstream_flow"
	hostPrefix     = "__Host-"
	// csrfField is the form field that carries the CSRF token.
	csrfField = "csrf"
	// maxFormBody caps a POST body: a CSRF token and little else.
	maxFormBody = 4 << 10
)

// cookieName is base, with the __Host- prefix under TLS.
func cookieName(r *http.Request, base string) string {
	if r.TLS != nil {
		return hostPrefix + base
	}
	return base
}

// csrfToken returns the token that this browser's forms carry, setting
// the cookie it is derived from when the browser has none. The token is
// an HMAC of the cookie under the pages' key (familyState), so a token is good only
// with its own cookie, and a cookie planted by someone else yields no
// token they could know (the signed double-submit cookie pattern).
func (st *familyState) csrfToken(w http.ResponseWriter, r *http.Request) string {
	value := ""
	if cookie, err := r.Cookie(cookieName(r, csrfCookieName)); err == nil && validCSRFCookie(cookie.Value) {
		value = cookie.Value
	} else {
		value = randomToken()
		http.SetCookie(w, &http.Cookie{
			Name: cookieName(r, csrfCookieName), Value: value, Path: "/",
			HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode,
		})
	}
	return st.signCSRF(value)
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
func (st *familyState) checkCSRF(r *http.Request) error {
	if o := r.Header.Get("Origin"); o != "" && o != "null" {
		u, err := url.Parse(o)
		if err != nil || u.Host != r.Host {
			return errors.New("the form was sent from another site")
		}
	}
	cookie, err := r.Cookie(cookieName(r, csrfCookieName))
	if err != nil || !validCSRFCookie(cookie.Value) {
		return errors.New("this browser holds no CSRF cookie of this page: reload the page and try again")
	}
	r.Body = http.MaxBytesReader(nil, r.Body, maxFormBody)
	if err := r.ParseForm(); err != nil {
		return errors.New("the form could not be read")
	}
	given := r.PostForm.Get(csrfField)
	if given == "" || !hmac.Equal([]byte(given), []byte(st.signCSRF(cookie.Value))) {
		return errors.New("the form's CSRF token is missing or not this browser's: reload the page and try again")
	}
	return nil
}

// flowCookie binds a flow's state to the browser that started it. It is
// SameSite=Lax: the provider's redirect back is a cross-site top-level
// navigation, which Lax cookies accompany and Strict ones do not. A
// negative maxAge deletes it.
func flowCookie(r *http.Request, state string, maxAge time.Duration) *http.Cookie {
	seconds := int(maxAge / time.Second)
	if maxAge < 0 {
		seconds = -1
	}
	return &http.Cookie{
		Name: cookieName(r, flowCookieName), Value: state, Path: "/", MaxAge: seconds,
		HttpOnly: true, Secure: r.TLS != nil, SameSite: http.SameSiteLaxMode,
	}
}
