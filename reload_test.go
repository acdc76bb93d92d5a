package oauth2upstream

import (
	"encoding/json"
	"net/http"
	"testing"

	"github.com/oauth2upstream/caddy-oauth2-upstream/credential/credentialtest"
)

// A config reload while the disk refuses the key set just granted: the old
// handler stops with it unstored, and the new handler over the same
// keystore stores it before any grant of its own. Granting again would
// spend a refresh token the provider already rotated away, and every
// request would get 502 invalid_grant.
func TestReloadKeepsGrantedKeySetWhileDiskFails(t *testing.T) {
	t.Parallel()
	te := credentialtest.NewTokenEndpoint(t, "rt-0")
	api := newAPIServer(t, "Bearer at-1")
	keystoreJSON, _ := json.Marshal(map[string]string{"backend": "file", "path": t.TempDir()})
	handler := func() *Handler {
		return &Handler{TokenURL: te.URL(), ClientID: "c", RefreshToken: "rt-0", KeystoreRaw: keystoreJSON}
	}
	clock := credentialtest.NewClock()
	old := newSidecar(t, handler(), hostPort(t, api.server.URL))
	disk := &diskFullStore{Store: old.handler.engine.Store()}
	old.replaceEngine(disk, clock.Now)
	if resp, body := old.get(t, "/"); resp.StatusCode != http.StatusOK {
		t.Fatalf("status = %d (%s); want 200", resp.StatusCode, body)
	}
	disk.full.Store(true)
	ageTokens(clock)
	api.setValid("Bearer at-2")
	if resp, body := old.get(t, "/"); resp.StatusCode != http.StatusOK { // grant at-2/rt-2, unstored
		t.Fatalf("status = %d (%s); want 200, served from memory while the new key set is unstored", resp.StatusCode, body)
	}

	// Caddy provisions the new config, then cleans up the old one.
	successor := newSidecar(t, handler(), hostPort(t, api.server.URL))
	successor.useClock(clock)
	old.handler.Cleanup() // the disk still refuses the key set

	if resp, body := successor.get(t, "/"); resp.StatusCode != http.StatusOK {
		t.Fatalf("status after the reload = %d (%s); want 200 with the key set granted before it", resp.StatusCode, body)
	}
	// The successor took the waiting key set up, serves it, and stores it.
	credentialtest.Eventually(t, "the successor to store at-2/rt-2", func() bool {
		ks := successor.storedKeySet(t, "default")
		return ks.Token.AccessToken() == "at-2" && ks.Token.RefreshToken() == "rt-2"
	})
	if g := te.Grants.Load(); g != 2 {
		t.Errorf("grants = %d; want 2 (the seed, then at-2): none after the reload", g)
	}
}
