package oauth2upstream

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/oauth2upstream/caddy-oauth2-upstream/admin"
	"github.com/oauth2upstream/caddy-oauth2-upstream/credential"
	"github.com/oauth2upstream/caddy-oauth2-upstream/credential/credentialtest"
	"github.com/oauth2upstream/caddy-oauth2-upstream/internal/answer"
	"github.com/oauth2upstream/caddy-oauth2-upstream/internal/live"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
)

// adminFor is the admin API over the test's registry of live handlers (a
// handler never provisioned, or cleaned up, stays invisible), provisioned
// as Caddy's admin endpoint provisions it, in a config whose logs go to a
// file at debug level.
func adminFor(t *testing.T) (*admin.API, *logFile) {
	t.Helper()
	logs := &logFile{path: filepath.Join(t.TempDir(), "caddy.log")}
	writer, _ := json.Marshal(map[string]string{"output": "file", "filename": logs.path})
	// A log of the API's own: the "default" one would redirect Caddy's
	// process-wide default logger.
	cfg := &caddy.Config{Admin: &caddy.AdminConfig{Disabled: true}, Logging: &caddy.Logging{Logs: map[string]*caddy.CustomLog{"admin_api": {
		BaseLog: caddy.BaseLog{WriterRaw: writer, EncoderRaw: json.RawMessage(`{"format":"json"}`), Level: "DEBUG"},
		Include: []string{"admin.api.oauth2_upstream"}}}}}
	provisionMu.Lock()
	ctx, err := caddy.ProvisionContext(cfg)
	provisionMu.Unlock()
	if err != nil {
		t.Fatalf("ProvisionContext() = %v", err)
	}
	a := new(admin.API)
	if err := a.Provision(live.WithRegistry(ctx, testRegistry(t))); err != nil {
		t.Fatalf("Provision() = %v", err)
	}
	return a, logs
}

// logFile is what a Caddy config logged to a file, one JSON entry a line.
type logFile struct{ path string }

// text is the whole log.
func (l *logFile) text(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile(l.path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	return string(data)
}

// count is how many entries have the message msg.
func (l *logFile) count(t *testing.T, msg string) int {
	t.Helper()
	n := 0
	for _, line := range strings.Split(l.text(t), "\n") {
		var entry struct {
			Msg string `json:"msg"`
		}
		if json.Unmarshal([]byte(line), &entry) == nil && entry.Msg == msg {
			n++
		}
	}
	return n
}

// adminCall sends one request to the admin API's route, as Caddy's admin
// endpoint would.
func adminCall(t *testing.T, a *admin.API, method, path, body string) *httptest.ResponseRecorder {
	t.Helper()
	routes := a.Routes()
	if len(routes) != 1 || routes[0].Pattern != "/oauth2_upstream/" {
		t.Fatalf("Routes() = %+v; want one route on /oauth2_upstream/", routes)
	}
	req := httptest.NewRequest(method, "http://127.0.0.1:2019"+path, strings.NewReader(body))
	rec := httptest.NewRecorder()
	if err := routes[0].Handler.ServeHTTP(rec, req); err != nil {
		t.Fatalf("%s %s: handler error %v", method, path, err)
	}
	return rec
}

func decodeStatus(t *testing.T, rec *httptest.ResponseRecorder) credential.Status {
	t.Helper()
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Fatalf("Content-Type = %q; want application/json (body %s)", ct, rec.Body)
	}
	var s credential.Status
	if err := json.Unmarshal(rec.Body.Bytes(), &s); err != nil {
		t.Fatalf("decoding %s: %v", rec.Body, err)
	}
	return s
}

