package integration_test

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"testing"

	"github.com/oauth2upstream/caddy-oauth2-upstream/credential"
	"github.com/oauth2upstream/caddy-oauth2-upstream/integration_test/authserver"
	"github.com/oauth2upstream/caddy-oauth2-upstream/integration_test/resourceserver"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore/file"
)

// credential.Transport stands alone: a Go program uses the engine
// in-process, without Caddy, against the fosite server. A second engine on
// the same keystore (another process) refreshes, which revokes the first
// engine's access token; the first engine's next request is rejected, and
// the transport adopts the stored successor (no grant of its own) and
// replays the body byte for byte.
func TestCredentialTransport(t *testing.T) {
	t.Parallel()
	auth := newAuthServer(t, authserver.Config{})
	api := newResourceServer(t, auth)
	dir := t.TempDir()
	newEngine := func(seed string) *credential.Engine {
		store, err := file.New(dir)
		if err != nil {
			t.Fatal(err)
		}
		e := credential.New(store, credential.Config{
			Endpoint: credential.TokenEndpoint{
				URL: auth.TokenURL(), ClientID: authserver.DefaultClientID, ClientSecret: authserver.DefaultClientSecret,
				ClientAuth: credential.ClientAuthSecretBasic,
			},
			Mode:     credential.ModeReactive,
			SeedName: "crm", SeedToken: seed,
		})
		t.Cleanup(e.Close)
		return e
	}
	engine := newEngine(seedToken(t, auth))
	client := &http.Client{Transport: &credential.Transport{Engine: engine, KeySet: "crm"}}

	post := func(what string) {
		t.Helper()
		body := make([]byte, 1<<20)
		rand.Read(body)
		req, _ := http.NewRequest(http.MethodPost, api.URL()+"/upload", bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer the-connector's-own")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s = %d %s; want 200", what, resp.StatusCode, raw)
		}
		var echo resourceserver.Echo
		if err := json.Unmarshal(raw, &echo); err != nil {
			t.Fatalf("%s: decoding %s: %v", what, raw, err)
		}
		sum := sha256.Sum256(body)
		if echo.SHA256 != hex.EncodeToString(sum[:]) || echo.AuthorizationCount != 1 {
			t.Errorf("%s: API got body sha256 %s and %d Authorization lines; want %x and 1", what, echo.SHA256, echo.AuthorizationCount, sum)
		}
	}

	post("first POST")
	other := newEngine("")
	if _, err := other.ForceRefresh(t.Context(), "crm"); err != nil {
		t.Fatalf("the other engine's refresh: %v", err)
	}
	unauthorized := api.Unauthorized()
	post("POST after the other engine's refresh")

	if got := api.Unauthorized() - unauthorized; got != 1 {
		t.Errorf("401s after the other refresh = %d; want 1 (the revoked token, then the replay succeeds)", got)
	}
	if got := auth.Grants(); got != 2 {
		t.Errorf("grants = %d; want 2 (the seed's exchange and the other engine's refresh; the successor is adopted)", got)
	}
	if got := auth.ReuseDetections(); got != 0 {
		t.Errorf("reuse detections = %d; want 0", got)
	}
}
