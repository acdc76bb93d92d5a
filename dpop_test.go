package oauth2upstream

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/go-jose/go-jose/v4"

	"github.com/oauth2upstream/caddy-oauth2-upstream/credential/credentialtest"
)

// dpopAPI is an upstream that takes only "Authorization: DPoP <token>"
// with a valid proof of the key (RFC 9449 section 7): it checks the
// signature with go-jose, htm, htu, ath, a jti not seen before and, when
// it has one, its nonce.
type dpopAPI struct {
	server *httptest.Server

	mu    sync.Mutex // guards the fields below
	valid string     // the access token it takes
	nonce string     // the nonce it wants; "" for none
	// tokenFirst checks the token before the nonce, as an API that
	// looks its tokens up first does.
	tokenFirst bool
	jtis       map[string]bool
	answers    []string // the outcome of each request: "ok", "use_dpop_nonce", ...
	bodies     [][]byte
	athsSeen   []string
}

func newDPoPAPI(t *testing.T) *dpopAPI {
	a := &dpopAPI{jtis: map[string]bool{}}
	a.server = httptest.NewServer(http.HandlerFunc(a.serve))
	t.Cleanup(a.server.Close)
	return a
}

func (a *dpopAPI) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	outcome := a.check(r)
	a.mu.Lock()
	a.answers = append(a.answers, outcome)
	a.bodies = append(a.bodies, body)
	nonce := a.nonce
	a.mu.Unlock()
	switch outcome {
	case "ok":
		w.Write([]byte("ok"))
	case "use_dpop_nonce":
		w.Header().Set("DPoP-Nonce", nonce)
		w.Header().Set("WWW-Authenticate", `DPoP algs="ES256", error="use_dpop_nonce"`)
		w.WriteHeader(http.StatusUnauthorized)
	default:
		w.Header().Set("WWW-Authenticate", `DPoP algs="ES256", error="invalid_token"`)
		http.Error(w, outcome, http.StatusUnauthorized)
	}
}

// check returns "ok" or why the request is refused.
func (a *dpopAPI) check(r *http.Request) string {
	scheme, token, _ := strings.Cut(r.Header.Get("Authorization"), " ")
	if scheme != "DPoP" || len(r.Header.Values("DPoP")) != 1 {
		return "no DPoP token or not one proof"
	}
	sig, err := jose.ParseSigned(r.Header.Get("DPoP"), []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		return "proof does not parse"
	}
	jwk := sig.Signatures[0].Header.JSONWebKey
	payload, err := sig.Verify(jwk)
	if jwk == nil || err != nil {
		return "proof signature"
	}
	var c struct {
		JTI, HTM, HTU, ATH, Nonce string
	}
	json.Unmarshal(payload, &c)
	sum := sha256.Sum256([]byte(token))
	a.mu.Lock()
	defer a.mu.Unlock()
	switch {
	case a.jtis[c.JTI]:
		return "jti replayed"
	case c.HTM != r.Method || c.HTU != a.server.URL+r.URL.Path:
		return "htm or htu"
	case c.ATH != base64.RawURLEncoding.EncodeToString(sum[:]):
		return "ath"
	}
	a.jtis[c.JTI] = true
	a.athsSeen = append(a.athsSeen, c.ATH)
	switch {
	case a.tokenFirst && token != a.valid:
		return "invalid_token"
	case a.nonce != "" && c.Nonce != a.nonce:
		return "use_dpop_nonce"
	case token != a.valid:
		return "invalid_token"
	}
	return "ok"
}

func (a *dpopAPI) set(valid, nonce string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.valid, a.nonce = valid, nonce
}

func (a *dpopAPI) outcomes() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.answers...)
}