func decodeProblem(t *testing.T, rec *httptest.ResponseRecorder, wantStatus int) answer.Problem {
	t.Helper()
	if rec.Code != wantStatus {
		t.Fatalf("status = %d (%s); want %d", rec.Code, rec.Body, wantStatus)
	}
	if ct := rec.Header().Get("Content-Type"); ct != "application/problem+json" {
		t.Fatalf("Content-Type = %q; want application/problem+json", ct)
	}
	var p answer.Problem
	if err := json.Unmarshal(rec.Body.Bytes(), &p); err != nil {
		t.Fatalf("decoding %s: %v", rec.Body, err)
	}
	if p.Status != wantStatus || p.Detail == "" {
		t.Errorf("problem = %+v; want status %d and a detail", p, wantStatus)
	}
	return p
}

// seedStore stores a seed key set (a refresh token only), bound to the
// sidecar's client, in its file keystore.
func (s *sidecar) seedStore(t *testing.T, name, refreshToken string) {
	t.Helper()
	ks := &keystore.KeySet{Name: name, Generation: 1, Token: keystore.Token{}, Client: s.client()}
	ks.Token.SetString(keystore.FieldRefreshToken, refreshToken)
	if err := s.store.Save(context.Background(), ks); err != nil {
		t.Fatalf("Save(%q) = %v", name, err)
	}
}

// The admin module is registered under its documented ID.
func TestAdminModuleRegistered(t *testing.T) {
	t.Parallel()
	info, err := caddy.GetModule("admin.api.oauth2_upstream")
	if err != nil {
		t.Fatalf("GetModule(admin.api.oauth2_upstream) = %v", err)
	}
	if _, ok := info.New().(caddy.AdminRouter); !ok {
		t.Errorf("admin.api.oauth2_upstream is a %T; want a caddy.AdminRouter", info.New())
	}
}

// GET /oauth2_upstream/key_sets lists each handler's configured key set,
// even before a request loaded it, and every key set a placeholder key_set
// loaded; a cleaned-up handler's key sets disappear.
func TestAdminListKeySets(t *testing.T) {
	t.Parallel()
	te := credentialtest.NewTokenEndpoint(t, "rt-0")
	api := newAPIServer(t, "Bearer at-1")
	static := newSidecar(t, &Handler{TokenURL: te.URL(), ClientID: "c", KeySet: "list-static", RefreshToken: "rt-0"}, hostPort(t, api.server.URL))
	te2 := credentialtest.NewTokenEndpoint(t, "rt-a")
	api2 := newAPIServer(t, "Bearer at-1")
	selected := newSidecar(t, &Handler{TokenURL: te2.URL(), ClientID: "c", KeySet: "{http.request.header.X-Account}", KeySetAllow: "[a-z0-9-]+"}, hostPort(t, api2.server.URL))
	selected.seedStore(t, "list-a", "rt-a")
	a, _ := adminFor(t)

	list := func() []credential.Status {
		t.Helper()
		rec := adminCall(t, a, http.MethodGet, "/oauth2_upstream/key_sets", "")
		if rec.Code != http.StatusOK {
			t.Fatalf("GET key_sets = %d (%s); want 200", rec.Code, rec.Body)
		}
		var got []credential.Status
		if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
			t.Fatalf("decoding %s: %v", rec.Body, err)
		}
		return got
	}

	got := list()
	want := []credential.Status{{Name: "list-static", Generation: 1, HasRefreshToken: true, State: credential.StateExpiring}}
	if !statusesEqual(got, want) {
		t.Errorf("before any request: key_sets = %+v; want %+v (the seed, no access token yet)", got, want)
	}

	static.get(t, "/x")
	req, _ := http.NewRequest(http.MethodGet, selected.server.URL+"/x", nil)
	req.Header.Set("X-Account", "list-a")
	if resp, body := selected.do(t, req); resp.StatusCode != http.StatusOK {
		t.Fatalf("request for list-a = %d (%s); want 200", resp.StatusCode, body)
	}
	got = list()
	want = []credential.Status{
		{Name: "list-a", Generation: 2, HasRefreshToken: true, LastResult: "ok", State: credential.StateOK},
		{Name: "list-static", Generation: 2, HasRefreshToken: true, LastResult: "ok", State: credential.StateOK},
	}
	if !statusesEqual(got, want) {
		t.Errorf("after requests: key_sets = %+v; want %+v", got, want)
	}
	for _, s := range got {
		if s.Expiry == nil || s.LastRefresh == nil {
			t.Errorf("key set %q: expiry %v, last_refresh %v; want both", s.Name, s.Expiry, s.LastRefresh)
		}
	}

	selected.handler.Cleanup()
	got = list()
	if len(got) != 1 || got[0].Name != "list-static" {
		t.Errorf("after the selecting handler's Cleanup: key_sets = %+v; want only list-static", got)
	}
}

