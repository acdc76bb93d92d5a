package oauth2upstream

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/oauth2upstream/caddy-oauth2-upstream/credential"
	"github.com/oauth2upstream/caddy-oauth2-upstream/credential/credentialtest"
	"github.com/oauth2upstream/caddy-oauth2-upstream/internal/answer"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
)

// The client's own Authorization header never reaches the upstream: the
// injected one replaces it (invariant 1).
func TestInjectionReplacesClientHeader(t *testing.T) {
	t.Parallel()
	te := credentialtest.NewTokenEndpoint(t, "rt-0")
	api := newAPIServer(t, "Bearer at-1")
	s := newSidecar(t, &Handler{TokenURL: te.URL(), ClientID: "c", ClientSecret: "s", RefreshToken: "rt-0"}, hostPort(t, api.server.URL))

	req, _ := http.NewRequest(http.MethodGet, s.server.URL+"/x", nil)
	req.Header.Add("Authorization", "Bearer client-own")
	req.Header.Add("Authorization", "Basic Y2xpZW50Og==")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status = %d; want 200", resp.StatusCode)
	}
	seen := api.seen()
	if len(seen) != 1 || len(seen[0].Authorization) != 1 || seen[0].Authorization[0] != "Bearer at-1" {
		t.Fatalf("upstream saw %+v; want exactly one Authorization: Bearer at-1", seen)
	}
}

// do sends a request through the sidecar and returns the response and body.
func (s *sidecar) do(t *testing.T, req *http.Request) (*http.Response, []byte) {
	t.Helper()
	resp, err := s.server.Client().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading response: %v", err)
	}
	return resp, body
}

func (s *sidecar) get(t *testing.T, path string) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, s.server.URL+path, nil)
	return s.do(t, req)
}

// storedKeySet reads the key set document from the sidecar's file keystore.
func (s *sidecar) storedKeySet(t *testing.T, name string) *keystore.KeySet {
	t.Helper()
	ks, err := s.store.Load(context.Background(), name)
	if err != nil {
		t.Fatalf("Load(%q) = %v", name, err)
	}
	return ks
}

