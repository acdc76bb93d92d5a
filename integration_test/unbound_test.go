package integration_test

import (
	"bytes"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/oauth2upstream/caddy-oauth2-upstream/integration_test/authserver"
)

// The attack on a document that names no client: an operator seeded key set
// salesforce by hand, in the form the README once gave ("token" holding only
// a refresh_token, no "client"), in a keystore shared with a sidecar of
// another client that selects key sets by header. The attacker names the
// key set first. Its sidecar must not spend the refresh token at the token
// endpoint with its own client's credentials (which would also bind the
// document to it and lock the rightful sidecar out with key_set_foreign):
// 502 key_set_unbound, no token request, the document untouched. The
// rightful sidecar, started with bind_unbound, serves the key set and binds
// it to its client; from then on the attacker gets key_set_foreign.
func TestUnboundKeySetIsNotTakenUpByAnotherClient(t *testing.T) {
	t.Parallel()
	victim := authserver.Client{ID: authserver.DefaultClientID, Secret: authserver.DefaultClientSecret}
	attacker := authserver.Client{ID: "attacker-client", Secret: "attacker-secret"}
	auth := newAuthServer(t, authserver.Config{Clients: []authserver.Client{victim, attacker}})
	api := newResourceServer(t, auth)
	dir, ksOption := fileKeystore(t)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	document := fmt.Appendf(nil, `{"name":"salesforce","generation":1,"updated_at":%q,
 "token":{"refresh_token":%q}}`, time.Now().UTC().Format(time.RFC3339), seedToken(t, auth))
	path := filepath.Join(dir, "salesforce.json")
	if err := os.WriteFile(path, document, 0o600); err != nil {
		t.Fatal(err)
	}

	other := startSidecar(t, spec{auth: auth, upstream: hostport(api.URL()), keystore: ksOption, client: &attacker,
		options: []string{"key_set {http.request.header.X-Account}", "key_set_allow [a-z]+"}})
	attempt := func(wantCode string) {
		t.Helper()
		attempts, requests := auth.GrantAttempts(), api.Requests()
		req, _ := http.NewRequest(http.MethodGet, other.URL()+"/api", nil)
		req.Header.Set("X-Account", "salesforce")
		if r := do(newClient(t, 1), req); r.status != http.StatusBadGateway || r.problem(t).OAuthError != wantCode {
			t.Errorf("the other client's request for salesforce = %s; want 502 %s", r, wantCode)
		}
		if got := auth.GrantAttempts() - attempts; got != 0 {
			t.Errorf("token requests made by the other client's sidecar = %d; want none", got)
		}
		if got := api.Requests() - requests; got != 0 {
			t.Errorf("the API got %d requests through the other client's sidecar; want none", got)
		}
	}
	attempt("key_set_unbound")
	if after, err := os.ReadFile(path); err != nil || !bytes.Equal(after, document) {
		t.Errorf("the document after the attempt = %s, %v; want it untouched", after, err)
	}

	owner := startSidecar(t, spec{auth: auth, upstream: hostport(api.URL()), keystore: ksOption,
		options: []string{"key_set salesforce", "bind_unbound"}})
	if r := get(newClient(t, 1), owner.URL()+"/api"); r.status != http.StatusOK {
		t.Fatalf("the owner's request with bind_unbound = %s; want 200", r)
	}
	stored, _ := readKeySet(t, dir, "salesforce")
	if stored.Generation != 2 || stored.Client == nil || stored.Client.ClientID != victim.ID || stored.Client.TokenURL != auth.TokenURL() {
		t.Errorf("stored = generation %d bound to %+v; want generation 2 bound to %s at %s", stored.Generation, stored.Client, victim.ID, auth.TokenURL())
	}
	attempt("key_set_foreign")
}