// statusesEqual compares statuses, ignoring the times.
func statusesEqual(got, want []credential.Status) bool {
	if len(got) != len(want) {
		return false
	}
	for i := range got {
		g := got[i]
		g.Expiry, g.LastRefresh = nil, nil
		if g != want[i] {
			return false
		}
	}
	return true
}

// GET /oauth2_upstream/key_sets/<name> answers one key set, 404 for a name
// no handler has, 400 for an invalid name, 405 for other methods.
func TestAdminGetKeySet(t *testing.T) {
	t.Parallel()
	te := credentialtest.NewTokenEndpoint(t, "rt-0")
	api := newAPIServer(t, "Bearer at-1")
	seeded := newSidecar(t, &Handler{TokenURL: te.URL(), ClientID: "c", KeySet: "get-seeded", RefreshToken: "rt-0"}, hostPort(t, api.server.URL))
	newSidecar(t, &Handler{TokenURL: te.URL(), ClientID: "c", KeySet: "get-missing"}, hostPort(t, api.server.URL))
	selected := newSidecar(t, &Handler{TokenURL: te.URL(), ClientID: "c", KeySet: "{http.request.header.X-Account}", KeySetAllow: "[a-z0-9-]+"}, hostPort(t, api.server.URL))
	selected.seedStore(t, "get-stored", "rt-x")
	a, _ := adminFor(t)
	seeded.get(t, "/x")

	tests := []struct {
		name       string
		method     string
		path       string
		wantStatus int
		want       credential.Status // for 200
	}{
		{name: "configured and used", method: http.MethodGet, path: "get-seeded", wantStatus: http.StatusOK,
			want: credential.Status{Name: "get-seeded", Generation: 2, HasRefreshToken: true, LastResult: "ok", State: credential.StateOK}},
		{name: "configured but not in the keystore", method: http.MethodGet, path: "get-missing", wantStatus: http.StatusOK,
			want: credential.Status{Name: "get-missing", LastResult: "error", ErrorCode: credential.CodeNoKeySet, State: credential.StateNeedsReauthorization}},
		{name: "stored, selected by placeholder", method: http.MethodGet, path: "get-stored", wantStatus: http.StatusOK,
			want: credential.Status{Name: "get-stored", Generation: 1, HasRefreshToken: true, State: credential.StateExpiring}},
		{name: "HEAD", method: http.MethodHead, path: "get-seeded", wantStatus: http.StatusOK,
			want: credential.Status{Name: "get-seeded", Generation: 2, HasRefreshToken: true, LastResult: "ok", State: credential.StateOK}},
		{name: "not stored, placeholder handler only", method: http.MethodGet, path: "get-nowhere", wantStatus: http.StatusNotFound},
		{name: "invalid name", method: http.MethodGet, path: ".hidden", wantStatus: http.StatusBadRequest},
		{name: "DELETE", method: http.MethodDelete, path: "get-seeded", wantStatus: http.StatusMethodNotAllowed},
		{name: "unknown action", method: http.MethodGet, path: "get-seeded/rotate", wantStatus: http.StatusNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := adminCall(t, a, tt.method, "/oauth2_upstream/key_sets/"+tt.path, "")
			if tt.wantStatus != http.StatusOK {
				decodeProblem(t, rec, tt.wantStatus)
				return
			}
			if rec.Code != http.StatusOK {
				t.Fatalf("%s %s = %d (%s); want 200", tt.method, tt.path, rec.Code, rec.Body)
			}
			if got := decodeStatus(t, rec); !statusesEqual([]credential.Status{got}, []credential.Status{tt.want}) {
				t.Errorf("%s %s = %+v; want %+v", tt.method, tt.path, got, tt.want)
			}
		})
	}

	// An unknown path under the prefix, and a method the collection lacks.
	decodeProblem(t, adminCall(t, a, http.MethodGet, "/oauth2_upstream/other", ""), http.StatusNotFound)
	rec := adminCall(t, a, http.MethodPost, "/oauth2_upstream/key_sets", "")
	decodeProblem(t, rec, http.StatusMethodNotAllowed)
	if allow := rec.Header().Get("Allow"); allow != "GET" {
		t.Errorf("Allow = %q; want GET", allow)
	}
}

