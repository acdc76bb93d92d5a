package popserver

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

func newServer(t *testing.T, cfg Config) *Server {
	t.Helper()
	s, err := New(cfg)
	if err != nil {
		t.Fatalf("New() = %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// prover makes DPoP proofs, right or wrong, as a test client.
type prover struct {
	key *ecdsa.PrivateKey
}

func newProver(t *testing.T) prover {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return prover{key: key}
}

// proof signs claims with p's key and embeds the public key of embedded
// (p's own when nil), typ dpop+jwt unless typ says otherwise.
func (p prover) proof(t *testing.T, claims proofClaims, typ string, embedded *ecdsa.PrivateKey) string {
	t.Helper()
	if embedded == nil {
		embedded = p.key
	}
	jwk := &jose.JSONWebKey{Key: embedded.Public()}
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: p.key},
		&jose.SignerOptions{ExtraHeaders: map[jose.HeaderKey]any{"typ": typ, "jwk": jwk}})
	if err != nil {
		t.Fatal(err)
	}
	out, err := jwt.Signed(s).Claims(claims).Serialize()
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func jti() string {
	b := make([]byte, 12)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// send makes a request with a proof and returns the status and the error
// code (of the JSON body).
func send(t *testing.T, method, target, authorization, proof string, form url.Values) (int, string, http.Header) {
	t.Helper()
	var body *strings.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	} else {
		body = strings.NewReader("")
	}
	req, _ := http.NewRequest(method, target, body)
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	if authorization != "" {
		req.Header.Set("Authorization", authorization)
	}
	if proof != "" {
		req.Header.Set("DPoP", proof)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var answer struct {
		Error       string `json:"error"`
		AccessToken string `json:"access_token"`
	}
	json.NewDecoder(resp.Body).Decode(&answer)
	if answer.AccessToken != "" {
		resp.Header.Set("X-Test-Token", answer.AccessToken)
	}
	return resp.StatusCode, answer.Error, resp.Header
}

// The DPoP servers check every proof as RFC 9449 section 4.3 says: a
// proof that is right but for one thing is refused, and the reason
// counted. Each server asks for its nonce first.
func TestDPoPProofChecks(t *testing.T) {
	t.Parallel()
	s := newServer(t, Config{Mode: DPoP, ClientID: "c", RequireNonce: true, NonceUses: 100})
	p := newProver(t)
	form := url.Values{"grant_type": {GrantClientCredentials}, "client_id": {"c"}}
	now := time.Now().Unix()

	status, code, header := send(t, http.MethodPost, s.TokenURL(), "", p.proof(t, proofClaims{JTI: jti(), HTM: "POST", HTU: s.TokenURL(), IAT: now}, "dpop+jwt", nil), form)
	nonce := header.Get("DPoP-Nonce")
	if status != http.StatusBadRequest || code != codeUseNonce || nonce == "" {
		t.Fatalf("token request without the nonce = %d %q, nonce %q; want 400 use_dpop_nonce with a nonce", status, code, nonce)
	}
	status, _, header = send(t, http.MethodPost, s.TokenURL(), "", p.proof(t, proofClaims{JTI: jti(), HTM: "POST", HTU: s.TokenURL(), IAT: now, Nonce: nonce}, "dpop+jwt", nil), form)
	token := header.Get("X-Test-Token")
	if status != http.StatusOK || token == "" {
		t.Fatalf("token request with the nonce = %d; want 200 with a token", status)
	}

	target := s.URL() + "/items"
	_, _, header = send(t, http.MethodGet, target, "DPoP "+token, p.proof(t, proofClaims{JTI: jti(), HTM: "GET", HTU: target, IAT: now, ATH: ath(token)}, "dpop+jwt", nil), nil)
	rsNonce := header.Get("DPoP-Nonce")
	good := func() proofClaims {
		return proofClaims{JTI: jti(), HTM: "GET", HTU: target, IAT: time.Now().Unix(), ATH: ath(token), Nonce: rsNonce}
	}
	replayed := p.proof(t, good(), "dpop+jwt", nil)
	if status, _, _ := send(t, http.MethodGet, target, "DPoP "+token, replayed, nil); status != http.StatusOK {
		t.Fatalf("a right proof = %d; want 200", status)
	}
	other := newProver(t)
	for _, tt := range []struct {
		name, reason, proof, authorization string
	}{
		{"replayed jti", "jti replayed", replayed, ""},
		{"htm", "proof htm or htu", p.proof(t, with(good(), func(c *proofClaims) { c.HTM = "POST" }), "dpop+jwt", nil), ""},
		{"htu", "proof htm or htu", p.proof(t, with(good(), func(c *proofClaims) { c.HTU += "/other" }), "dpop+jwt", nil), ""},
		{"old iat", "proof iat", p.proof(t, with(good(), func(c *proofClaims) { c.IAT -= 120 }), "dpop+jwt", nil), ""},
		{"ath", "proof ath", p.proof(t, with(good(), func(c *proofClaims) { c.ATH = ath("another") }), "dpop+jwt", nil), ""},
		{"nonce", codeUseNonce, p.proof(t, with(good(), func(c *proofClaims) { c.Nonce = "stale" }), "dpop+jwt", nil), ""},
		{"typ", "proof header", p.proof(t, good(), "JWT", nil), ""},
		{"signature", "proof signature", p.proof(t, good(), "dpop+jwt", other.key), ""},
		{"another key", "key of another token", other.proof(t, good(), "dpop+jwt", nil), ""},
		{"bearer scheme", "no DPoP token", p.proof(t, good(), "dpop+jwt", nil), "Bearer " + token},
	} {
		authorization := tt.authorization
		if authorization == "" {
			authorization = "DPoP " + token
		}
		before := s.Refusals()[tt.reason]
		if status, _, _ := send(t, http.MethodGet, target, authorization, tt.proof, nil); status != http.StatusUnauthorized || s.Refusals()[tt.reason] != before+1 {
			t.Errorf("%s: %d, refusals %v; want 401 counted as %q", tt.name, status, s.Refusals(), tt.reason)
		}
	}
}

func with(c proofClaims, change func(*proofClaims)) proofClaims {
	change(&c)
	return c
}

func ath(token string) string {
	sum := sha256.Sum256([]byte(token))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// The MTLS token endpoint takes only the registered subject's certificate,
// and binds the token to it: the resource server refuses it with another.
func TestMTLSBinding(t *testing.T) {
	t.Parallel()
	pki, err := NewPKI()
	if err != nil {
		t.Fatal(err)
	}
	s := newServer(t, Config{Mode: MTLS, ClientID: "c", PKI: pki, ClientSubject: "client"})
	client := func(cn string) *http.Client {
		cert, err := pki.ClientCert(cn)
		if err != nil {
			t.Fatal(err)
		}
		tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pki.Pool, Certificates: []tls.Certificate{cert.Cert}}}
		t.Cleanup(tr.CloseIdleConnections)
		return &http.Client{Transport: tr}
	}
	grant := func(c *http.Client) (int, string) {
		resp, err := c.PostForm(s.TokenURL(), url.Values{"grant_type": {GrantClientCredentials}, "client_id": {"c"}})
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var answer struct {
			AccessToken string `json:"access_token"`
		}
		json.NewDecoder(resp.Body).Decode(&answer)
		return resp.StatusCode, answer.AccessToken
	}
	if status, _ := grant(client("intruder")); status != http.StatusUnauthorized {
		t.Errorf("grant with another subject's certificate = %d; want 401", status)
	}
	owner := client("client")
	status, token := grant(owner)
	if status != http.StatusOK {
		t.Fatalf("grant = %d; want 200", status)
	}
	for _, tt := range []struct {
		name   string
		client *http.Client
		want   int
	}{{"the bound certificate", owner, http.StatusOK}, {"another certificate", client("client"), http.StatusUnauthorized}} {
		req, _ := http.NewRequest(http.MethodGet, s.URL()+"/x", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := tt.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tt.want {
			t.Errorf("%s: %d; want %d", tt.name, resp.StatusCode, tt.want)
		}
	}
}
