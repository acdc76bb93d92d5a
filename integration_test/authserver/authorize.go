package authserver

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"html/template"
	"net/http"
	"net/url"
	"strings"

	"github.com/ory/fosite"
)

// The one resource owner who can sign in at the authorization endpoint.
const (
	LoginUser     = "alice"
	LoginPassword = "wonderland"
)

// AuthorizeURL is the authorization endpoint's URL (RFC 6749 section 3.1),
// served beside the token endpoint: a sign-in page, then a consent page,
// then the redirect back with a code. It insists on PKCE with S256 (RFC
// 7636), which fosite then checks at the token endpoint.
func (s *Server) AuthorizeURL() string { return "http://" + s.tokenAddr + "/authorize" }

// routeAuthorize adds the authorization endpoint's pages to mux.
func (s *Server) routeAuthorize(mux *http.ServeMux) {
	mux.HandleFunc("GET /authorize", s.serveSignIn)
	mux.HandleFunc("POST /authorize/sign-in", s.serveConsent)
	mux.HandleFunc("POST /authorize/consent", s.serveDecision)
}

// signInKey signs the sign-in tickets that carry a signed-in user from the
// sign-in page to the consent page.
var signInKey = func() []byte {
	key := make([]byte, 32)
	rand.Read(key)
	return key
}()

var authorizePages = template.Must(template.New("pages").Parse(`
{{define "sign-in"}}<!doctype html><html><head><meta charset="utf-8"><title>Sign in</title></head><body>
<h1>Sign in to the test provider</h1>{{with .Error}}<p id="error">{{.}}</p>{{end}}
<form method="post" action="/authorize/sign-in">
<input type="hidden" name="request" value="{{.Request}}">
<label>User <input id="username" name="username" autocomplete="username"></label>
<label>Password <input id="password" name="password" type="password"></label>
<button id="sign-in" type="submit">Sign in</button>
</form></body></html>{{end}}
{{define "consent"}}<!doctype html><html><head><meta charset="utf-8"><title>Consent</title></head><body>
<h1>Allow {{.Client}} to act for {{.User}}?</h1><p>Scopes: {{.Scopes}}</p>
<form method="post" action="/authorize/consent">
<input type="hidden" name="request" value="{{.Request}}">
<input type="hidden" name="ticket" value="{{.Ticket}}">
<button id="allow" type="submit" name="decision" value="allow">Allow</button>
<button id="deny" type="submit" name="decision" value="deny">Deny</button>
</form></body></html>{{end}}`))

type authorizePage struct {
	Request, Error, Client, User, Scopes, Ticket string
}

// authorizeRequest validates the authorization request whose query is
// rawQuery, as fosite does at the authorization endpoint, and insists on
// an S256 code challenge.
func (s *Server) authorizeRequest(r *http.Request, rawQuery string) (fosite.AuthorizeRequester, error) {
	req, err := http.NewRequestWithContext(r.Context(), http.MethodGet, "http://"+s.tokenAddr+"/authorize?"+rawQuery, nil)
	if err != nil {
		return nil, fosite.ErrInvalidRequest.WithWrap(err)
	}
	ar, err := s.provider.NewAuthorizeRequest(r.Context(), req)
	if err != nil {
		return ar, err
	}
	if ar.GetRequestForm().Get("code_challenge_method") != "S256" || ar.GetRequestForm().Get("code_challenge") == "" {
		return ar, fosite.ErrInvalidRequest.WithHint("This provider requires PKCE with code_challenge_method S256.")
	}
	return ar, nil
}

// serveSignIn checks the authorization request and shows the sign-in page.
func (s *Server) serveSignIn(w http.ResponseWriter, r *http.Request) {
	ar, err := s.authorizeRequest(r, r.URL.RawQuery)
	if err != nil {
		s.provider.WriteAuthorizeError(r.Context(), w, ar, err)
		return
	}
	s.renderAuthorize(w, http.StatusOK, "sign-in", authorizePage{Request: r.URL.RawQuery})
}

// serveConsent checks the credentials and shows the consent page.
func (s *Server) serveConsent(w http.ResponseWriter, r *http.Request) {
	request := r.PostFormValue("request")
	ar, err := s.authorizeRequest(r, request)
	if err != nil {
		s.provider.WriteAuthorizeError(r.Context(), w, ar, err)
		return
	}
	user := r.PostFormValue("username")
	if user != LoginUser || r.PostFormValue("password") != LoginPassword {
		s.renderAuthorize(w, http.StatusUnauthorized, "sign-in", authorizePage{Request: request, Error: "Wrong user or password."})
		return
	}
	s.renderAuthorize(w, http.StatusOK, "consent", authorizePage{Request: request, Client: ar.GetClient().GetID(),
		User: user, Scopes: strings.Join(ar.GetRequestedScopes(), " "), Ticket: signInTicket(user, request)})
}

// serveDecision answers the consent: a code sent back to the client, or
// access_denied (RFC 6749 section 4.1.2.1).
func (s *Server) serveDecision(w http.ResponseWriter, r *http.Request) {
	request := r.PostFormValue("request")
	ar, err := s.authorizeRequest(r, request)
	if err != nil {
		s.provider.WriteAuthorizeError(r.Context(), w, ar, err)
		return
	}
	ticket := r.PostFormValue("ticket")
	user, _, _ := strings.Cut(ticket, ".")
	if !hmac.Equal([]byte(ticket), []byte(signInTicket(user, request))) {
		s.provider.WriteAuthorizeError(r.Context(), w, ar, fosite.ErrAccessDenied.WithHint("Sign in first."))
		return
	}
	if r.PostFormValue("decision") != "allow" {
		s.provider.WriteAuthorizeError(r.Context(), w, ar, fosite.ErrAccessDenied.WithHint("The resource owner denied the request."))
		return
	}
	for _, scope := range ar.GetRequestedScopes() {
		ar.GrantScope(scope)
	}
	response, err := s.provider.NewAuthorizeResponse(r.Context(), ar, newSession(user))
	if err != nil {
		s.provider.WriteAuthorizeError(r.Context(), w, ar, err)
		return
	}
	s.provider.WriteAuthorizeResponse(r.Context(), w, ar, response)
}

// signInTicket says that user signed in for the authorization request.
func signInTicket(user, request string) string {
	mac := hmac.New(sha256.New, signInKey)
	mac.Write([]byte(user + "\x00" + request))
	return url.PathEscape(user) + "." + base64.RawURLEncoding.EncodeToString(mac.Sum(nil))
}

func (s *Server) renderAuthorize(w http.ResponseWriter, status int, name string, p authorizePage) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	authorizePages.ExecuteTemplate(w, name, p)
}
