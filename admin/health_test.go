package admin

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/oauth2upstream/caddy-oauth2-upstream/credential"
	"github.com/oauth2upstream/caddy-oauth2-upstream/credential/credentialtest"
	"github.com/oauth2upstream/caddy-oauth2-upstream/internal/live"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore/file"
)

// A probe's verdict answers the probes of the next second without working
// the key sets' states out again, so a probe costs the same however many
// key sets there are; after the second, the next probe works it out anew.
// The answer names no key set.
func TestHealthVerdictAnswersForASecond(t *testing.T) {
	t.Parallel()
	store, err := file.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	engine := credential.New(store, credential.Config{
		Endpoint: credential.TokenEndpoint{URL: "https://login.example.com/token", ClientID: "c"},
		SeedName: "missing", MaxWait: time.Second,
	})
	t.Cleanup(engine.Close)
	failing := &live.Handler{Engine: engine, KeySets: live.KeySetRule{Name: "missing"}}
	registry := new(live.Registry)
	registry.Handlers.Add(failing)
	clock := credentialtest.NewClock()
	health := &Health{registry: registry, verdict: &verdict{now: clock.Now}}
	probe := func() (int, string) {
		rec := httptest.NewRecorder()
		if err := health.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil), nil); err != nil {
			t.Fatal(err)
		}
		return rec.Code, rec.Body.String()
	}

	if code, body := probe(); code != http.StatusServiceUnavailable || body != `{"status":"failing"}`+"\n" {
		t.Fatalf("probe with a missing key set = %d %s; want 503 {\"status\":\"failing\"}, no name", code, body)
	}
	registry.Handlers.Remove(failing) // the handler goes: healthy from now on
	clock.Advance(verdictTTL - time.Millisecond)
	if code, _ := probe(); code != http.StatusServiceUnavailable {
		t.Errorf("probe within the second = %d; want 503, the verdict of the second's first probe", code)
	}
	clock.Advance(time.Millisecond)
	if code, body := probe(); code != http.StatusOK {
		t.Errorf("probe after the second = %d %s; want 200, worked out anew", code, body)
	}
}
