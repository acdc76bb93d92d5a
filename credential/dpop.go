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
	"io"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
)

// dpopTokenType is the token_type of a DPoP-bound token (RFC 9449 section
// 5); with DPoP no other is accepted (tokenClient.checkBound).
const dpopTokenType = "DPoP"

// DPoP holds what an engine needs for DPoP (RFC 9449): the key of every
// key set, or none, in which case each key set gets its own at its first
// grant (keystore.KeySet.ProofKey); and the nonces servers asked for, by
// origin. Set it as TokenEndpoint.DPoP; it is safe for concurrent use.
type DPoP struct {
	configured *proofKey // nil: each key set's own

	mu     sync.Mutex           // guards the fields below
	nonces map[string]string    // the last DPoP-Nonce of each origin
	keys   map[string]*proofKey // parsed stored keys, by their JWK
}

// NewDPoP returns DPoP proving with key, an EC P-256 private key (proofs
// are ES256), or with each key set's own key when key is nil.
func NewDPoP(key crypto.Signer) (*DPoP, error) {
	d := &DPoP{nonces: map[string]string{}, keys: map[string]*proofKey{}}
	if key == nil {
		return d, nil
	}
	ec, ok := key.(*ecdsa.PrivateKey)
	if !ok || ec.Curve != elliptic.P256() {
		return nil, fmt.Errorf("DPoP proofs are signed ES256, which needs an EC P-256 key, not %s", keyKind(key))
	}
	var err error
	if d.configured, err = newProofKey(ec); err != nil {
		return nil, err
	}
	return d, nil
}

func keyKind(key crypto.Signer) string {
	if ec, ok := key.Public().(*ecdsa.PublicKey); ok {
		return "an EC key on " + ec.Curve.Params().Name
	}
	return fmt.Sprintf("a %T", key.Public())
}

// proofKey signs DPoP proofs: ES256, with the public key in the jwk header
// and typ dpop+jwt (RFC 9449 section 4.2).
type proofKey struct {
	signer jose.Signer
	jwk    json.RawMessage // the private JWK, as stored
}

func newProofKey(key *ecdsa.PrivateKey) (*proofKey, error) {
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key},
		(&jose.SignerOptions{EmbedJWK: true}).WithType("dpop+jwt"))
	if err != nil {
		return nil, fmt.Errorf("DPoP key: %v", err)
	}
	jwk, err := jose.JSONWebKey{Key: key, Algorithm: string(jose.ES256)}.MarshalJSON()
	if err != nil {
		return nil, fmt.Errorf("DPoP key: %v", err)
	}
	return &proofKey{signer: signer, jwk: jwk}, nil
}

// proofClaims are the claims of a proof (RFC 9449 section 4.2).
type proofClaims struct {
	JTI   string `json:"jti"`
	HTM   string `json:"htm"`
	HTU   string `json:"htu"`
	IAT   int64  `json:"iat"`
	ATH   string `json:"ath,omitempty"`
	Nonce string `json:"nonce,omitempty"`
}

// sign makes a proof for a request with method to target, at now, with
// nonce and, for a resource request, the hash of accessToken (ath). Each
// proof has a jti of its own: servers refuse one they saw.
func (k *proofKey) sign(method, target, nonce, accessToken string, now time.Time) (string, error) {
	htu, err := proofTarget(target)
	if err != nil {
		return "", err
	}
	jti, err := newJTI()
	if err != nil {
		return "", err
	}
	claims := proofClaims{JTI: jti, HTM: method, HTU: htu, IAT: now.Unix(), Nonce: nonce}
	if accessToken != "" {
		sum := sha256.Sum256([]byte(accessToken))
		claims.ATH = base64.RawURLEncoding.EncodeToString(sum[:])
	}
	return jwt.Signed(k.signer).Claims(claims).Serialize()
}

// proofTarget is the htu of a request to target: its URL without query
// and fragment (RFC 9449 section 4.2).
func proofTarget(target string) (string, error) {
	u, err := url.Parse(target)
	if err != nil || u.Scheme == "" || u.Host == "" {
		return "", fmt.Errorf("DPoP: %q is not an absolute URL", target)
	}
	u.RawQuery, u.Fragment, u.RawFragment, u.ForceQuery = "", "", "", false
	return u.String(), nil
}

// origin is the scheme and authority of target: servers' nonces are kept
// by it.
func origin(target string) string {
	u, err := url.Parse(target)
	if err != nil {
		return target
	}
	return u.Scheme + "://" + u.Host
}

// keyOf returns the key that key set ks's tokens are bound to: the
// configured one, or ks's own. fresh is the JWK of a key made now for a key
// set that has none, to be stored with its next generation.
func (d *DPoP) keyOf(ks *keystore.KeySet, generate bool) (key *proofKey, fresh json.RawMessage, err error) {
	if d.configured != nil {
		return d.configured, nil, nil
	}
	if len(ks.ProofKey) == 0 {
		if !generate {
			return nil, nil, errors.New("the key set has no DPoP key: its tokens were granted without DPoP; refresh it")
		}
		ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, nil, fmt.Errorf("making a DPoP key: %w", err)
		}
		if key, err = newProofKey(ec); err != nil {
			return nil, nil, err
		}
		return key, key.jwk, nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if key = d.keys[string(ks.ProofKey)]; key != nil {
		return key, nil, nil
	}
	var jwk jose.JSONWebKey
	if err := jwk.UnmarshalJSON(ks.ProofKey); err != nil {
		return nil, nil, fmt.Errorf("the key set's DPoP key does not parse: %v", err)
	}
	ec, ok := jwk.Key.(*ecdsa.PrivateKey)
	if !ok {
		return nil, nil, errors.New("the key set's DPoP key is not an EC private key")
	}
	if key, err = newProofKey(ec); err != nil {
		return nil, nil, err
	}
	d.keys[string(ks.ProofKey)] = key
	return key, nil, nil
}