// With dpop, the upstream gets "Authorization: DPoP <token>" and a proof
// of its own with every attempt. A use_dpop_nonce 401 is sent again with
// the nonce and the same token, no grant; a rejected token is refreshed
// and the request replayed with a new proof of the new token; the body
// arrives whole each time.
func TestDPoPUpstreamRequests(t *testing.T) {
	t.Parallel()
	te := credentialtest.NewTokenEndpoint(t, "rt-0")
	te.Extra = map[string]any{"token_type": "DPoP"} // bound tokens: no other is accepted (RFC 9449 section 5)
	api := newDPoPAPI(t)
	api.set("at-1", "n-1")
	h := &Handler{TokenURL: te.URL(), ClientID: "c", RefreshToken: "rt-0", EncryptionKeys: []string{testEncryptionKey},
		DPoPOptions: DPoPOptions{DPoP: &DPoPConfig{Resource: api.server.URL}}}
	s := newSidecar(t, h, hostPort(t, api.server.URL))
	clock := credentialtest.NewClock()
	s.useClock(clock)

	body := bytes.Repeat([]byte("dpop "), 10<<10)
	post := func() (int, string) {
		req, _ := http.NewRequest(http.MethodPost, s.server.URL+"/v1/items?x=1", bytes.NewReader(body))
		req.Header.Set("DPoP", "the client's own, replaced")
		resp, got := s.do(t, req)
		return resp.StatusCode, string(got)
	}
	if status, got := post(); status != http.StatusOK || got != "ok" {
		t.Fatalf("POST = %d %q; want 200 ok after the nonce", status, got)
	}
	if got := strings.Join(api.outcomes(), ","); got != "use_dpop_nonce,ok" || te.Grants.Load() != 1 {
		t.Errorf("upstream answers %s after %d grants; want use_dpop_nonce,ok after 1 (no grant for a nonce)", got, te.Grants.Load())
	}

	ageTokens(clock)
	api.set("at-2", "n-1") // at-1 revoked: a refresh, and a replay with a proof of at-2
	if status, got := post(); status != http.StatusOK || got != "ok" {
		t.Fatalf("POST after the token was revoked = %d %q; want 200 ok", status, got)
	}
	if got := strings.Join(api.outcomes(), ","); got != "use_dpop_nonce,ok,invalid_token,ok" || te.Grants.Load() != 2 {
		t.Errorf("upstream answers %s after %d grants; want use_dpop_nonce,ok,invalid_token,ok after 2", got, te.Grants.Load())
	}
	api.mu.Lock()
	bodies, aths := api.bodies, api.athsSeen
	api.mu.Unlock()
	if aths[2] == aths[3] {
		t.Errorf("the replay's proof has the rejected token's ath; want the new token's")
	}

	// An API that rejects the token before it looks at the nonce, which it
	// changed: the replay after the refresh is asked for the nonce, and
	// sent once more with it, no further grant.
	ageTokens(clock)
	api.set("at-3", "n-2")
	api.mu.Lock()
	api.tokenFirst = true
	api.mu.Unlock()
	if status, got := post(); status != http.StatusOK || got != "ok" {
		t.Fatalf("POST after the token was revoked and the nonce changed = %d %q; want 200 ok", status, got)
	}
	if got := strings.Join(api.outcomes()[4:], ","); got != "invalid_token,use_dpop_nonce,ok" || te.Grants.Load() != 3 {
		t.Errorf("upstream answers %s after %d grants; want invalid_token,use_dpop_nonce,ok after 3", got, te.Grants.Load())
	}
	api.mu.Lock()
	bodies = api.bodies
	api.mu.Unlock()
	for i, b := range bodies {
		if !bytes.Equal(b, body) {
			t.Errorf("attempt %d: upstream got %d bytes; want the %d sent", i+1, len(b), len(body))
		}
	}
	if len(s.storedKeySet(t, "default").ProofKey) == 0 {
		t.Errorf("the key set holds no DPoP key; want the one made at its first grant")
	}
}

// testEncryptionKey is a valid encryption_key: 32 bytes, base64.
var testEncryptionKey = base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32))