// A PUT key set is used by the next proxied request, without a restart and
// without a grant; it is stored whole as the next generation.
func TestAdminPutTakesEffect(t *testing.T) {
	t.Parallel()
	te := credentialtest.NewTokenEndpoint(t, "rt-0")
	api := newAPIServer(t, "Bearer at-1")
	s := newSidecar(t, &Handler{TokenURL: te.URL(), ClientID: "c", KeySet: "put-live", RefreshToken: "rt-0"}, hostPort(t, api.server.URL))
	a, _ := adminFor(t)
	if resp, _ := s.get(t, "/warm-up"); resp.StatusCode != http.StatusOK {
		t.Fatalf("warm-up status = %d; want 200", resp.StatusCode)
	}

	api.setValid("Bearer put-access")
	body := `{"access_token":"put-access","refresh_token":"put-refresh","token_type":"Bearer","expires_in":3600,"instance_url":"https://eu1.example.com"}`
	rec := adminCall(t, a, http.MethodPut, "/oauth2_upstream/key_sets/put-live", body)
	if rec.Code != http.StatusOK {
		t.Fatalf("PUT = %d (%s); want 200", rec.Code, rec.Body)
	}
	got := decodeStatus(t, rec)
	if got.Generation != 3 || got.State != credential.StateOK || !got.HasRefreshToken || got.Expiry == nil {
		t.Errorf("PUT answered %+v; want generation 3, state ok, a refresh token and an expiry", got)
	}

	grants := te.Grants.Load()
	if resp, body := s.get(t, "/after-put"); resp.StatusCode != http.StatusOK {
		t.Fatalf("request after PUT = %d (%s); want 200 with the PUT access token", resp.StatusCode, body)
	}
	if g := te.Grants.Load(); g != grants {
		t.Errorf("grants after PUT = %d; want %d (the PUT token is used as it is)", g, grants)
	}
	seen := api.seen()
	if last := seen[len(seen)-1]; len(last.Authorization) != 1 || last.Authorization[0] != "Bearer put-access" {
		t.Errorf("upstream saw Authorization %v; want [Bearer put-access]", last.Authorization)
	}
	stored := s.storedKeySet(t, "put-live")
	var want keystore.Token
	json.Unmarshal([]byte(body), &want)
	if stored.Generation != 3 || !tokensEqual(stored.Token, want) {
		t.Errorf("stored generation %d token %v; want generation 3 and the PUT body verbatim", stored.Generation, stored.Token)
	}
}

func tokensEqual(a, b keystore.Token) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if !bytes.Equal(v, b[k]) {
			return false
		}
	}
	return true
}

