package oauth2upstream

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"

	"github.com/oauth2upstream/caddy-oauth2-upstream/admin"
	"github.com/oauth2upstream/caddy-oauth2-upstream/credential"
	"github.com/oauth2upstream/caddy-oauth2-upstream/credential/credentialtest"
)

// healthAnswer is the health route's answer.
type healthAnswer struct {
	Status  string          `json:"status"`
	KeySets []failingKeySet `json:"key_sets,omitempty"`
}

// failingKeySet is a key set that cannot serve, as the health route shows it.
type failingKeySet struct {
	Name      string `json:"name"`
	State     string `json:"state"`
	ErrorCode string `json:"error_code,omitempty"`
}

// probe asks a health route provisioned in ctx, which speaks for ctx's
// config, and returns its status. A route of its own each time: a route's
// verdict answers probes for a second (admin/health_test.go). The answer
// must name no key set.
func probe(t *testing.T, ctx caddy.Context) int {
	t.Helper()
	health := new(admin.Health)
	if err := health.Provision(ctx); err != nil {
		t.Fatalf("Provision() = %v", err)
	}
	rec := httptest.NewRecorder()
	if err := health.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil), nil); err != nil {
		t.Fatalf("ServeHTTP() = %v", err)
	}
	answer := decodeHealth(t, rec)
	if want := map[int]string{http.StatusOK: "ok", http.StatusServiceUnavailable: "failing"}[rec.Code]; answer.Status != want || answer.KeySets != nil {
		t.Errorf("probe answered %d %+v; want {status %q} and no key set named", rec.Code, answer, want)
	}
	return rec.Code
}

// adminHealth asks the admin endpoint's health route, which names the
// failing key sets of every live handler of the test.
func adminHealth(t *testing.T) (int, healthAnswer) {
	t.Helper()
	a, _ := adminFor(t)
	rec := adminCall(t, a, http.MethodGet, "/oauth2_upstream/health", "")
	return rec.Code, decodeHealth(t, rec)
}

func decodeHealth(t *testing.T, rec *httptest.ResponseRecorder) healthAnswer {
	t.Helper()
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q; want application/json", ct)
	}
	var answer healthAnswer
	if err := json.Unmarshal(rec.Body.Bytes(), &answer); err != nil {
		t.Fatalf("decoding %s: %v", rec.Body, err)
	}
	return answer
}

// The health route answers 200 while the key set can serve (a seed about to
// be granted counts), 503 once a refresh failed for good (the admin
// endpoint's route names it), and 200 again after an operator reseeds it.
func TestHealthFollowsKeySetState(t *testing.T) {
	t.Parallel()
	te := credentialtest.NewTokenEndpoint(t, "rt-0")
	api := newAPIServer(t, "Bearer at-1")
	s := newSidecar(t, &Handler{TokenURL: te.URL(), ClientID: "c", KeySet: "health-ks", RefreshToken: "rt-0"}, hostPort(t, api.server.URL))
	if code := probe(t, s.ctx); code != http.StatusOK {
		t.Errorf("before any request: %d; want 200", code)
	}
	clock := credentialtest.NewClock()
	s.useClock(clock)
	s.get(t, "/x")
	ageTokens(clock)
	te.Mu.Lock()
	te.RefreshToken = "revoked"
	te.Mu.Unlock()
	api.setValid("Bearer rejected")
	s.get(t, "/rejected") // the refresh fails with invalid_grant
	if code := probe(t, s.ctx); code != http.StatusServiceUnavailable {
		t.Errorf("after invalid_grant: %d; want 503", code)
	}
	want := healthAnswer{Status: "failing", KeySets: []failingKeySet{{Name: "health-ks", State: credential.StateNeedsReauthorization, ErrorCode: "invalid_grant"}}}
	if code, answer := adminHealth(t); code != http.StatusServiceUnavailable || !reflect.DeepEqual(answer, want) {
		t.Errorf("admin health after invalid_grant: %d %+v; want 503 %+v", code, answer, want)
	}

	a, _ := adminFor(t)
	if rec := adminCall(t, a, http.MethodPut, "/oauth2_upstream/key_sets/health-ks", `{"refresh_token":"revoked"}`); rec.Code != http.StatusOK {
		t.Fatalf("PUT = %d (%s)", rec.Code, rec.Body)
	}
	if code := probe(t, s.ctx); code != http.StatusOK {
		t.Errorf("after the reseed: %d; want 200", code)
	}
}

