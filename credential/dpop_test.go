package credential

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
)

// seenProof is a DPoP proof as a server verifies it: signature with the
// embedded jwk, then the header and claims.
type seenProof struct {
	typ    string
	jkt    string
	claims proofClaims
}

// verifyProof checks compact's signature with its own jwk (RFC 9449
// section 4.3) with go-jose and returns what it says.
func verifyProof(t *testing.T, compact string) seenProof {
	t.Helper()
	sig, err := jose.ParseSigned(compact, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		t.Fatalf("ParseSigned(DPoP proof) = %v", err)
	}
	h := sig.Signatures[0].Header
	if h.JSONWebKey == nil || !h.JSONWebKey.IsPublic() {
		t.Fatalf("proof jwk = %v; want a public key", h.JSONWebKey)
	}
	payload, err := sig.Verify(h.JSONWebKey)
	if err != nil {
		t.Fatalf("proof signature with its jwk: %v", err)
	}
	var p seenProof
	if err := json.Unmarshal(payload, &p.claims); err != nil {
		t.Fatal(err)
	}
	thumb, _ := h.JSONWebKey.Thumbprint(crypto.SHA256)
	p.jkt = base64.RawURLEncoding.EncodeToString(thumb)
	p.typ, _ = h.ExtraHeaders["typ"].(string)
	return p
}

// dpopEndpoint makes the fixture's token endpoint answer DPoP-bound
// tokens, record every DPoP proof and, while nonce is set, answer a proof without it 400 use_dpop_nonce
// with the nonce (RFC 9449 section 8). It also sends DPoP-Nonce next with
// successful answers when not empty.
type dpopEndpoint struct {
	mu     sync.Mutex // guards the fields below
	proofs []string
	forms  []string // client_assertion of each request
	nonce  string
	next   string
	always bool // ask for the nonce whatever the proof holds
}

func (f *refresherFixture) useDPoP(t *testing.T, key crypto.Signer) *dpopEndpoint {
	t.Helper()
	d, err := NewDPoP(key)
	if err != nil {
		t.Fatalf("NewDPoP() = %v", err)
	}
	f.r.client.DPoP = d
	de := &dpopEndpoint{}
	f.te.Mu.Lock()
	f.te.Extra = map[string]any{"token_type": "DPoP"} // a bound token (RFC 9449 section 5)
	f.te.Respond = func(w http.ResponseWriter, r *http.Request) bool {
		r.ParseForm()
		proof := r.Header.Get("DPoP")
		de.mu.Lock()
		defer de.mu.Unlock()
		de.proofs = append(de.proofs, proof)
		de.forms = append(de.forms, r.PostForm.Get("client_assertion"))
		if de.nonce != "" && (de.always || proof == "" || verifyProof(t, proof).claims.Nonce != de.nonce) {
			w.Header().Set("DPoP-Nonce", de.nonce)
			answerJSON(http.StatusBadRequest, `{"error":"use_dpop_nonce"}`)(w, r)
			return true
		}
		if de.next != "" {
			w.Header().Set("DPoP-Nonce", de.next)
		}
		return false
	}
	f.te.Mu.Unlock()
	return de
}

func (de *dpopEndpoint) seen() []string {
	de.mu.Lock()
	defer de.mu.Unlock()
	return append([]string(nil), de.proofs...)
}