// A PUT is written once per keystore: handlers that share a keystore
// instance, or another instance of the same directory, adopt the written
// key set (one generation more, not two); a handler with a keystore of its
// own gets the key set written there too.
func TestAdminPutOncePerKeystore(t *testing.T) {
	t.Parallel()
	te := credentialtest.NewTokenEndpoint(t, "rt-0")
	api := newAPIServer(t, "Bearer put-access")
	shared := t.TempDir()
	onDir := func(dir string) *Handler {
		raw, _ := json.Marshal(map[string]string{"backend": "file", "path": dir})
		return &Handler{TokenURL: te.URL(), ClientID: "c", KeySet: "put-shared", KeystoreRaw: raw}
	}
	first := newSidecar(t, onDir(shared), hostPort(t, api.server.URL))
	sameDir := newSidecar(t, onDir(shared), hostPort(t, api.server.URL))
	sameInstance := newSidecar(t, onDir(t.TempDir()), hostPort(t, api.server.URL))
	sameInstance.replaceEngine(first.handler.engine.Store(), time.Now)
	own := newSidecar(t, onDir(t.TempDir()), hostPort(t, api.server.URL))
	first.seedStore(t, "put-shared", "rt-0")
	own.seedStore(t, "put-shared", "rt-own")
	a, logs := adminFor(t)

	rec := adminCall(t, a, http.MethodPut, "/oauth2_upstream/key_sets/put-shared", `{"access_token":"put-access","expires_in":3600}`)
	if rec.Code != http.StatusOK {
		t.Fatalf("PUT = %d (%s); want 200", rec.Code, rec.Body)
	}
	if got := first.storedKeySet(t, "put-shared"); got.Generation != 2 || got.Token.RefreshToken() != "rt-0" {
		t.Errorf("shared keystore holds generation %d, refresh token kept %v; want generation 2 (written once), refresh token kept",
			got.Generation, got.Token.RefreshToken() == "rt-0")
	}
	if got := own.storedKeySet(t, "put-shared"); got.Generation != 2 || got.Token.AccessToken() != "put-access" {
		t.Errorf("the other keystore holds generation %d; want generation 2 with the PUT access token", got.Generation)
	}
	for i, s := range []*sidecar{first, sameDir, sameInstance, own} {
		if resp, body := s.get(t, "/x"); resp.StatusCode != http.StatusOK {
			t.Errorf("handler %d after PUT = %d (%s); want 200 with the PUT token", i, resp.StatusCode, body)
		}
	}
	if g := te.Grants.Load(); g != 0 {
		t.Errorf("grants = %d; want 0", g)
	}
	if n := logs.count(t, "stored key set from the admin API"); n != 1 {
		t.Errorf("logged %d PUTs; want 1", n)
	}
}

// Bad PUT bodies and names are refused with a problem that does not quote
// the body, and nothing is stored.
func TestAdminPutRejectsBadInput(t *testing.T) {
	t.Parallel()
	te := credentialtest.NewTokenEndpoint(t, "rt-0")
	api := newAPIServer(t, "Bearer at-1")
	s := newSidecar(t, &Handler{TokenURL: te.URL(), ClientID: "c", KeySet: "put-bad", RefreshToken: "rt-0"}, hostPort(t, api.server.URL))
	a, _ := adminFor(t)
	s.get(t, "/warm-up") // generation 2

	tests := []struct {
		name       string
		keySet     string
		body       string
		wantStatus int
	}{
		{name: "not JSON", keySet: "put-bad", body: `{"access_token":"SECRET-in-bad-json"`, wantStatus: http.StatusBadRequest},
		{name: "trailing garbage", keySet: "put-bad", body: `{"access_token":"SECRET-x"} {}`, wantStatus: http.StatusBadRequest},
		{name: "array", keySet: "put-bad", body: `["SECRET-in-array"]`, wantStatus: http.StatusBadRequest},
		{name: "null", keySet: "put-bad", body: `null`, wantStatus: http.StatusBadRequest},
		{name: "string", keySet: "put-bad", body: `"SECRET-string"`, wantStatus: http.StatusBadRequest},
		{name: "empty body", keySet: "put-bad", body: ``, wantStatus: http.StatusBadRequest},
		{name: "empty object", keySet: "put-bad", body: `{}`, wantStatus: http.StatusBadRequest},
		{name: "empty tokens", keySet: "put-bad", body: `{"access_token":"","refresh_token":""}`, wantStatus: http.StatusBadRequest},
		{name: "token not a string", keySet: "put-bad", body: `{"refresh_token":12345}`, wantStatus: http.StatusBadRequest},
		{name: "too large", keySet: "put-bad", body: `{"access_token":"` + strings.Repeat("A", 1<<20 /* the admin API reads at most 1 MiB */) + `"}`, wantStatus: http.StatusRequestEntityTooLarge},
		{name: "invalid name", keySet: "-bad", body: `{"access_token":"SECRET-ok"}`, wantStatus: http.StatusBadRequest},
		{name: "name nobody serves", keySet: "put-nobody", body: `{"access_token":"SECRET-ok"}`, wantStatus: http.StatusNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := adminCall(t, a, http.MethodPut, "/oauth2_upstream/key_sets/"+tt.keySet, tt.body)
			decodeProblem(t, rec, tt.wantStatus)
			if strings.Contains(rec.Body.String(), "SECRET") {
				t.Errorf("problem quotes the body: %s", rec.Body)
			}
		})
	}
	if got := s.storedKeySet(t, "put-bad"); got.Generation != 2 {
		t.Errorf("stored generation = %d after refused PUTs; want 2", got.Generation)
	}
	if _, err := os.Stat(filepath.Join(s.dir, "put-nobody.json")); !os.IsNotExist(err) {
		t.Errorf("a key set nobody serves was stored (stat: %v)", err)
	}
}

