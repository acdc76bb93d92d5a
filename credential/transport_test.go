package credential

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/oauth2upstream/caddy-oauth2-upstream/credential/credentialtest"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore/file"
)

// apiRecorder is an API that accepts one bearer value and records what each
// request carried.
type apiRecorder struct {
	mu    sync.Mutex // guards valid and seen
	valid string
	seen  []seenAPIRequest
}

type seenAPIRequest struct {
	auth []string
	body string
}

func (a *apiRecorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	a.mu.Lock()
	defer a.mu.Unlock()
	a.seen = append(a.seen, seenAPIRequest{auth: r.Header.Values("Authorization"), body: string(body)})
	if r.Header.Get("Authorization") != a.valid {
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	io.WriteString(w, "ok")
}

// transportFixture is a Transport over an engine with a fake clock, an API
// and a token endpoint.
type transportFixture struct {
	tr    *Transport
	api   *apiRecorder
	srv   *httptest.Server
	te    *credentialtest.TokenEndpoint
	clock *credentialtest.Clock
}

func newTransportFixture(t *testing.T) *transportFixture {
	t.Helper()
	te := credentialtest.NewTokenEndpoint(t, "rt-0")
	store, err := file.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	clock := credentialtest.NewClock()
	engine := New(store, Config{
		Endpoint: TokenEndpoint{URL: te.URL(), ClientID: "c"},
		SeedName: "crm", SeedToken: "rt-0",
		Now: clock.Now,
	})
	t.Cleanup(engine.Close)
	api := &apiRecorder{valid: "Bearer at-1"}
	srv := httptest.NewServer(api)
	t.Cleanup(srv.Close)
	return &transportFixture{tr: &Transport{Engine: engine, KeySet: "crm"}, api: api, srv: srv, te: te, clock: clock}
}

// The transport replaces the caller's own credential header, and after a
// 401 refreshes once and replays the body from GetBody, byte for byte.
func TestTransportInjectsRefreshesAndReplays(t *testing.T) {
	t.Parallel()
	f := newTransportFixture(t)
	tr, api, srv, te := f.tr, f.api, f.srv, f.te
	client := &http.Client{Transport: tr}

	req, _ := http.NewRequest(http.MethodPost, srv.URL+"/a", strings.NewReader("first"))
	req.Header.Set("Authorization", "Bearer the-callers-own")
	resp, err := client.Do(req)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("first POST = %v, %v; want 200", resp, err)
	}
	resp.Body.Close()

	// Later than the minimum refresh interval, the API revokes at-1.
	f.clock.Advance(DefaultMinRefreshInterval)
	api.mu.Lock()
	api.valid = "Bearer at-2"
	api.mu.Unlock()
	body := bytes.Repeat([]byte("0123456789"), 10000)
	resp, err = client.Post(srv.URL+"/b", "application/octet-stream", bytes.NewReader(body))
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("POST after revocation = %v, %v; want 200 after a refresh and a replay", resp, err)
	}
	resp.Body.Close()

	if got := te.Grants.Load(); got != 2 {
		t.Errorf("grants = %d; want 2 (the seed's first token, one refresh)", got)
	}
	api.mu.Lock()
	defer api.mu.Unlock()
	if len(api.seen) != 3 {
		t.Fatalf("API saw %d requests; want 3", len(api.seen))
	}
	for i, s := range api.seen {
		if len(s.auth) != 1 {
			t.Errorf("request %d carried Authorization %q; want exactly one value", i, s.auth)
		}
	}
	if api.seen[0].auth[0] != "Bearer at-1" {
		t.Errorf("first request carried %q; want the injected Bearer at-1", api.seen[0].auth[0])
	}
	if api.seen[2].body != string(body) || api.seen[2].auth[0] != "Bearer at-2" {
		t.Errorf("replay carried %q and %d bytes; want Bearer at-2 and the %d bytes sent", api.seen[2].auth[0], len(api.seen[2].body), len(body))
	}
}

// A body without GetBody cannot be replayed: the 401 comes back as it was,
// and no grant is spent for it.
func TestTransportWithoutGetBodyReturnsRejection(t *testing.T) {
	t.Parallel()
	f := newTransportFixture(t)
	tr, api, srv, te := f.tr, f.api, f.srv, f.te
	f.clock.Advance(DefaultMinRefreshInterval)
	api.mu.Lock()
	api.valid = "never"
	api.mu.Unlock()
	req, _ := http.NewRequest(http.MethodPost, srv.URL+"/a", io.NopCloser(strings.NewReader("once")))
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatalf("RoundTrip = %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("status = %d; want the upstream's 401", resp.StatusCode)
	}
	if got := te.Grants.Load(); got != 1 {
		t.Errorf("grants = %d; want 1 (the first token only)", got)
	}
}

// A 401 to a token granted within the minimum refresh interval comes back
// as it was, with no grant and no replay: an API path that rejects every
// token must not spend a refresh token per request.
func TestTransportTooRecentReturnsRejection(t *testing.T) {
	t.Parallel()
	f := newTransportFixture(t)
	f.api.mu.Lock()
	f.api.valid = "never"
	f.api.mu.Unlock()
	client := &http.Client{Transport: f.tr}
	for i := range 5 {
		resp, err := client.Get(f.srv.URL + "/always-401")
		if err != nil {
			t.Fatalf("GET #%d = %v; want the upstream's 401", i+1, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("GET #%d status = %d; want the upstream's 401", i+1, resp.StatusCode)
		}
	}
	if got := f.te.Grants.Load(); got != 1 {
		t.Errorf("grants = %d; want 1 (the seed's first token only)", got)
	}
	f.api.mu.Lock()
	defer f.api.mu.Unlock()
	if len(f.api.seen) != 5 {
		t.Errorf("API saw %d requests; want 5 (no replays)", len(f.api.seen))
	}
}