// A 401 makes the sidecar refresh once and replay; the body arrives at the
// upstream byte-identical whatever its size and framing (invariant 3), and
// the 401's headers do not leak into the final answer.
func TestReplayAfter401(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		size    int
		chunked bool
		expect  bool // Expect: 100-continue
		unread  bool // the upstream answers 401 before reading the body
		// expectTimeout sets reverse_proxy's expect_continue_timeout.
		expectTimeout bool
	}{
		{name: "no body", size: 0},
		{name: "1 byte", size: 1},
		{name: "64 KiB", size: 64 << 10},
		{name: "64 KiB chunked", size: 64 << 10, chunked: true},
		{name: "5 MiB past the memory threshold", size: 5 << 20},
		{name: "5 MiB chunked", size: 5 << 20, chunked: true},
		{name: "1 MiB with Expect 100-continue", size: 1 << 20, expect: true},
		{name: "3 MiB rejected unread", size: 3 << 20, unread: true},
		{name: "3 MiB chunked rejected unread", size: 3 << 20, chunked: true, unread: true},
		// An upstream that rejects an Expect: 100-continue request unread
		// closes the connection at once; reverse_proxy sees that response
		// reliably only when its transport waits for the 100 Continue.
		{name: "3 MiB chunked rejected unread with Expect", size: 3 << 20, chunked: true, expect: true, unread: true, expectTimeout: true},
		{name: "3 MiB rejected unread with Expect", size: 3 << 20, expect: true, unread: true, expectTimeout: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			te := credentialtest.NewTokenEndpoint(t, "rt-0")
			api := newAPIServer(t, "Bearer at-1")
			api.rejectUnread = tt.unread
			proxy := &reverseproxy.Handler{Upstreams: reverseproxy.UpstreamPool{{Dial: hostPort(t, api.server.URL)}}}
			if tt.expectTimeout {
				proxy.TransportRaw = json.RawMessage(`{"protocol":"http","expect_continue_timeout":5000000000}`)
			}
			s := newSidecarWithProxy(t, &Handler{TokenURL: te.URL(), ClientID: "c", RefreshToken: "rt-0"}, proxy)
			clock := credentialtest.NewClock()
			s.useClock(clock)
			s.get(t, "/warm-up") // grants at-1
			ageTokens(clock)
			api.setValid("Bearer at-2")

			body := make([]byte, tt.size)
			rand.NewChaCha8([32]byte{byte(tt.size), 7}).Read(body)
			var reader io.Reader = bytes.NewReader(body)
			if tt.chunked {
				reader = io.MultiReader(reader) // hides the length: chunked framing
			}
			req, _ := http.NewRequest(http.MethodPost, s.server.URL+"/upload", reader)
			if tt.expect {
				req.Header.Set("Expect", "100-continue")
			}
			resp, got := s.do(t, req)

			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status = %d (%s); want 200", resp.StatusCode, got)
			}
			if resp.Header.Get("WWW-Authenticate") != "" || resp.Header.Get("X-Rejected") != "" {
				t.Errorf("the 401's headers leaked into the replayed answer: %v", resp.Header)
			}
			var answer apiAnswer
			if err := json.Unmarshal(got, &answer); err != nil {
				t.Fatalf("decoding %q: %v", got, err)
			}
			sum := sha256.Sum256(body)
			if answer.Length != tt.size || answer.SHA256 != hex.EncodeToString(sum[:]) {
				t.Errorf("upstream received %d bytes, sha256 %s; want %d bytes, %x", answer.Length, answer.SHA256, tt.size, sum)
			}
			if g := te.Grants.Load(); g != 2 {
				t.Errorf("grants = %d; want 2 (the warm-up and one refresh)", g)
			}
			seen := api.seen()
			if n := len(seen); n != 3 {
				t.Errorf("upstream saw %d requests; want 3 (warm-up, rejected, replay)", n)
			}
		})
	}
}

// At most one replay per request (invariant 2): when the upstream still
// answers 401 after the refresh, the client gets that 401 unchanged. A 401
// to the token just granted makes no refresh at all (min_refresh_interval).
func TestSecond401GoesToClient(t *testing.T) {
	t.Parallel()
	te := credentialtest.NewTokenEndpoint(t, "rt-0")
	api := newAPIServer(t, "")
	api.alwaysReject = true
	s := newSidecar(t, &Handler{TokenURL: te.URL(), ClientID: "c", RefreshToken: "rt-0"}, hostPort(t, api.server.URL))
	clock := credentialtest.NewClock()
	s.useClock(clock)

	for _, tt := range []struct {
		name        string
		wantSeen    int   // upstream requests so far
		wantGrants  int64 // so far
		passedAfter string
	}{
		{"a token just granted", 1, 1, "one attempt, no refresh"},
		{"a token older than min_refresh_interval", 3, 2, "one attempt, one refresh, one replay"},
	} {
		resp, body := s.get(t, "/x")
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("%s: status = %d; want 401", tt.name, resp.StatusCode)
		}
		if resp.Header.Get("WWW-Authenticate") == "" || !strings.Contains(string(body), "token rejected") {
			t.Errorf("%s: the upstream's 401 was not passed through unchanged: %v %q", tt.name, resp.Header, body)
		}
		if n := len(api.seen()); n != tt.wantSeen {
			t.Errorf("%s: upstream saw %d requests; want %d (%s)", tt.name, n, tt.wantSeen, tt.passedAfter)
		}
		if g := te.Grants.Load(); g != tt.wantGrants {
			t.Errorf("%s: grants = %d; want %d", tt.name, g, tt.wantGrants)
		}
		ageTokens(clock)
	}
}