// With DPoP every token request carries a proof (RFC 9449 section 5):
// typ dpop+jwt, ES256 with the key in the jwk header, htm POST, htu the
// token URL without its query, iat now, no ath, a jti of its own. The key
// is made at the key set's first grant, stored with the key set, and
// proves its later grants; the key set is still stored encrypted.
func TestEngineDPoPTokenRequests(t *testing.T) {
	t.Parallel()
	f := newEngineFixture(t, "rt-0")
	codec, err := keystore.NewEncryptingCodec(base64.StdEncoding.EncodeToString(make([]byte, 32)))
	if err != nil {
		t.Fatal(err)
	}
	f.store.UseCodec(codec)
	f.other.UseCodec(codec)
	de := f.useDPoP(t, nil)
	f.r.client.URL += "?tenant=t1"
	storeKeySet(t, f.store, f.keySet("sf", 1, "", "rt-0", time.Time{}))

	first := f.mustCurrent(t, "sf")
	f.clock.Advance(2 * time.Hour)
	second := f.mustCurrent(t, "sf")
	if second.KeySet.Generation != 3 {
		t.Fatalf("generation after the token expired = %d; want 3", second.KeySet.Generation)
	}
	proofs := de.seen()
	if len(proofs) != 2 {
		t.Fatalf("token requests = %d; want 2", len(proofs))
	}
	wantHTU := strings.TrimSuffix(f.r.client.URL, "?tenant=t1")
	var jkts []string
	for i, compact := range proofs {
		p := verifyProof(t, compact)
		c := p.claims
		if p.typ != "dpop+jwt" || c.HTM != http.MethodPost || c.HTU != wantHTU || c.ATH != "" || c.Nonce != "" {
			t.Errorf("proof %d: typ %q, htm %q, htu %q, ath %q, nonce %q; want dpop+jwt, POST, %q, none, none", i+1, p.typ, c.HTM, c.HTU, c.ATH, c.Nonce, wantHTU)
		}
		if c.JTI == "" || i > 0 && c.JTI == verifyProof(t, proofs[0]).claims.JTI {
			t.Errorf("proof %d: jti %q; want one of its own", i+1, c.JTI)
		}
		jkts = append(jkts, p.jkt)
	}
	if jkts[0] != jkts[1] {
		t.Errorf("the refresh's proof key %s differs from the first grant's %s; want the key set's one key", jkts[1], jkts[0])
	}
	var jwk, firstJWK jose.JSONWebKey
	if err := jwk.UnmarshalJSON(second.KeySet.ProofKey); err != nil {
		t.Fatalf("the stored proof key does not parse: %v", err)
	}
	if err := firstJWK.UnmarshalJSON(first.KeySet.ProofKey); err != nil || !firstJWK.Key.(*ecdsa.PrivateKey).Equal(jwk.Key) {
		t.Errorf("the proof key of generation 3 is not generation 2's; want the key kept")
	}
	raw, _ := os.ReadFile(filepath.Join(f.dir, "sf.json"))
	d := base64.RawURLEncoding.EncodeToString(jwk.Key.(*ecdsa.PrivateKey).D.Bytes())
	if strings.Contains(string(raw), d) || strings.Contains(string(raw), "proof_key") {
		t.Errorf("the stored document holds the DPoP key in clear: %s", raw)
	}
}

// A token endpoint's 400 use_dpop_nonce (RFC 9449 section 8) gets the
// request once more with its nonce, a new proof and a new client assertion,
// and no second grant; the nonce is kept for the next grant, and a nonce
// sent with a success replaces it. An endpoint that asks again is not
// asked a third time.
func TestEngineDPoPTokenEndpointNonce(t *testing.T) {
	t.Parallel()
	f := newEngineFixture(t, "rt-0")
	f.r.client.ClientAuth, f.r.client.ClientSecret = ClientAuthPrivateKeyJWT, ""
	f.r.client.Signer = mustSigner(t, testECKey(), "", "")
	de := f.useDPoP(t, nil)
	de.nonce, de.next = "n-1", "n-2"
	storeKeySet(t, f.store, f.keySet("sf", 1, "", "rt-0", time.Time{}))

	f.mustCurrent(t, "sf")
	proofs := de.seen()
	if len(proofs) != 2 || f.te.Grants.Load() != 1 {
		t.Fatalf("token requests %d, grants %d; want 2 (the nonce asked for, then the grant), 1", len(proofs), f.te.Grants.Load())
	}
	if a, b := verifyProof(t, proofs[0]).claims, verifyProof(t, proofs[1]).claims; a.Nonce != "" || b.Nonce != "n-1" || a.JTI == b.JTI {
		t.Errorf("proofs: nonce %q then %q, jti %q then %q; want none then n-1, two jtis", a.Nonce, b.Nonce, a.JTI, b.JTI)
	}
	if de.forms[0] == "" || de.forms[0] == de.forms[1] {
		t.Errorf("client assertions of the two requests: the same, or none; want a new one for the second")
	}

	de.mu.Lock()
	de.nonce = "n-2" // the nonce the success announced
	de.mu.Unlock()
	f.clock.Advance(2 * time.Hour)
	f.mustCurrent(t, "sf")
	if proofs = de.seen(); len(proofs) != 3 || verifyProof(t, proofs[2]).claims.Nonce != "n-2" {
		t.Fatalf("after the success's DPoP-Nonce: %d requests, last nonce %q; want 3, n-2", len(proofs), verifyProof(t, proofs[len(proofs)-1]).claims.Nonce)
	}

	de.mu.Lock()
	de.nonce, de.always = "n-3", true // an endpoint that asks whatever it gets
	de.mu.Unlock()
	f.clock.Advance(2 * time.Hour)
	_, err := f.r.Current(context.Background(), "sf")
	if re := asError(t, err); re.Code != "use_dpop_nonce" || !re.Temporary {
		t.Errorf("Current with an endpoint that asks again = %v; want a temporary use_dpop_nonce", err)
	}
	if n := len(de.seen()); n != 5 {
		t.Errorf("token requests = %d; want 5 (two for the last grant, no third)", n)
	}
}

