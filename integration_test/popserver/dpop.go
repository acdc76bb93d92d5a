package popserver

import (
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// iatWindow is how far a proof's iat may be from the server's clock (RFC
// 9449 section 11.1: a short window, as the proof is made per request).
const iatWindow = 30 * time.Second

// Error codes of RFC 9449 sections 5 and 7.1.
const (
	codeInvalidProof = "invalid_dpop_proof"
	codeUseNonce     = "use_dpop_nonce"
)

// proofClaims are the claims of a DPoP proof (RFC 9449 section 4.2).
type proofClaims struct {
	JTI   string `json:"jti"`
	HTM   string `json:"htm"`
	HTU   string `json:"htu"`
	IAT   int64  `json:"iat"`
	ATH   string `json:"ath"`
	Nonce string `json:"nonce"`
}

// dpopChecker checks DPoP proofs as RFC 9449 section 4.3 says, with
// go-jose, remembers every jti it saw, and keeps each server's nonce.
type dpopChecker struct {
	requireNonce bool
	nonceUses    int

	mu        sync.Mutex // guards the fields below
	seen      map[string]bool
	nonces    map[string]*serverNonce // by server: "token", "resource"
	lastProof string                  // the last proof the resource server took
	lastToken string                  // and its access token
}

// serverNonce is a server's current DPoP-Nonce and how often proofs used it.
type serverNonce struct {
	value string
	uses  int
}

func newDPoPChecker(requireNonce bool, nonceUses int) *dpopChecker {
	if nonceUses <= 0 {
		nonceUses = 3
	}
	return &dpopChecker{requireNonce: requireNonce, nonceUses: nonceUses, seen: map[string]bool{}, nonces: map[string]*serverNonce{}}
}

// verify checks the proof of request r to htu, for accessToken ("" at the
// token endpoint) at server. It returns the key's thumbprint (jkt), or the
// error code and the reason of a refusal; newNonce is a nonce to announce
// in the answer, "" for none.
func (c *dpopChecker) verify(server string, r *http.Request, htu, accessToken string) (jkt, code, reason, newNonce string) {
	values := r.Header.Values("DPoP")
	if len(values) != 1 {
		return "", codeInvalidProof, "not one DPoP header", ""
	}
	sig, err := jose.ParseSigned(values[0], []jose.SignatureAlgorithm{jose.ES256, jose.RS256, jose.PS256})
	if err != nil || len(sig.Signatures) != 1 {
		return "", codeInvalidProof, "proof does not parse", ""
	}
	header := sig.Signatures[0].Header
	key := header.JSONWebKey
	if header.ExtraHeaders["typ"] != "dpop+jwt" || key == nil || !key.IsPublic() || !key.Valid() {
		return "", codeInvalidProof, "proof header", ""
	}
	payload, err := sig.Verify(key)
	if err != nil {
		return "", codeInvalidProof, "proof signature", ""
	}
	var claims proofClaims
	if json.Unmarshal(payload, &claims) != nil || claims.JTI == "" {
		return "", codeInvalidProof, "proof claims", ""
	}
	if claims.HTM != r.Method || claims.HTU != htu {
		return "", codeInvalidProof, "proof htm or htu", ""
	}
	if iat := time.Unix(claims.IAT, 0); time.Since(iat).Abs() > iatWindow {
		return "", codeInvalidProof, "proof iat", ""
	}
	if accessToken != "" {
		sum := sha256.Sum256([]byte(accessToken))
		if claims.ATH != base64.RawURLEncoding.EncodeToString(sum[:]) {
			return "", codeInvalidProof, "proof ath", ""
		}
	}
	thumb, err := key.Thumbprint(crypto.SHA256)
	if err != nil {
		return "", codeInvalidProof, "proof key", ""
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.seen[claims.JTI] {
		return "", codeInvalidProof, "jti replayed", ""
	}
	c.seen[claims.JTI] = true
	if c.requireNonce {
		n := c.nonceLocked(server)
		if claims.Nonce != n.value {
			return "", codeUseNonce, codeUseNonce, n.value
		}
		if n.uses++; n.uses >= c.nonceUses {
			// RFC 9449 section 8.2: a new nonce, announced in this answer.
			*n = serverNonce{value: randomNonce()}
			newNonce = n.value
		}
	}
	if server == "resource" {
		c.lastProof, c.lastToken = values[0], accessToken
	}
	return base64.RawURLEncoding.EncodeToString(thumb), "", "", newNonce
}

func (c *dpopChecker) nonceLocked(server string) *serverNonce {
	n := c.nonces[server]
	if n == nil {
		n = &serverNonce{value: randomNonce()}
		c.nonces[server] = n
	}
	return n
}

func randomNonce() string {
	b := make([]byte, 16)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// checkTokenProof checks a token request's proof; on failure it answers
// 400 (RFC 9449 section 5: invalid_dpop_proof, or use_dpop_nonce with the
// nonce) and returns false.
func (s *Server) checkTokenProof(w http.ResponseWriter, r *http.Request) (string, bool) {
	jkt, code, reason, nonce := s.dpop.verify("token", r, s.tokenURL, "")
	if nonce != "" {
		w.Header().Set("DPoP-Nonce", nonce)
	}
	if code != "" {
		s.refuse(reason)
		oauthError(w, http.StatusBadRequest, code)
		return "", false
	}
	return jkt, true
}

// checkResourceProof checks a resource request's proof against the access
// token's key; on failure it answers 401 with a DPoP challenge (RFC 9449
// section 7.1; with use_dpop_nonce, the nonce, section 9) and returns false.
func (s *Server) checkResourceProof(w http.ResponseWriter, r *http.Request, accessToken, jkt string) bool {
	// The resource's URL as the server knows itself, whatever Host says.
	got, code, reason, nonce := s.dpop.verify("resource", r, s.apiURL+r.URL.Path, accessToken)
	if nonce != "" {
		w.Header().Set("DPoP-Nonce", nonce)
	}
	switch {
	case code != "":
		s.reject(w, "DPoP", code, reason)
		return false
	case got != jkt:
		s.reject(w, "DPoP", "invalid_token", "key of another token")
		return false
	}
	return true
}

// LastResourceProof returns the last DPoP proof the resource server
// accepted and the access token it came with, for a test to replay.
func (s *Server) LastResourceProof() (proof, accessToken string) {
	s.dpop.mu.Lock()
	defer s.dpop.mu.Unlock()
	return s.dpop.lastProof, s.dpop.lastToken
}