// A body larger than max_replay_body streams through once; the 401 then
// goes back to the client, and the token is still refreshed for the next
// request.
func TestBodyTooLargeToReplay(t *testing.T) {
	t.Parallel()
	for _, chunked := range []bool{false, true} {
		t.Run(fmt.Sprintf("chunked=%v", chunked), func(t *testing.T) {
			t.Parallel()
			te := credentialtest.NewTokenEndpoint(t, "rt-0")
			api := newAPIServer(t, "Bearer at-1")
			s := newSidecar(t, &Handler{TokenURL: te.URL(), ClientID: "c", RefreshToken: "rt-0", BodyOptions: BodyOptions{ReplayMemory: 1024, MaxReplayBody: 4096}},
				hostPort(t, api.server.URL))
			clock := credentialtest.NewClock()
			s.useClock(clock)
			s.get(t, "/warm-up")
			ageTokens(clock)
			api.setValid("Bearer at-2")

			var body io.Reader = bytes.NewReader(make([]byte, 10000))
			if chunked {
				body = io.MultiReader(body)
			}
			req, _ := http.NewRequest(http.MethodPost, s.server.URL+"/big", body)
			resp, _ := s.do(t, req)
			if resp.StatusCode != http.StatusUnauthorized {
				t.Fatalf("status = %d; want the upstream's 401", resp.StatusCode)
			}
			if g := te.Grants.Load(); g != 2 {
				t.Errorf("grants = %d; want 2: the rejected token is still refreshed", g)
			}
			if resp, _ := s.get(t, "/next"); resp.StatusCode != http.StatusOK {
				t.Errorf("next request status = %d; want 200 with the refreshed token", resp.StatusCode)
			}
		})
	}
}

// A 401 for a request that carried an older generation's token is replayed
// with the current token, without a new grant.
func TestOlderGenerationReplayedWithoutGrant(t *testing.T) {
	t.Parallel()
	te := credentialtest.NewTokenEndpoint(t, "rt-0")
	api := newAPIServer(t, "Bearer at-1")
	s := newSidecar(t, &Handler{TokenURL: te.URL(), ClientID: "c", RefreshToken: "rt-0"}, hostPort(t, api.server.URL))
	clock := credentialtest.NewClock()
	s.useClock(clock)
	s.get(t, "/warm-up") // generation 2 (1 is the seed), token at-1
	ageTokens(clock)

	// Another request refreshed meanwhile: generation 3, token at-2.
	if _, err := s.handler.engine.Rejected(context.Background(), "default", 2); err != nil {
		t.Fatal(err)
	}
	api.setValid("Bearer at-2")
	grants := te.Grants.Load()
	// A late 401 for generation 2 must not spend rt-2.
	fresh, err := s.handler.engine.Rejected(context.Background(), "default", 2)
	if err != nil {
		t.Fatal(err)
	}
	if fresh.KeySet.Generation != 3 || te.Grants.Load() != grants {
		t.Errorf("Rejected(gen 2) = generation %d after %d new grants; want generation 3, 0 grants", fresh.KeySet.Generation, te.Grants.Load()-grants)
	}
}

