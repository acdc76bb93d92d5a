package popserver

import (
	"encoding/json"
	"net/http"
	"time"
)

// Grant types the token endpoint knows.
const (
	GrantClientCredentials = "client_credentials"
	GrantRefreshToken      = "refresh_token"
)

// refreshTokenLifespan is long: refresh tokens here die by rotation.
const refreshTokenLifespan = 24 * time.Hour

// serveToken is the token endpoint: it authenticates the client (by its
// certificate, or as a public client whose DPoP proof binds the tokens),
// then grants client_credentials or refresh_token, binding the new tokens
// to the certificate or the key.
func (s *Server) serveToken(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.ParseForm() != nil {
		oauthError(w, http.StatusBadRequest, "invalid_request")
		return
	}
	if r.PostForm.Get("client_id") != s.cfg.ClientID || r.PostForm.Has("client_secret") || r.Header.Get("Authorization") != "" {
		s.refuse("client authentication")
		oauthError(w, http.StatusUnauthorized, "invalid_client")
		return
	}
	var bound token
	switch s.cfg.Mode {
	case MTLS:
		// The handshake verified the chain (RequireAndVerifyClientCert);
		// the subject names the client (RFC 8705 section 2.1).
		leaf := r.TLS.PeerCertificates[0]
		if leaf.Subject.CommonName != s.cfg.ClientSubject {
			s.refuse("certificate subject")
			oauthError(w, http.StatusUnauthorized, "invalid_client")
			return
		}
		bound.x5t = Thumbprint(leaf.Raw)
	case DPoP:
		jkt, ok := s.checkTokenProof(w, r)
		if !ok {
			return
		}
		bound.jkt = jkt
	}
	grant := r.PostForm.Get("grant_type")
	switch grant {
	case GrantClientCredentials:
	case GrantRefreshToken:
		if !s.spend(r.PostForm.Get("refresh_token"), bound) {
			s.refuse("refresh token")
			oauthError(w, http.StatusBadRequest, "invalid_grant")
			return
		}
	default:
		oauthError(w, http.StatusBadRequest, "unsupported_grant_type")
		return
	}
	s.answerGrant(w, grant, bound)
}

// answerGrant issues the tokens of a successful grant.
func (s *Server) answerGrant(w http.ResponseWriter, grant string, bound token) {
	access := bound
	access.expiry = time.Now().Add(s.cfg.AccessTokenLifespan)
	value, err := s.issue(access)
	if err != nil {
		oauthError(w, http.StatusInternalServerError, "server_error")
		return
	}
	answer := map[string]any{
		"access_token": value, "token_type": "Bearer", "expires_in": int(s.cfg.AccessTokenLifespan / time.Second),
	}
	if s.cfg.Mode == DPoP {
		answer["token_type"] = "DPoP" // RFC 9449 section 5
	}
	if s.cfg.RefreshTokens {
		refresh := bound
		refresh.refresh, refresh.expiry = true, time.Now().Add(refreshTokenLifespan)
		if answer["refresh_token"], err = s.issue(refresh); err != nil {
			oauthError(w, http.StatusInternalServerError, "server_error")
			return
		}
	}
	s.mu.Lock()
	s.grants[grant]++
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, answer)
}

// Seed issues a refresh token bound to nothing yet, as a user's consent
// would: the grant that spends it binds its successors to the proof (or
// certificate) of that grant.
func (s *Server) Seed() (string, error) {
	return s.issue(token{refresh: true, expiry: time.Now().Add(refreshTokenLifespan)})
}

// spend rotates refresh token value: it must be active and, unless it is a
// seed, bound like bound (a DPoP-bound refresh token needs a proof of the
// same key: RFC 9449 section 5), and is never accepted again.
func (s *Server) spend(value string, bound token) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.tokens[value]
	seed := t != nil && t.x5t == "" && t.jkt == ""
	if !ok || !t.refresh || t.revoked || time.Now().After(t.expiry) || !seed && (t.x5t != bound.x5t || t.jkt != bound.jkt) {
		return false
	}
	t.revoked = true
	return true
}

func oauthError(w http.ResponseWriter, status int, code string) {
	writeJSON(w, status, map[string]string{"error": code})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v) // a failure means the client went away
}