// POST .../refresh makes a grant now and answers the status; failures
// answer the handler's problems: 503 with Retry-After when temporary, 502
// when permanent; 404 for an unknown key set.
func TestAdminRefresh(t *testing.T) {
	t.Parallel()
	te := credentialtest.NewTokenEndpoint(t, "rt-0")
	api := newAPIServer(t, "Bearer at-1")
	s := newSidecar(t, &Handler{TokenURL: te.URL(), ClientID: "c", KeySet: "refresh-me", RefreshToken: "rt-0"}, hostPort(t, api.server.URL))
	newSidecar(t, &Handler{TokenURL: te.URL(), ClientID: "c", KeySet: "{http.request.header.X-Account}", KeySetAllow: "[a-z0-9-]+"}, hostPort(t, api.server.URL))
	a, _ := adminFor(t)
	const path = "/oauth2_upstream/key_sets/refresh-me/refresh"

	rec := adminCall(t, a, http.MethodPost, path, "")
	if rec.Code != http.StatusOK {
		t.Fatalf("POST refresh = %d (%s); want 200", rec.Code, rec.Body)
	}
	if got := decodeStatus(t, rec); got.Generation != 2 || got.LastResult != "ok" || got.State != credential.StateOK {
		t.Errorf("POST refresh answered %+v; want generation 2, last_result ok, state ok", got)
	}
	rec = adminCall(t, a, http.MethodPost, path, "")
	if got := decodeStatus(t, rec); rec.Code != http.StatusOK || got.Generation != 3 || te.Grants.Load() != 2 {
		t.Errorf("second POST refresh = %d %+v after %d grants; want 200, generation 3, 2 grants (forced although the token is valid)",
			rec.Code, got, te.Grants.Load())
	}

	te.Mu.Lock()
	te.Respond = func(w http.ResponseWriter, r *http.Request) bool {
		http.Error(w, "maintenance", http.StatusServiceUnavailable)
		return true
	}
	te.Mu.Unlock()
	rec = adminCall(t, a, http.MethodPost, path, "")
	p := decodeProblem(t, rec, http.StatusServiceUnavailable)
	if p.KeySet != "refresh-me" || p.OAuthError != credential.CodeTokenEndpointUnavailable || rec.Header().Get("Retry-After") == "" {
		t.Errorf("problem = %+v, Retry-After %q; want key set refresh-me, %s, a Retry-After", p, rec.Header().Get("Retry-After"), credential.CodeTokenEndpointUnavailable)
	}

	te.Mu.Lock()
	te.Respond = func(w http.ResponseWriter, r *http.Request) bool {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		w.Write([]byte(`{"error":"invalid_grant"}`))
		return true
	}
	te.Mu.Unlock()
	p = decodeProblem(t, adminCall(t, a, http.MethodPost, path, ""), http.StatusBadGateway)
	if p.KeySet != "refresh-me" || p.OAuthError != "invalid_grant" {
		t.Errorf("problem = %+v; want key set refresh-me, invalid_grant", p)
	}
	if got := s.storedKeySet(t, "refresh-me"); got.Generation != 3 {
		t.Errorf("stored generation after failed refreshes = %d; want 3 (failures store nothing)", got.Generation)
	}

	decodeProblem(t, adminCall(t, a, http.MethodPost, "/oauth2_upstream/key_sets/refresh-unknown/refresh", ""), http.StatusNotFound)
	decodeProblem(t, adminCall(t, a, http.MethodGet, path, ""), http.StatusMethodNotAllowed)
}