// Permanent refresh failures answer 502 application/problem+json naming the
// key set and the OAuth error code; temporary ones 503 with Retry-After
// (invariant 8). A failed refresh leaves the stored key set alone (6).
func TestRefreshFailureResponses(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		respond    func(w http.ResponseWriter, r *http.Request) bool
		wantStatus int
		wantCode   string
	}{
		{
			name: "invalid_grant",
			respond: func(w http.ResponseWriter, r *http.Request) bool {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusBadRequest)
				io.WriteString(w, `{"error":"invalid_grant","error_description":"token revoked"}`)
				return true
			},
			wantStatus: http.StatusBadGateway, wantCode: "invalid_grant",
		},
		{
			name: "invalid_client",
			respond: func(w http.ResponseWriter, r *http.Request) bool {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusUnauthorized)
				io.WriteString(w, `{"error":"invalid_client"}`)
				return true
			},
			wantStatus: http.StatusBadGateway, wantCode: "invalid_client",
		},
		{
			name: "token endpoint 500",
			respond: func(w http.ResponseWriter, r *http.Request) bool {
				http.Error(w, "down", http.StatusInternalServerError)
				return true
			},
			wantStatus: http.StatusServiceUnavailable, wantCode: credential.CodeTokenEndpointUnavailable,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			te := credentialtest.NewTokenEndpoint(t, "rt-0")
			api := newAPIServer(t, "Bearer at-1")
			s := newSidecar(t, &Handler{TokenURL: te.URL(), ClientID: "c", RefreshToken: "rt-0"}, hostPort(t, api.server.URL))
			clock := credentialtest.NewClock()
			s.useClock(clock)
			s.get(t, "/warm-up")
			ageTokens(clock)
			before := s.storedKeySet(t, "default")
			api.setValid("Bearer at-2")
			te.Mu.Lock()
			te.Respond = tt.respond
			te.Mu.Unlock()

			resp, body := s.get(t, "/x")
			if resp.StatusCode != tt.wantStatus {
				t.Fatalf("status = %d (%s); want %d", resp.StatusCode, body, tt.wantStatus)
			}
			if ct := resp.Header.Get("Content-Type"); ct != "application/problem+json" {
				t.Errorf("Content-Type = %q; want application/problem+json", ct)
			}
			if resp.Header.Get("WWW-Authenticate") != "" {
				t.Errorf("the upstream's 401 headers leaked into the problem: %v", resp.Header)
			}
			var p answer.Problem
			if err := json.Unmarshal(body, &p); err != nil {
				t.Fatalf("decoding problem %q: %v", body, err)
			}
			if p.KeySet != "default" || p.OAuthError != tt.wantCode || p.Status != tt.wantStatus {
				t.Errorf("problem = %+v; want key_set default, oauth_error %s, status %d", p, tt.wantCode, tt.wantStatus)
			}
			if ra := resp.Header.Get("Retry-After"); (tt.wantStatus == http.StatusServiceUnavailable) != (ra != "") {
				t.Errorf("Retry-After = %q with status %d", ra, resp.StatusCode)
			}
			after := s.storedKeySet(t, "default")
			if !reflect.DeepEqual(before, after) {
				t.Errorf("stored key set changed after a failed refresh:\n%+v\n%+v", before, after)
			}
		})
	}
}

// A request for a key set that does not exist gets 502 no_key_set; a
// placeholder-selected name that is not a valid name gets 400.
func TestKeySetSelection(t *testing.T) {
	t.Parallel()
	te := credentialtest.NewTokenEndpoint(t, "rt-0")
	api := newAPIServer(t, "Bearer at-1")
	s := newSidecar(t, &Handler{TokenURL: te.URL(), ClientID: "c", KeySet: "{http.request.header.X-Account}", KeySetAllow: "[a-z0-9-]+"}, hostPort(t, api.server.URL))
	for _, name := range []string{"acme", "Salesforce"} {
		seed := &keystore.KeySet{Name: name, Generation: 1, Token: keystore.Token{}, Client: s.client()}
		seed.Token.SetString("refresh_token", "rt-0")
		if err := s.store.Save(context.Background(), seed); err != nil {
			t.Fatal(err)
		}
	}
	loads := &loadCounter{Store: s.handler.engine.Store()}
	s.replaceEngine(loads, time.Now)
	tests := []struct {
		account    string
		wantStatus int
		wantCode   string
	}{
		{account: "acme", wantStatus: http.StatusOK},
		{account: "unknown", wantStatus: http.StatusBadGateway, wantCode: credential.CodeNoKeySet},
		{account: "../etc/passwd", wantStatus: http.StatusBadRequest, wantCode: credential.CodeInvalidKeySetName},
		{account: "", wantStatus: http.StatusBadRequest, wantCode: credential.CodeInvalidKeySetName},
		// Stored, but outside key_set_allow: another client's key set.
		{account: "Salesforce", wantStatus: http.StatusForbidden, wantCode: credential.CodeKeySetNotAllowed},
	}
	for _, tt := range tests {
		req, _ := http.NewRequest(http.MethodGet, s.server.URL+"/x", nil)
		req.Header.Set("X-Account", tt.account)
		resp, body := s.do(t, req)
		if resp.StatusCode != tt.wantStatus {
			t.Errorf("X-Account %q: status = %d (%s); want %d", tt.account, resp.StatusCode, body, tt.wantStatus)
			continue
		}
		if tt.wantCode != "" {
			var p answer.Problem
			if err := json.Unmarshal(body, &p); err != nil || p.OAuthError != tt.wantCode {
				t.Errorf("X-Account %q: problem %s; want oauth_error %s", tt.account, body, tt.wantCode)
			}
		}
	}
	if got := loads.names(); slices.Contains(got, "Salesforce") {
		t.Errorf("keystore loads %v; a name outside key_set_allow must touch no keystore", got)
	}
	if got := len(api.seen()); got != 1 {
		t.Errorf("upstream saw %d requests; want 1 (acme's)", got)
	}
}

