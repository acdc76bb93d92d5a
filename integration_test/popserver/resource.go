package popserver

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/oauth2upstream/caddy-oauth2-upstream/integration_test/resourceserver"
)

// serveResource is the API: it reads the whole body, then takes the
// request only with an active access token presented with its proof (the
// certificate it is bound to, or a DPoP proof of its key), and echoes what
// it received, as resourceserver does.
func (s *Server) serveResource(w http.ResponseWriter, r *http.Request) {
	h := sha256.New()
	n, err := io.Copy(h, r.Body)
	if err != nil {
		http.Error(w, fmt.Sprintf("read body: %v", err), http.StatusBadRequest)
		return
	}
	if !s.authorize(w, r) {
		return
	}
	writeJSON(w, http.StatusOK, resourceserver.Echo{
		Method: r.Method, Path: r.URL.Path, Query: r.URL.RawQuery,
		SHA256: hex.EncodeToString(h.Sum(nil)), Length: n,
		AuthorizationCount: len(r.Header.Values("Authorization")),
	})
}

// authorize checks the access token and its proof of possession; when
// they fail it answers 401 and returns false.
func (s *Server) authorize(w http.ResponseWriter, r *http.Request) bool {
	scheme := "Bearer"
	if s.cfg.Mode == DPoP {
		scheme = "DPoP" // RFC 9449 section 7.1: a DPoP-bound token is not a bearer token
	}
	value, ok := authorizationToken(r.Header.Values("Authorization"), scheme)
	if !ok {
		s.reject(w, scheme, "", "no "+scheme+" token")
		return false
	}
	tok, ok := s.lookup(value, false)
	if !ok {
		s.reject(w, scheme, "invalid_token", "inactive token")
		return false
	}
	switch s.cfg.Mode {
	case MTLS:
		// RFC 8705 section 3: the certificate of this connection must be
		// the one the token was bound to.
		if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 || Thumbprint(r.TLS.PeerCertificates[0].Raw) != tok.x5t {
			s.reject(w, scheme, "invalid_token", "wrong certificate")
			return false
		}
	case DPoP:
		return s.checkResourceProof(w, r, value, tok.jkt)
	}
	return true
}

// reject answers 401 with a challenge of scheme carrying errorCode, and
// counts the refusal for reason.
func (s *Server) reject(w http.ResponseWriter, scheme, errorCode, reason string) {
	s.mu.Lock()
	s.unauthorized++
	s.refusals[reason]++
	s.mu.Unlock()
	challenge := scheme + ` realm="popserver"`
	if scheme == "DPoP" {
		challenge += `, algs="ES256"`
	}
	if errorCode != "" {
		challenge += fmt.Sprintf(`, error=%q`, errorCode)
	}
	w.Header().Set("WWW-Authenticate", challenge)
	writeJSON(w, http.StatusUnauthorized, map[string]string{"error": errorCode})
}

// authorizationToken returns the token of the one Authorization header,
// which must use scheme (case-insensitive, RFC 9110 section 11.1).
func authorizationToken(values []string, scheme string) (string, bool) {
	if len(values) != 1 {
		return "", false
	}
	got, token, ok := strings.Cut(values[0], " ")
	token = strings.TrimSpace(token)
	return token, ok && strings.EqualFold(got, scheme) && token != ""
}