// nonce returns the last nonce target's origin sent, "" for none.
func (d *DPoP) nonce(target string) string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.nonces[origin(target)]
}

// noteNonce keeps the DPoP-Nonce that target's origin sent; "" keeps the
// one it had.
func (d *DPoP) noteNonce(target, nonce string) {
	if nonce == "" {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.nonces[origin(target)] = nonce
}

// Proof returns the DPoP proof for a request with method to target that
// carries cred's access token: signed with the key the token is bound to,
// with the ath of the token and the nonce target's origin last sent. It
// returns "" when the engine does not use DPoP.
func (e *Engine) Proof(cred *Credential, method, target string) (string, error) {
	d := e.client.DPoP
	if d == nil {
		return "", nil
	}
	key, _, err := d.keyOf(cred.KeySet, false)
	if err != nil {
		return "", &Error{KeySet: cred.KeySet.Name, Code: CodeNoProofKey, Description: err.Error(), Err: err}
	}
	proof, err := key.sign(method, target, d.nonce(target), cred.KeySet.Token.AccessToken(), e.now())
	if err != nil {
		return "", &Error{KeySet: cred.KeySet.Name, Code: CodeNoProofKey, Description: err.Error(), Err: err}
	}
	return proof, nil
}

// NoteNonce keeps the DPoP-Nonce a server at target sent (RFC 9449 section
// 8.2 and 9: with a use_dpop_nonce error, or with any answer), for the
// next proofs to its origin. It does nothing without DPoP.
func (e *Engine) NoteNonce(target, nonce string) {
	if e.client.DPoP != nil {
		e.client.DPoP.noteNonce(target, nonce)
	}
}

// proofKeyContext carries the key that proves a grant's token requests,
// from the refresh that knows the key set to the transport that signs.
type proofKeyContext struct{}

// proofGrant is the key of one grant, and the JWK to store when it was
// made for it.
type proofGrant struct {
	key   *proofKey
	fresh json.RawMessage
	err   error
}

// proving returns ctx carrying the DPoP key for a grant of key set ks,
// made now when ks has none. Without DPoP it returns ctx.
func (c *tokenClient) proving(ctx context.Context, ks *keystore.KeySet) context.Context {
	if c.DPoP == nil {
		return ctx
	}
	key, fresh, err := c.DPoP.keyOf(ks, true)
	return context.WithValue(ctx, proofKeyContext{}, &proofGrant{key: key, fresh: fresh, err: err})
}

// prove returns a copy of token request req with a DPoP proof of the
// grant's key (from req's context, or the configured key).
func (c *tokenClient) prove(req *http.Request) (*http.Request, error) {
	g, _ := req.Context().Value(proofKeyContext{}).(*proofGrant)
	var key *proofKey
	switch {
	case g != nil && g.err != nil:
		closeBody(req)
		return nil, g.err
	case g != nil:
		key = g.key
	case c.DPoP.configured != nil:
		key = c.DPoP.configured
	default:
		closeBody(req)
		return nil, errors.New("DPoP: no key for this token request (only a refresh knows the key set's own key)")
	}
	proof, err := key.sign(req.Method, req.URL.String(), c.DPoP.nonce(c.URL), "", c.now())
	if err != nil {
		closeBody(req)
		return nil, err
	}
	out := req.Clone(req.Context()) // a RoundTripper must not modify its request
	out.Header.Set("DPoP", proof)
	return out, nil
}

// asksForNonce reports whether a token endpoint's answer is RFC 9449
// section 8's 400 use_dpop_nonce with a DPoP-Nonce. It reads the body and
// puts it back.
func asksForNonce(resp *http.Response) bool {
	if resp.StatusCode != http.StatusBadRequest || resp.Header.Get("DPoP-Nonce") == "" {
		return false
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxTokenResponse))
	resp.Body.Close()
	resp.Body = io.NopCloser(bytes.NewReader(body))
	if err != nil {
		return false
	}
	var answer struct {
		Error string `json:"error"`
	}
	return json.Unmarshal(body, &answer) == nil && answer.Error == "use_dpop_nonce"
}

// freshProofKey is the JWK of a DPoP key made for the grant under ctx, nil
// when none was made.
func freshProofKey(ctx context.Context) json.RawMessage {
	if g, ok := ctx.Value(proofKeyContext{}).(*proofGrant); ok {
		return g.fresh
	}
	return nil
}

// keepProofKey gives next, the key set a grant made, the DPoP key made for
// that grant (next already holds its predecessor's, if any).
func (r grantResult) keepProofKey(next *keystore.KeySet) {
	if r.proofKey != nil {
		next.ProofKey = r.proofKey
	}
}