// loadCounter records the names a keystore is asked to load.
type loadCounter struct {
	keystore.Store
	mu     sync.Mutex // guards loaded
	loaded []string
}

func (l *loadCounter) Load(ctx context.Context, name string) (*keystore.KeySet, error) {
	l.mu.Lock()
	l.loaded = append(l.loaded, name)
	l.mu.Unlock()
	return l.Store.Load(ctx, name)
}

func (l *loadCounter) names() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.loaded)
}

// Extra fields of the token response, such as Salesforce's instance_url,
// select the upstream through placeholders; by default only the fields of
// keystore.DefaultExtraFields resolve: no token value, nor a credential
// under another name (api_key, tokens), nor a field nobody named.
func TestPlaceholders(t *testing.T) {
	t.Parallel()
	api := newAPIServer(t, "Bearer at-1")
	te := credentialtest.NewTokenEndpoint(t, "rt-0")
	te.Extra = map[string]any{"instance_url": api.server.URL, "id_token": "id-secret", "scope": "api",
		"api_key": "ak-secret", "tokens": "tk-secret",
		"authed_user": map[string]any{"id": "U1", "access_token": "xoxp-nested"}, "scopes": []string{"a"}, "team_ok": true}
	s := newSidecar(t, &Handler{TokenURL: te.URL(), ClientID: "c", RefreshToken: "rt-0"},
		"{http.oauth2_upstream.extra.instance_url.hostport}")
	if resp, body := s.get(t, "/x"); resp.StatusCode != http.StatusOK {
		t.Fatalf("status = %d (%s); want 200 through the instance_url upstream", resp.StatusCode, body)
	}

	cred, err := s.handler.engine.Current(context.Background(), "default")
	if err != nil {
		t.Fatal(err)
	}
	vars := &requestPlaceholders{keySet: "default", cred: cred, extras: s.handler.extras}
	u, _ := url.Parse(api.server.URL)
	tests := []struct {
		key    string
		want   any
		wantOK bool
	}{
		{key: "http.oauth2_upstream.key_set", want: "default", wantOK: true},
		{key: "http.oauth2_upstream.generation", want: int64(2), wantOK: true},
		{key: "http.oauth2_upstream.extra.instance_url", want: api.server.URL, wantOK: true},
		{key: "http.oauth2_upstream.extra.instance_url.scheme", want: "http", wantOK: true},
		{key: "http.oauth2_upstream.extra.instance_url.host", want: u.Hostname(), wantOK: true},
		{key: "http.oauth2_upstream.extra.instance_url.hostport", want: u.Host, wantOK: true},
		{key: "http.oauth2_upstream.extra.scope", want: "api", wantOK: true},
		{key: "http.oauth2_upstream.extra.expires_in", want: "3600", wantOK: true},
		{key: "http.oauth2_upstream.extra.token_type", want: "Bearer", wantOK: true},
		{key: "http.oauth2_upstream.extra.access_token"},
		{key: "http.oauth2_upstream.extra.refresh_token"},
		{key: "http.oauth2_upstream.extra.id_token"},
		{key: "http.oauth2_upstream.extra.api_key"},
		{key: "http.oauth2_upstream.extra.tokens"},
		{key: "http.oauth2_upstream.extra.access_token.host"},
		{key: "http.oauth2_upstream.extra.missing"},
		// Only top-level scalars resolve: Slack's authed_user nests an
		// access_token, and an array may hold anything.
		{key: "http.oauth2_upstream.extra.authed_user"},
		{key: "http.oauth2_upstream.extra.authed_user.host"},
		{key: "http.oauth2_upstream.extra.scopes"},
		// A harmless field resolves only once extra_fields names it.
		{key: "http.oauth2_upstream.extra.team_ok"},
		{key: "http.other"},
	}
	for _, tt := range tests {
		got, ok := vars.lookup(tt.key)
		if ok != tt.wantOK || (ok && got != tt.want) {
			t.Errorf("lookup(%q) = %v, %v; want %v, %v", tt.key, got, ok, tt.want, tt.wantOK)
		}
	}
}