// A configured key set missing from the keystore fails the probe; so does a
// placeholder-selected key set that failed, while one that selected nothing
// yet passes.
func TestHealthFailingKeySets(t *testing.T) {
	t.Parallel()
	te := credentialtest.NewTokenEndpoint(t, "rt-0")
	api := newAPIServer(t, "Bearer at-1")

	missing := newSidecar(t, &Handler{TokenURL: te.URL(), ClientID: "c", KeySet: "health-missing"}, hostPort(t, api.server.URL))
	if code := probe(t, missing.ctx); code != http.StatusServiceUnavailable {
		t.Errorf("missing key set: %d; want 503", code)
	}
	missingKeySet := failingKeySet{Name: "health-missing", State: credential.StateNeedsReauthorization, ErrorCode: credential.CodeNoKeySet}
	want := healthAnswer{Status: "failing", KeySets: []failingKeySet{missingKeySet}}
	if code, answer := adminHealth(t); code != http.StatusServiceUnavailable || !reflect.DeepEqual(answer, want) {
		t.Errorf("admin health, missing key set: %d %+v; want 503 %+v", code, answer, want)
	}

	selected := newSidecar(t, &Handler{TokenURL: te.URL(), ClientID: "c", KeySet: "{http.request.header.X-Account}", KeySetAllow: "[a-z0-9-]+"}, hostPort(t, api.server.URL))
	if code := probe(t, selected.ctx); code != http.StatusOK {
		t.Errorf("placeholder key_set, nothing selected: %d; want 200", code)
	}
	selected.seedStore(t, "health-sel", "not-the-endpoints-token") // invalid_grant on use
	req, _ := http.NewRequest(http.MethodGet, selected.server.URL+"/x", nil)
	req.Header.Set("X-Account", "health-sel")
	if resp, _ := selected.do(t, req); resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("request for health-sel = %d; want 502", resp.StatusCode)
	}
	if code := probe(t, selected.ctx); code != http.StatusServiceUnavailable {
		t.Errorf("selected key set failed: %d; want 503", code)
	}
	want = healthAnswer{Status: "failing", KeySets: []failingKeySet{missingKeySet,
		{Name: "health-sel", State: credential.StateNeedsReauthorization, ErrorCode: "invalid_grant"}}}
	if code, answer := adminHealth(t); code != http.StatusServiceUnavailable || !reflect.DeepEqual(answer, want) {
		t.Errorf("admin health, selected key set failed: %d %+v; want 503 %+v", code, answer, want)
	}
}

// The route counts the handlers of its own config: provisioned in one
// context it sees that config's handler, and not another config's; a
// cleaned-up handler no longer counts.
func TestHealthScopedToItsConfig(t *testing.T) {
	t.Parallel()
	ctx := provisionContext(t)
	raw, _ := json.Marshal(map[string]string{"backend": "file", "path": t.TempDir()})
	h := &Handler{TokenURL: "https://login.example.com/token", ClientID: "c", KeySet: "health-scoped", KeystoreRaw: raw}
	provisionMu.Lock()
	err := h.Provision(ctx)
	provisionMu.Unlock()
	if err != nil {
		t.Fatalf("Provision() = %v", err)
	}
	t.Cleanup(func() { h.Cleanup() })

	if code := probe(t, ctx); code != http.StatusServiceUnavailable {
		t.Errorf("own config with a missing key set: %d; want 503", code)
	}
	if code := probe(t, provisionContext(t)); code != http.StatusOK {
		t.Errorf("another config: %d; want 200 (not this config's handler)", code)
	}
	h.Cleanup()
	if code := probe(t, ctx); code != http.StatusOK {
		t.Errorf("after Cleanup: %d; want 200", code)
	}
}

// The directive needs no order option and, in a proxying site, answers
// before oauth2_upstream would take the probe.
func TestHealthCaddyfile(t *testing.T) {
	t.Parallel()
	input := `:8080 {
	reverse_proxy 127.0.0.1:9
	oauth2_upstream {
		token_url https://login.example.com/token
		client_id c
	}
	oauth2_upstream_health /healthz
}
`
	adapted, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(input), nil)
	if err != nil || len(warnings) != 0 {
		t.Fatalf("Adapt() = %v, warnings %v", err, warnings)
	}
	health := strings.Index(string(adapted), `"handler":"oauth2_upstream_health"`)
	upstream := strings.Index(string(adapted), `"handler":"oauth2_upstream"`)
	if health < 0 || upstream < 0 || health > upstream {
		t.Errorf("adapted %s; want the health handler before oauth2_upstream", adapted)
	}

	for _, bad := range []string{":8081 {\n\toauth2_upstream_health /a /b\n}", ":8081 {\n\toauth2_upstream_health {\n\t\tx\n\t}\n}"} {
		if _, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(bad), nil); err == nil {
			t.Errorf("Adapt(%q) succeeded; want an error", bad)
		}
	}
}
