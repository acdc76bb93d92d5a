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

// healthFor is the health route provisioned in ctx: it speaks for ctx's
// config.
func healthFor(t *testing.T, ctx caddy.Context) *admin.Health {
	t.Helper()
	health := new(admin.Health)
	if err := health.Provision(ctx); err != nil {
		t.Fatalf("Provision() = %v", err)
	}
	return health
}

// probe asks the health route and decodes its answer.
func probe(t *testing.T, health *admin.Health) (int, healthAnswer) {
	t.Helper()
	rec := httptest.NewRecorder()
	if err := health.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/healthz", nil), nil); err != nil {
		t.Fatalf("ServeHTTP() = %v", err)
	}
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q; want application/json", ct)
	}
	var answer healthAnswer
	if err := json.Unmarshal(rec.Body.Bytes(), &answer); err != nil {
		t.Fatalf("decoding %s: %v", rec.Body, err)
	}
	return rec.Code, answer
}

// The health route answers 200 while the key set can serve (a seed about to
// be granted counts), 503 naming it once a refresh failed for good, and 200
// again after an operator reseeds it.
func TestHealthFollowsKeySetState(t *testing.T) {
	t.Parallel()
	te := credentialtest.NewTokenEndpoint(t, "rt-0")
	api := newAPIServer(t, "Bearer at-1")
	s := newSidecar(t, &Handler{TokenURL: te.URL(), ClientID: "c", KeySet: "health-ks", RefreshToken: "rt-0"}, hostPort(t, api.server.URL))
	health := healthFor(t, s.ctx)

	if code, answer := probe(t, health); code != http.StatusOK || !reflect.DeepEqual(answer, healthAnswer{Status: "ok"}) {
		t.Errorf("before any request: %d %+v; want 200 {status ok}", code, answer)
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
	want := healthAnswer{Status: "failing", KeySets: []failingKeySet{{Name: "health-ks", State: credential.StateNeedsReauthorization, ErrorCode: "invalid_grant"}}}
	if code, answer := probe(t, health); code != http.StatusServiceUnavailable || !reflect.DeepEqual(answer, want) {
		t.Errorf("after invalid_grant: %d %+v; want 503 %+v", code, answer, want)
	}

	a, _ := adminFor(t)
	if rec := adminCall(t, a, http.MethodPut, "/oauth2_upstream/key_sets/health-ks", `{"refresh_token":"revoked"}`); rec.Code != http.StatusOK {
		t.Fatalf("PUT = %d (%s)", rec.Code, rec.Body)
	}
	if code, answer := probe(t, health); code != http.StatusOK {
		t.Errorf("after the reseed: %d %+v; want 200", code, answer)
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
	want := healthAnswer{Status: "failing", KeySets: []failingKeySet{{Name: "health-missing", State: credential.StateNeedsReauthorization, ErrorCode: credential.CodeNoKeySet}}}
	if code, answer := probe(t, healthFor(t, missing.ctx)); code != http.StatusServiceUnavailable || !reflect.DeepEqual(answer, want) {
		t.Errorf("missing key set: %d %+v; want 503 %+v", code, answer, want)
	}

	selected := newSidecar(t, &Handler{TokenURL: te.URL(), ClientID: "c", KeySet: "{http.request.header.X-Account}", KeySetAllow: "[a-z0-9-]+"}, hostPort(t, api.server.URL))
	health := healthFor(t, selected.ctx)
	if code, answer := probe(t, health); code != http.StatusOK {
		t.Errorf("placeholder key_set, nothing selected: %d %+v; want 200", code, answer)
	}
	selected.seedStore(t, "health-sel", "not-the-endpoints-token") // invalid_grant on use
	req, _ := http.NewRequest(http.MethodGet, selected.server.URL+"/x", nil)
	req.Header.Set("X-Account", "health-sel")
	if resp, _ := selected.do(t, req); resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("request for health-sel = %d; want 502", resp.StatusCode)
	}
	want = healthAnswer{Status: "failing", KeySets: []failingKeySet{{Name: "health-sel", State: credential.StateNeedsReauthorization, ErrorCode: "invalid_grant"}}}
	if code, answer := probe(t, health); code != http.StatusServiceUnavailable || !reflect.DeepEqual(answer, want) {
		t.Errorf("selected key set failed: %d %+v; want 503 %+v", code, answer, want)
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
	health := healthFor(t, ctx)

	if code, answer := probe(t, health); code != http.StatusServiceUnavailable || len(answer.KeySets) != 1 || answer.KeySets[0].Name != "health-scoped" {
		t.Errorf("own config with a missing key set: %d %+v; want 503 naming health-scoped", code, answer)
	}
	if code, answer := probe(t, healthFor(t, provisionContext(t))); code != http.StatusOK {
		t.Errorf("another config: %d %+v; want 200 (not this config's handler)", code, answer)
	}
	h.Cleanup()
	if code, answer := probe(t, health); code != http.StatusOK {
		t.Errorf("after Cleanup: %d %+v; want 200", code, answer)
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