// extra_fields replaces the default allow-list: a field it names resolves,
// in the request's placeholders (here reverse_proxy's upstream), and a
// default it leaves out does not; an object stays unresolved even named.
func TestExtraFieldsOption(t *testing.T) {
	t.Parallel()
	api := newAPIServer(t, "Bearer at-1")
	te := credentialtest.NewTokenEndpoint(t, "rt-0")
	te.Extra = map[string]any{"api_url": api.server.URL, "team_ok": true, "scope": "api",
		"authed_user": map[string]any{"access_token": "xoxp-nested"}}
	s := newSidecar(t, &Handler{TokenURL: te.URL(), ClientID: "c", RefreshToken: "rt-0",
		ExtraFields: []string{"api_url", "team_ok", "authed_user"}}, "{http.oauth2_upstream.extra.api_url.hostport}")
	if resp, body := s.get(t, "/x"); resp.StatusCode != http.StatusOK {
		t.Fatalf("status = %d (%s); want 200 through the api_url upstream that extra_fields names", resp.StatusCode, body)
	}

	cred, err := s.handler.engine.Current(context.Background(), "default")
	if err != nil {
		t.Fatal(err)
	}
	vars := &requestPlaceholders{keySet: "default", cred: cred, extras: s.handler.extras}
	tests := []struct {
		key    string
		want   any
		wantOK bool
	}{
		{key: "http.oauth2_upstream.extra.api_url", want: api.server.URL, wantOK: true},
		{key: "http.oauth2_upstream.extra.team_ok", want: "true", wantOK: true},
		{key: "http.oauth2_upstream.extra.scope"},
		{key: "http.oauth2_upstream.extra.authed_user"},
		{key: "http.oauth2_upstream.extra.access_token"},
	}
	for _, tt := range tests {
		got, ok := vars.lookup(tt.key)
		if ok != tt.wantOK || (ok && got != tt.want) {
			t.Errorf("lookup(%q) = %v, %v; want %v, %v", tt.key, got, ok, tt.want, tt.wantOK)
		}
	}
}