// Validate refuses DPoP options that cannot work, naming the option; with
// a key of its own, a configuration needs no encryption_key.
func TestValidateDPoPKeyWithoutEncryption(t *testing.T) {
	t.Parallel()
	h := Handler{TokenURL: "https://login.example.com/token", ClientID: "c",
		DPoPOptions: DPoPOptions{DPoP: &DPoPConfig{Resource: "https://api.example.com", Key: "/run/secrets/dpop.key"}}}
	h.setDefaults()
	if err := h.Validate(); err != nil {
		t.Errorf("Validate(dpop with a key, no encryption_key) = %v; want nil", err)
	}
}

// Validate refuses DPoP options that cannot work, naming the option.
func TestValidateDPoPErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		modify func(h *Handler)
		want   string
	}{
		{"no resource", func(h *Handler) { h.DPoP = &DPoPConfig{} }, "dpop: the upstream's URL is required"},
		{"relative resource", func(h *Handler) { h.DPoP = &DPoPConfig{Resource: "/api"} }, `dpop "/api": must be an absolute http(s) URL`},
		{"resource with query", func(h *Handler) { h.DPoP = &DPoPConfig{Resource: "https://api.example.com/?a=b"} }, "without query or fragment"},
		{"another header", func(h *Handler) { h.DPoP, h.HeaderName = &DPoPConfig{Resource: "https://api.example.com"}, "X-Token" }, `dpop: a DPoP-bound token goes in "Authorization: DPoP <token>"`},
		{"bearer scheme", func(h *Handler) { h.DPoP, h.HeaderScheme = &DPoPConfig{Resource: "https://api.example.com"}, "Bearer" }, `not Authorization "Bearer"`},
		// Each key set's own proof key would lie in clear beside its tokens.
		{"own keys without encryption", func(h *Handler) { h.DPoP, h.EncryptionKeys = &DPoPConfig{Resource: "https://api.example.com"}, nil }, "set encryption_key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := Handler{TokenURL: "https://login.example.com/token", ClientID: "c", EncryptionKeys: []string{testEncryptionKey}}
			tt.modify(&h)
			h.setDefaults()
			if err := h.Validate(); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Validate() = %v; want an error containing %q", err, tt.want)
			}
		})
	}
}

// A DPoP key that is not EC P-256, or not there, stops provisioning with
// an error naming the option; the Caddyfile takes dpop <url> { key ... }.
func TestProvisionDPoPKey(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	rsaFile := writePEM(t, dir, "rsa.pem", "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(rsaKey))
	_, ecFile := newECKeyFile(t, dir, "ec.pem")
	for _, tt := range []struct{ key, want string }{
		{rsaFile, "dpop key: DPoP proofs are signed ES256, which needs an EC P-256 key"},
		{filepath.Join(dir, "missing.pem"), "dpop key " + filepath.Join(dir, "missing.pem") + ": reading the PEM file"},
		{ecFile, ""},
	} {
		o := DPoPOptions{DPoP: &DPoPConfig{Resource: "https://api.example.com", Key: tt.key}}
		err := o.provisionDPoP(caddy.NewReplacer())
		if tt.want == "" && (err != nil || o.prover == nil) || tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)) {
			t.Errorf("provisionDPoP(key %s) = %v; want %q", filepath.Base(tt.key), err, tt.want)
		}
	}
	var h Handler
	input := "oauth2_upstream {\n dpop https://api.example.com {\n  key " + ecFile + "\n }\n}"
	if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input)); err != nil || h.DPoP == nil || h.DPoP.Resource != "https://api.example.com" || h.DPoP.Key != ecFile {
		t.Errorf("UnmarshalCaddyfile(dpop block) = %v, %+v", err, h.DPoP)
	}
	if err := new(Handler).UnmarshalCaddyfile(caddyfile.NewTestDispenser("oauth2_upstream {\n dpop\n}")); err == nil || !strings.Contains(err.Error(), "dpop: want <upstream url>") {
		t.Errorf("UnmarshalCaddyfile(dpop without url) = %v; want an error", err)
	}
}