// Invariant 7: no token value appears in the admin API's answers, the
// metrics, the health route or the logs, while the notification receiver
// (which gets them, with notify_include_tokens) shows the values were there
// to leak. The notify secret and header values never appear either.
func TestNoTokenValuesInOperatorOutput(t *testing.T) {
	t.Parallel()
	const marker = "-q7z" // every token value of this test ends with it
	te := credentialtest.NewTokenEndpoint(t, "")
	var issued int
	te.Respond = func(w http.ResponseWriter, r *http.Request) bool {
		te.Mu.Lock()
		defer te.Mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		if issued == 3 {
			w.WriteHeader(http.StatusBadRequest)
			fmt.Fprintf(w, `{"error":"invalid_grant","error_description":"refresh token LEAK-RT-%d%s was revoked"}`, issued, marker)
			return true
		}
		issued++
		fmt.Fprintf(w, `{"access_token":"LEAK-AT-%d%s","refresh_token":"LEAK-RT-%d%s","id_token":"LEAK-ID%s","token_type":"Bearer","expires_in":3600}`,
			issued, marker, issued, marker, marker)
		return true
	}
	api := newAPIServer(t, "Bearer LEAK-AT-1"+marker)
	rcv := credentialtest.NewReceiver(t)
	// A Standard Webhooks secret is base64, which cannot hold the marker:
	// the scan looks for its encoded key too.
	notifyKey := base64.StdEncoding.EncodeToString([]byte("LEAK-NOTIFY-SECRET" + marker + "-32-bytes-long"))
	h := &Handler{TokenURL: te.URL(), ClientID: "c", ClientSecret: "LEAK-SECRET" + marker, KeySet: "leak-scan",
		RefreshToken: "LEAK-SEED" + marker, NotifyOptions: NotifyOptions{Notify: rcv.Server.URL, NotifySecret: "whsec_" + notifyKey,
			NotifyIncludeTokens: true, NotifyHeaders: http.Header{"Authorization": {"Bearer LEAK-NOTIFY-KEY" + marker}}}}
	s := newSidecar(t, h, hostPort(t, api.server.URL))
	a, adminLogs := adminFor(t)

	var out strings.Builder
	collect := func(rec *httptest.ResponseRecorder) { out.WriteString(rec.Body.String()) }
	clock := credentialtest.NewClock()
	s.useClock(clock)
	s.get(t, "/first") // grant 1
	ageTokens(clock)
	api.setValid("Bearer LEAK-AT-2" + marker) // the next request is rejected: grant 2, replay
	if resp, _ := s.get(t, "/second"); resp.StatusCode != http.StatusOK {
		t.Fatalf("replayed request = %d; want 200", resp.StatusCode)
	}
	collect(adminCall(t, a, http.MethodPut, "/oauth2_upstream/key_sets/leak-scan",
		`{"access_token":"LEAK-PUT-AT`+marker+`","refresh_token":"LEAK-PUT-RT`+marker+`"}`))
	collect(adminCall(t, a, http.MethodPost, "/oauth2_upstream/key_sets/leak-scan/refresh", "")) // grant 3
	collect(adminCall(t, a, http.MethodPost, "/oauth2_upstream/key_sets/leak-scan/refresh", "")) // invalid_grant
	api.setValid("nothing")
	ageTokens(clock)
	s.get(t, "/failing") // rejected, refresh fails
	collect(adminCall(t, a, http.MethodGet, "/oauth2_upstream/key_sets", ""))
	collect(adminCall(t, a, http.MethodGet, "/oauth2_upstream/key_sets/leak-scan", ""))
	collect(adminCall(t, a, http.MethodGet, "/oauth2_upstream/health", ""))
	out.WriteString(scrape(t, s.ctx.GetMetricsRegistry()))
	rcv.WaitFor(t, 5) // seed, grants 1 and 2, PUT, grant 3
	s.handler.Cleanup()
	for _, e := range s.logs.All() {
		fmt.Fprintf(&out, "%s %v\n", e.Message, e.ContextMap())
	}
	out.WriteString(adminLogs.text(t))

	if strings.Contains(out.String(), marker) || strings.Contains(out.String(), notifyKey) {
		t.Errorf("a token value or the notify secret leaked into operator output:\n%s", out.String())
	}
	if got := rcv.Bodies(); !strings.Contains(strings.Join(got, ""), "LEAK-AT-3"+marker) {
		t.Errorf("the receiver got %q; want the tokens (by design), or this test proves nothing", got)
	}
	if !strings.Contains(out.String(), "invalid_grant") || !strings.Contains(out.String(), "caddy_oauth2_upstream_grants_total") {
		t.Errorf("the scanned output lacks the failure and the metrics; the scan proves nothing:\n%s", out.String())
	}
}