// The header option names the header and the scheme; raw sends the token
// alone.
func TestHeaderOption(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, header, scheme, want string
	}{
		{name: "default", want: "Bearer at-1"},
		{name: "custom scheme", header: "Authorization", scheme: "OAuth", want: "OAuth at-1"},
		{name: "raw in another header", header: "X-Api-Token", scheme: "raw", want: "at-1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			te := credentialtest.NewTokenEndpoint(t, "rt-0")
			var got []string
			var mu sync.Mutex
			api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				defer mu.Unlock()
				name := tt.header
				if name == "" {
					name = "Authorization"
				}
				got = r.Header.Values(name)
			}))
			t.Cleanup(api.Close)
			s := newSidecar(t, &Handler{TokenURL: te.URL(), ClientID: "c", RefreshToken: "rt-0", HeaderName: tt.header, HeaderScheme: tt.scheme}, hostPort(t, api.URL))
			req, _ := http.NewRequest(http.MethodGet, s.server.URL+"/", nil)
			req.Header.Set("X-Api-Token", "client-own")
			s.do(t, req)
			mu.Lock()
			defer mu.Unlock()
			if len(got) != 1 || got[0] != tt.want {
				t.Errorf("upstream got %q; want [%q]", got, tt.want)
			}
		})
	}
}

// refresh_on adds statuses that trigger a refresh and replay.
func TestRefreshOnCustomStatus(t *testing.T) {
	t.Parallel()
	te := credentialtest.NewTokenEndpoint(t, "rt-0")
	var calls atomic.Int64
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) == 1 {
			http.Error(w, "forbidden", http.StatusForbidden)
		}
	}))
	t.Cleanup(api.Close)
	s := newSidecar(t, &Handler{TokenURL: te.URL(), ClientID: "c", RefreshToken: "rt-0", RefreshOn: []int{401, 403}}, hostPort(t, api.URL))
	clock := credentialtest.NewClock()
	s.useClock(clock)
	if _, err := s.handler.engine.Current(context.Background(), "default"); err != nil { // grants at-1
		t.Fatal(err)
	}
	ageTokens(clock)
	if resp, _ := s.get(t, "/"); resp.StatusCode != http.StatusOK {
		t.Fatalf("status = %d; want 200 after a replay on 403", resp.StatusCode)
	}
	if g := te.Grants.Load(); g != 2 {
		t.Errorf("grants = %d; want 2", g)
	}
}

// Token values never appear in the sidecar's logs (invariant 7).
func TestLogsHoldNoTokens(t *testing.T) {
	t.Parallel()
	te := credentialtest.NewTokenEndpoint(t, "rt-seed-secret")
	api := newAPIServer(t, "Bearer at-2")
	s := newSidecar(t, &Handler{TokenURL: te.URL(), ClientID: "c", ClientSecret: "client-secret-value", RefreshToken: "rt-seed-secret"}, hostPort(t, api.server.URL))
	clock := credentialtest.NewClock()
	s.useClock(clock)
	s.get(t, "/a")
	ageTokens(clock)
	s.get(t, "/b") // 401, refresh, replay
	ageTokens(clock)
	te.Mu.Lock()
	te.Respond = func(w http.ResponseWriter, r *http.Request) bool {
		r.ParseForm()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		// A provider that echoes the refresh token in its description.
		fmt.Fprintf(w, `{"error":"invalid_grant","error_description":"bad token %s"}`, r.PostForm.Get("refresh_token"))
		return true
	}
	te.Mu.Unlock()
	api.setValid("nothing")
	_, body := s.get(t, "/c")

	secrets := []string{"at-1", "at-2", "rt-1", "rt-2", "rt-seed-secret", "client-secret-value"}
	for _, entry := range s.logs.All() {
		line := entry.Message
		for k, v := range entry.ContextMap() {
			line += fmt.Sprintf(" %s=%v", k, v)
		}
		for _, secret := range secrets {
			if strings.Contains(line, secret) {
				t.Errorf("log line holds a token value %q: %s", secret, line)
			}
		}
	}
	for _, secret := range secrets {
		if bytes.Contains(body, []byte(secret)) {
			t.Errorf("problem response holds a token value %q: %s", secret, body)
		}
	}
	if s.logs.FilterMessage("refreshed key set").Len() != 2 {
		t.Errorf("want 2 'refreshed key set' log lines, got %d", s.logs.FilterMessage("refreshed key set").Len())
	}
}