// Engine.Proof makes the proof of a resource request (RFC 9449 section
// 7): htm, htu without query and fragment, ath of the access token, the
// key set's key, and the nonce last noted for the request's origin only.
func TestEngineProofForResourceRequests(t *testing.T) {
	t.Parallel()
	f := newEngineFixture(t, "rt-0")
	de := f.useDPoP(t, nil)
	storeKeySet(t, f.store, f.keySet("sf", 1, "", "rt-0", time.Time{}))
	cred := f.mustCurrent(t, "sf")
	f.r.NoteNonce("https://api.example.com/v1/other", "rs-1")

	for _, tt := range []struct{ target, wantHTU, wantNonce string }{
		{"https://api.example.com/v1/items?limit=5#top", "https://api.example.com/v1/items", "rs-1"},
		{"https://other.example.com/v1/items", "https://other.example.com/v1/items", ""},
	} {
		proof, err := f.r.Proof(cred, http.MethodPatch, tt.target)
		if err != nil {
			t.Fatalf("Proof(%q) = %v", tt.target, err)
		}
		p := verifyProof(t, proof)
		sum := sha256.Sum256([]byte(cred.KeySet.Token.AccessToken()))
		if c := p.claims; c.HTM != http.MethodPatch || c.HTU != tt.wantHTU || c.Nonce != tt.wantNonce || c.ATH != base64.RawURLEncoding.EncodeToString(sum[:]) {
			t.Errorf("Proof(%q) = htm %q, htu %q, nonce %q, ath %q; want PATCH, %q, %q, the token's hash", tt.target, c.HTM, c.HTU, c.Nonce, c.ATH, tt.wantHTU, tt.wantNonce)
		}
		if p.claims.IAT != f.clock.Now().Unix() {
			t.Errorf("Proof(%q) iat = %d; want now, %d", tt.target, p.claims.IAT, f.clock.Now().Unix())
		}
		if p.jkt != verifyProof(t, de.seen()[0]).jkt {
			t.Errorf("Proof(%q) key differs from the token request's", tt.target)
		}
	}
	// A key set granted before DPoP was on has no key to prove with.
	old := &Credential{KeySet: testKeySet("old", 1, "at-old", "", time.Time{})}
	if _, err := f.r.Proof(old, http.MethodGet, "https://api.example.com/"); asError(t, err).Code != CodeNoProofKey {
		t.Errorf("Proof(key set without a key) = %v; want %s", err, CodeNoProofKey)
	}
}

// A configured key proves every key set's requests and is not stored; a
// key that cannot sign ES256 is refused, saying why.
func TestDPoPConfiguredKey(t *testing.T) {
	t.Parallel()
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	for _, tt := range []struct {
		key  crypto.Signer
		want string
	}{
		{p384, "needs an EC P-256 key, not an EC key on P-384"},
		{testRSAKey(), "needs an EC P-256 key, not a *rsa.PublicKey"},
	} {
		if _, err := NewDPoP(tt.key); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("NewDPoP(%T) = %v; want an error containing %q", tt.key, err, tt.want)
		}
	}
	f := newEngineFixture(t, "rt-0")
	de := f.useDPoP(t, testECKey())
	storeKeySet(t, f.store, f.keySet("sf", 1, "", "rt-0", time.Time{}))
	cred := f.mustCurrent(t, "sf")
	if len(cred.KeySet.ProofKey) != 0 {
		t.Errorf("stored proof key = %s; want none with a configured key", cred.KeySet.ProofKey)
	}
	thumb, _ := (&jose.JSONWebKey{Key: testECKey().Public()}).Thumbprint(crypto.SHA256)
	if got := verifyProof(t, de.seen()[0]).jkt; got != base64.RawURLEncoding.EncodeToString(thumb) {
		t.Errorf("proof key %s; want the configured key's", got)
	}
}

// grantRecorder counts the grants an Observer is told of, by outcome.
type grantRecorder struct {
	Observers // the other methods: nothing
	mu        sync.Mutex
	failed    []string // the code of each failed grant
	succeeded int
}

func (g *grantRecorder) GrantDone(_ string, err error, _ time.Duration) {
	g.mu.Lock()
	defer g.mu.Unlock()
	var re *Error
	switch {
	case err == nil:
		g.succeeded++
	case errors.As(err, &re):
		g.failed = append(g.failed, re.Code)
	default:
		g.failed = append(g.failed, err.Error())
	}
}

