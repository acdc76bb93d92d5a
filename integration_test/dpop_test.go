package integration_test

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/oauth2upstream/caddy-oauth2-upstream/integration_test/authserver"
	"github.com/oauth2upstream/caddy-oauth2-upstream/integration_test/popserver"
)

// proofRefusals are the popserver's refusals of a proof that is wrong in
// itself; a sidecar must cause none.
var proofRefusals = []string{"jti replayed", "not one DPoP header", "proof does not parse", "proof header",
	"proof signature", "proof claims", "proof htm or htu", "proof iat", "proof ath", "proof key", "key of another token"}

// DPoP end to end (RFC 9449) with a public client whose refresh tokens are
// bound to its key. The token endpoint and the API validate every proof
// with go-jose (signature, htm, htu, iat, jti never seen, ath, nonce) and
// each asks for a nonce of its own, replaced every 3 proofs and announced
// with the answer. The sidecar makes its key at the first grant and stores
// it, encrypted, with the key set; sends each attempt a new proof; is asked
// for each nonce once per process (later ones come with answers); after a
// revoked token's 401 refreshes with the same key and replays the body with
// a new proof; after a restart proves with the stored key (the rotated
// refresh token is bound to it). No proof is ever refused as replayed; a
// replayed proof is.
func TestDPoPEndToEnd(t *testing.T) {
	t.Parallel()
	pop := newPopServer(t, popserver.Config{Mode: popserver.DPoP, ClientID: "dpop-client", RefreshTokens: true, RequireNonce: true, NonceUses: 3})
	seed, err := pop.Seed()
	if err != nil {
		t.Fatal(err)
	}
	dir, ksOption := fileKeystore(t)
	sc := startSidecar(t, spec{
		tokenURL: pop.TokenURL(), upstream: hostport(pop.URL()), keystore: ksOption, seed: seed,
		client: &authserver.Client{ID: "dpop-client"},
		env:    []string{"KEYSTORE_KEY=" + base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32))},
		options: []string{"client_auth none", "encryption_key {env.KEYSTORE_KEY}",
			"dpop " + pop.URL()},
	})
	c := newClient(t, 2)
	body := bytes.Repeat([]byte("proof of possession "), 16<<10) // 320 KiB
	if r := get(c, sc.URL()+"/first?page=1"); r.err != nil || r.status != http.StatusOK {
		t.Fatalf("GET /first: %s; want 200; refusals %v", r, pop.Refusals())
	}
	for i := range 4 { // past a nonce change at each server
		postThrough(t, c, sc.URL()+"/upload/"+string(rune('a'+i)), body)
	}
	time.Sleep(2 * minRefreshInterval) // old enough for a rejection to make a grant
	pop.RevokeAccessTokens()
	postThrough(t, c, sc.URL()+"/after-revocation", body)
	if got := pop.Grants(popserver.GrantRefreshToken); got != 2 {
		t.Errorf("refresh_token grants = %d; want 2 (the seed's, and after the revocation)", got)
	}
	checkStoredEncrypted(t, dir)

	// A new process: its key is the stored one, or the bound refresh token
	// would be refused.
	if err := sc.Stop(); err != nil {
		t.Fatal(err)
	}
	mustStart(t, sc)
	c = newClient(t, 2) // the old process's connections are gone
	time.Sleep(2 * minRefreshInterval)
	pop.RevokeAccessTokens()
	postThrough(t, c, sc.URL()+"/after-restart", body)
	if got := pop.Grants(popserver.GrantRefreshToken); got != 3 {
		t.Errorf("refresh_token grants = %d; want 3 (the restarted sidecar's, with the stored key)", got)
	}
	refusals := pop.Refusals()
	for _, reason := range proofRefusals {
		if refusals[reason] != 0 {
			t.Errorf("refusals: %v; want none for %q", refusals, reason)
		}
	}
	// One nonce asked for per server and per process: later ones come
	// with the answers.
	if got := refusals["use_dpop_nonce"]; got != 4 {
		t.Errorf("use_dpop_nonce answers = %d; want 4 (each server once, twice over); refusals %v", got, refusals)
	}
	if got := refusals["inactive token"]; got != 2 {
		t.Errorf("revoked tokens presented = %d; want 2", got)
	}

	// The API refuses a proof it saw: replay the last one the sidecar sent.
	proof, token := pop.LastResourceProof()
	req, _ := http.NewRequest(http.MethodPost, pop.URL()+"/after-restart", nil) // as the proof says
	req.Header.Set("Authorization", "DPoP "+token)
	req.Header.Set("DPoP", proof)
	if r := do(c, req); r.status != http.StatusUnauthorized || pop.Refusals()["jti replayed"] != 1 {
		t.Errorf("a replayed proof: %s, %d refused as replayed; want 401, 1", r, pop.Refusals()["jti replayed"])
	}
}

// checkStoredEncrypted fails the test when the key set document shows its
// DPoP key or its tokens in clear.
func checkStoredEncrypted(t *testing.T, dir string) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(dir, keySetName+".json"))
	if err != nil {
		t.Fatal(err)
	}
	for _, clear := range []string{"proof_key", "access_token", `"d"`} {
		if strings.Contains(string(raw), clear) {
			t.Errorf("the stored key set holds %s in clear: %s", clear, raw)
		}
	}
}

// A DPoP key that cannot sign ES256 stops the sidecar at start, naming
// the option.
func TestDPoPWrongKey(t *testing.T) {
	t.Parallel()
	pop := newPopServer(t, popserver.Config{Mode: popserver.DPoP, ClientID: "dpop-client"})
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	keyFile := writeFile(t, t.TempDir(), "dpop.key", pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}))
	_, ksOption := fileKeystore(t)
	p := newSidecar(t, spec{tokenURL: pop.TokenURL(), upstream: hostport(pop.URL()), keystore: ksOption,
		client: &authserver.Client{ID: "dpop-client"}, options: []string{"client_auth none", "grant client_credentials",
			"dpop " + pop.URL() + " {", "key " + keyFile, "}"}})
	err = p.Start(t.Context())
	if err == nil || !strings.Contains(err.Error(), "dpop key: DPoP proofs are signed ES256, which needs an EC P-256 key") {
		t.Fatalf("starting with an RSA DPoP key: %v; want a provisioning error naming the dpop key", err)
	}
}
