package integration_test

import (
	"net/http"
	"testing"

	"github.com/oauth2upstream/caddy-oauth2-upstream/integration_test/authserver"
)

// A cross-tenant attempt: two sidecars of two clients share a keystore. The
// second serves accounts chosen by a header; the attacker names the first
// client's key set. A name outside key_set_allow gets 403 and touches no
// keystore; one inside it is bound to the other client: 502
// key_set_foreign. Either way no token reaches the API and no grant is
// made with the foreign refresh token.
func TestCrossTenantKeySetIsRefused(t *testing.T) {
	t.Parallel()
	victim := authserver.Client{ID: authserver.DefaultClientID, Secret: authserver.DefaultClientSecret}
	attacker := authserver.Client{ID: "attacker-client", Secret: "attacker-secret"}
	auth := newAuthServer(t, authserver.Config{Clients: []authserver.Client{victim, attacker}})
	api := newResourceServer(t, auth)
	_, ksOption := fileKeystore(t)

	owner := startSidecar(t, spec{auth: auth, upstream: hostport(api.URL()), keystore: ksOption,
		seed: seedToken(t, auth), options: []string{"key_set salesforce"}})
	if r := get(newClient(t, 1), owner.URL()+"/api"); r.status != http.StatusOK {
		t.Fatalf("the owner's request = %s; want 200", r)
	}
	grants, requests := auth.Grants(), api.Requests()

	other := startSidecar(t, spec{auth: auth, upstream: hostport(api.URL()), keystore: ksOption, client: &attacker,
		options: []string{"key_set {http.request.header.X-Account}", "key_set_allow [a-z]+"}})
	client := newClient(t, 1)
	for _, tt := range []struct {
		account    string
		wantStatus int
		wantCode   string
	}{
		{account: "salesforce", wantStatus: http.StatusBadGateway, wantCode: "key_set_foreign"},
		{account: "Salesforce-2", wantStatus: http.StatusForbidden, wantCode: "key_set_not_allowed"},
	} {
		req, _ := http.NewRequest(http.MethodGet, other.URL()+"/api", nil)
		req.Header.Set("X-Account", tt.account)
		r := do(client, req)
		if r.status != tt.wantStatus || r.problem(t).OAuthError != tt.wantCode {
			t.Errorf("X-Account %s = %s; want %d %s", tt.account, r, tt.wantStatus, tt.wantCode)
		}
	}
	if got := api.Requests() - requests; got != 0 {
		t.Errorf("the API got %d requests through the other client's sidecar; want none", got)
	}
	if got := auth.Grants() - grants; got != 0 {
		t.Errorf("grants after the attempts = %d; want none", got)
	}
	if r := get(newClient(t, 1), owner.URL()+"/api"); r.status != http.StatusOK {
		t.Errorf("the owner's request after the attempts = %s; want 200 (its credential intact)", r)
	}
}