// With DPoP, a token response whose token_type is not DPoP (RFC 9449
// section 5; compared case-insensitively, as token types are) holds a
// bearer token: it is refused as a temporary token_type_not_dpop, counted
// as a failed grant and logged; nothing of it is stored, and its access
// token is never sent: the key set in use goes on with its own. The token
// endpoint's answer reaches the engine by x/oauth2's path and by the
// salvage of a 200 x/oauth2 refused (a fractional expires_in).
func TestEngineDPoPRefusesTokenNotBound(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name      string
		tokenType string // "" leaves token_type out
		expiresIn string
		refused   bool
	}{
		{"Bearer", `"Bearer"`, "3600", true},
		{"bearer", `"bearer"`, "3600", true},
		{"no token_type", "", "3600", true},
		{"another type", `"N_A"`, "3600", true},
		{"the access token as token_type", `"at-unbound-secret"`, "3600", true}, // not echoed
		{"Bearer, salvaged", `"Bearer"`, "3600.5", true},
		{"DPoP", `"DPoP"`, "3600", false},
		{"dpop", `"dpop"`, "3600", false},
		{"DPoP, salvaged", `"DPoP"`, "3600.5", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newEngineFixture(t, "rt-0")
			d, err := NewDPoP(testECKey())
			if err != nil {
				t.Fatal(err)
			}
			f.r.client.DPoP = d
			core, logs := observer.New(zap.DebugLevel)
			f.r.logger = zap.New(core)
			grants := &grantRecorder{}
			f.r.observer = grants
			body := `{"access_token":"at-unbound-secret","refresh_token":"rt-unbound-secret","expires_in":` + tt.expiresIn
			if tt.tokenType != "" {
				body += `,"token_type":` + tt.tokenType
			}
			f.respond(func(w http.ResponseWriter, r *http.Request) bool {
				answerJSON(http.StatusOK, body+"}")(w, r)
				return true
			})
			// In use: a token an hour old that the upstream just rejected.
			storeKeySet(t, f.store, f.keySet("sf", 1, "at-own", "rt-0", f.clock.Now().Add(time.Hour)))
			f.mustCurrent(t, "sf")
			before := f.readDocument(t, "sf")

			cred, err := f.r.Rejected(context.Background(), "sf", 1)
			if !tt.refused {
				if err != nil || cred.KeySet.Token.AccessToken() != "at-unbound-secret" || cred.KeySet.Generation != 2 {
					t.Fatalf("Rejected(%q, 1) = %s, %v; want the granted token, generation 2", "sf", credString(cred), err)
				}
				return
			}
			if cred != nil {
				t.Errorf("Rejected(%q, 1) = %s; want no credential", "sf", credString(cred))
			}
			re := asError(t, err)
			if re.Code != CodeTokenNotDPoP || !re.Temporary || re.KeySet != "sf" {
				t.Errorf("Rejected(%q, 1) = {KeySet %q, Code %q, Temporary %v}; want {sf, %q, true}", "sf", re.KeySet, re.Code, re.Temporary, CodeTokenNotDPoP)
			}
			if after := f.readDocument(t, "sf"); !bytes.Equal(after, before) {
				t.Errorf("stored key set changed:\n%s\nwant\n%s", after, before)
			}
			if cred := f.mustCurrent(t, "sf"); cred.KeySet.Token.AccessToken() != "at-own" || cred.KeySet.Generation != 1 {
				t.Errorf("Current(%q) after the refusal = %s; want at-own, generation 1", "sf", credString(cred))
			}
			grants.mu.Lock()
			if grants.succeeded != 0 || len(grants.failed) != 1 || grants.failed[0] != CodeTokenNotDPoP {
				t.Errorf("observed grants: %d succeeded, failed %q; want none succeeded, one %s", grants.succeeded, grants.failed, CodeTokenNotDPoP)
			}
			grants.mu.Unlock()
			logged := false
			for _, e := range logs.All() {
				if e.Level >= zap.WarnLevel && e.ContextMap()["error_code"] == CodeTokenNotDPoP {
					logged = true
				}
				if line := fmt.Sprint(e.Message, e.ContextMap()); strings.Contains(line, "unbound-secret") {
					t.Errorf("log line holds a token value: %s", line)
				}
			}
			if !logged {
				t.Errorf("no log entry at warn or above with error_code %s", CodeTokenNotDPoP)
			}
			if strings.Contains(err.Error(), "unbound-secret") {
				t.Errorf("error %q holds a token value", err)
			}
		})
	}
}