// A PUT or a forced refresh of a key set reaches the handler of the client
// it is bound to, even when a placeholder handler of another client that
// shares the keystore is asked first; that one refuses it (key_set_foreign)
// and is skipped.
func TestAdminSkipsHandlersOfOtherClients(t *testing.T) {
	t.Parallel()
	te := credentialtest.NewTokenEndpoint(t, "rt-0")
	api := newAPIServer(t, "Bearer at-1")
	dir := t.TempDir()
	raw, _ := json.Marshal(map[string]string{"backend": "file", "path": dir})
	newSidecar(t, &Handler{TokenURL: te.URL(), ClientID: "other-client", KeySet: "{http.request.header.X-Account}",
		KeySetAllow: "[a-z-]+", KeystoreRaw: raw}, hostPort(t, api.server.URL))
	owner := newSidecar(t, &Handler{TokenURL: te.URL(), ClientID: "owner", KeySet: "shared-ks", RefreshToken: "rt-0", KeystoreRaw: raw},
		hostPort(t, api.server.URL))
	if resp, _ := owner.get(t, "/"); resp.StatusCode != http.StatusOK { // seeds and binds the key set to "owner"
		t.Fatalf("owner's first request = %d; want 200", resp.StatusCode)
	}
	a, _ := adminFor(t)

	rec := adminCall(t, a, http.MethodPut, "/oauth2_upstream/key_sets/shared-ks", `{"access_token":"put-at","expires_in":3600}`)
	if rec.Code != http.StatusOK {
		t.Fatalf("PUT = %d (%s); want 200 from the owner's handler", rec.Code, rec.Body)
	}
	if rec := adminCall(t, a, http.MethodPost, "/oauth2_upstream/key_sets/shared-ks/refresh", ""); rec.Code != http.StatusOK {
		t.Fatalf("POST refresh = %d (%s); want 200 from the owner's handler", rec.Code, rec.Body)
	}
	ks := owner.storedKeySet(t, "shared-ks")
	if ks.Generation != 4 || ks.Client == nil || ks.Client.ClientID != "owner" {
		t.Errorf("stored generation %d bound to %+v; want generation 4 (seed, grant, PUT, refresh) bound to owner", ks.Generation, ks.Client)
	}
}
