package oauth2upstream

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/oauth2upstream/caddy-oauth2-upstream/credential"
	"github.com/oauth2upstream/caddy-oauth2-upstream/credential/credentialtest"
	"github.com/oauth2upstream/caddy-oauth2-upstream/internal/answer"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
)

// Token endpoint faults that the unit tests of the token client do not
// cover: an oversized answer and an empty 200 are clear errors, never a
// stored key set.
func TestTokenEndpointMalformedAnswers(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		answer func(w http.ResponseWriter)
	}{
		{name: "empty 200", answer: func(w http.ResponseWriter) {}},
		{name: "oversized", answer: func(w http.ResponseWriter) {
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, `{"access_token":"at","padding":"`+strings.Repeat("x", 1<<20)+`"}`)
		}},
		{name: "JSON array", answer: func(w http.ResponseWriter) {
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, `["access_token"]`)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			te := credentialtest.NewTokenEndpoint(t, "rt-0")
			te.Mu.Lock()
			te.Respond = func(w http.ResponseWriter, r *http.Request) bool { tt.answer(w); return true }
			te.Mu.Unlock()
			api := newAPIServer(t, "Bearer at-1")
			s := newSidecar(t, &Handler{TokenURL: te.URL(), ClientID: "c", RefreshToken: "rt-0"}, hostPort(t, api.server.URL))
			resp, body := s.get(t, "/")
			var p answer.Problem
			json.Unmarshal(body, &p)
			if resp.StatusCode != http.StatusServiceUnavailable || p.OAuthError != credential.CodeInvalidTokenResponse {
				t.Errorf("status %d, problem %+v; want 503 %s", resp.StatusCode, p, credential.CodeInvalidTokenResponse)
			}
			if ks := s.storedKeySet(t, "default"); ks.Generation != 1 || ks.Token.AccessToken() != "" {
				t.Errorf("stored key set = generation %d with an access token %v; want the untouched seed", ks.Generation, ks.Token.AccessToken() != "")
			}
		})
	}
}

// No request waits longer than max_wait for a refresh: it gets 503 with
// Retry-After while the grant goes on, and the grant's result is stored.
func TestMaxWaitBoundsRequests(t *testing.T) {
	t.Parallel()
	te := credentialtest.NewTokenEndpoint(t, "rt-0")
	te.Gate = make(chan struct{})
	api := newAPIServer(t, "Bearer at-1")
	s := newSidecar(t, &Handler{TokenURL: te.URL(), ClientID: "c", RefreshToken: "rt-0", MaxWait: caddyDuration(50 * time.Millisecond)}, hostPort(t, api.server.URL))

	resp, _ := s.get(t, "/")
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Errorf("status %d, Retry-After %q; want 503 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	close(te.Gate)
	s.handler.engine.Close() // the grant finishes and is stored
	if ks := s.storedKeySet(t, "default"); ks.Token.AccessToken() != "at-1" {
		t.Errorf("stored access token after the slow grant = %q; want at-1", ks.Token.AccessToken())
	}
	if resp, _ := s.get(t, "/"); resp.StatusCode != http.StatusOK {
		t.Errorf("next request status = %d; want 200", resp.StatusCode)
	}
}

// A keystore that cannot be written after a grant (disk full) keeps the
// granted key set in memory and serves requests with its access token (the
// provider revoked the one before), makes no further grant with an unstored
// refresh token, shows keystore_failing, and stores it on the first request
// once the disk is back (DESIGN.md invariant 10).
func TestKeystoreWriteFailure(t *testing.T) {
	t.Parallel()
	te := credentialtest.NewTokenEndpoint(t, "rt-0")
	api := newAPIServer(t, "Bearer at-1")
	s := newSidecar(t, &Handler{TokenURL: te.URL(), ClientID: "c", RefreshToken: "rt-0"}, hostPort(t, api.server.URL))
	clock := credentialtest.NewClock()
	s.useClock(clock)
	disk := &diskFullStore{Store: s.handler.engine.Store()}
	s.replaceEngine(disk, clock.Now)
	if resp, _ := s.get(t, "/"); resp.StatusCode != http.StatusOK {
		t.Fatalf("status = %d; want 200", resp.StatusCode)
	}
	disk.full.Store(true)

	ageTokens(clock)
	api.setValid("Bearer at-2")
	resp, body := s.get(t, "/") // 401, grant at-2 (rt-2), the save fails
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status = %d (%s); want 200, served from memory while the new key set is unstored", resp.StatusCode, body)
	}
	status, err := s.handler.engine.Status(context.Background(), "default")
	if err != nil || status.State != credential.StateKeystoreFailing || status.Healthy() {
		t.Errorf("Status() = %+v, %v; want state %s, unhealthy", status, err, credential.StateKeystoreFailing)
	}
	for i := range 3 {
		clock.Advance(time.Minute) // past any backoff
		if resp, body := s.get(t, "/"); resp.StatusCode != http.StatusOK {
			t.Errorf("request %d while unstored: status = %d (%s); want 200", i, resp.StatusCode, body)
		}
	}
	if g := te.Grants.Load(); g != 2 {
		t.Errorf("grants = %d; want 2: no grant while a granted key set is unstored", g)
	}

	disk.full.Store(false)
	if resp, body := s.get(t, "/"); resp.StatusCode != http.StatusOK {
		t.Fatalf("status after the disk came back = %d (%s); want 200", resp.StatusCode, body)
	}
	// That request started the save (the background check runs every 30s).
	credentialtest.Eventually(t, "the key set stored after one request", func() bool {
		ks := s.storedKeySet(t, "default")
		return ks.Token.AccessToken() == "at-2" && ks.Token.RefreshToken() == "rt-2"
	})
	if g := te.Grants.Load(); g != 2 {
		t.Errorf("grants = %d; want 2: the pending key set was stored, not regranted", g)
	}
}

// diskFullStore fails every Save while full is set, as a full disk would.
type diskFullStore struct {
	keystore.Store
	full atomic.Bool
}

func (d *diskFullStore) Save(ctx context.Context, ks *keystore.KeySet) error {
	if d.full.Load() {
		return errors.New("write /data/default.json: no space left on device")
	}
	return d.Store.Save(ctx, ks)
}

// A keystore directory that disappears (replaced by a file, which fails
// even for root) stops refreshes before any grant: no lock, no grant. The
// stored key set is untouched and traffic recovers when it is back.
func TestKeystoreDirectoryGone(t *testing.T) {
	t.Parallel()
	te := credentialtest.NewTokenEndpoint(t, "rt-0")
	api := newAPIServer(t, "Bearer at-1")
	s := newSidecar(t, &Handler{TokenURL: te.URL(), ClientID: "c", RefreshToken: "rt-0"}, hostPort(t, api.server.URL))
	clock := credentialtest.NewClock()
	s.useClock(clock)
	s.get(t, "/")
	ageTokens(clock)
	dir := s.dir
	if err := os.Rename(dir, dir+".away"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dir, []byte("not a directory"), 0o600); err != nil {
		t.Fatal(err)
	}
	api.setValid("Bearer at-2")
	resp, body := s.get(t, "/")
	var p answer.Problem
	json.Unmarshal(body, &p)
	if resp.StatusCode != http.StatusServiceUnavailable || p.OAuthError != credential.CodeKeystoreUnavailable {
		t.Errorf("status %d, problem %+v; want 503 %s", resp.StatusCode, p, credential.CodeKeystoreUnavailable)
	}
	if g := te.Grants.Load(); g != 1 {
		t.Errorf("grants = %d; want 1: no grant without the keystore's lock", g)
	}
	os.Remove(dir)
	if err := os.Rename(dir+".away", dir); err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Minute)
	if resp, _ := s.get(t, "/"); resp.StatusCode != http.StatusOK {
		t.Errorf("status after the directory came back = %d; want 200", resp.StatusCode)
	}
}

// The configured credential header from the client is dropped; every other
// client header passes unchanged.
func TestOtherClientHeadersPass(t *testing.T) {
	t.Parallel()
	te := credentialtest.NewTokenEndpoint(t, "rt-0")
	var got http.Header
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { got = r.Header.Clone() }))
	t.Cleanup(api.Close)
	s := newSidecar(t, &Handler{TokenURL: te.URL(), ClientID: "c", RefreshToken: "rt-0"}, hostPort(t, api.URL))
	req, _ := http.NewRequest(http.MethodGet, s.server.URL+"/", nil)
	req.Header.Set("Authorization", "Bearer client")
	req.Header.Set("X-Request-Id", "abc")
	req.Header.Add("Accept", "application/json")
	req.Header.Set("Proxy-Authorization", "Basic eA==")
	s.do(t, req)
	if a := got.Values("Authorization"); len(a) != 1 || a[0] != "Bearer at-1" {
		t.Errorf("Authorization = %q; want only the injected token", a)
	}
	if got.Get("X-Request-Id") != "abc" || got.Get("Accept") != "application/json" {
		t.Errorf("client headers changed: %v", got)
	}
}

// The proxy does not follow an upstream redirect: the token never reaches
// the redirect's target.
func TestRedirectNotFollowedWithToken(t *testing.T) {
	t.Parallel()
	var elsewhere atomic.Int64
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { elsewhere.Add(1) }))
	t.Cleanup(other.Close)
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, other.URL+"/steal", http.StatusFound)
	}))
	t.Cleanup(api.Close)
	te := credentialtest.NewTokenEndpoint(t, "rt-0")
	s := newSidecar(t, &Handler{TokenURL: te.URL(), ClientID: "c", RefreshToken: "rt-0"}, hostPort(t, api.URL))
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := client.Get(s.server.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound || elsewhere.Load() != 0 {
		t.Errorf("status %d, redirect target hit %d times; want the 302 passed back and no request elsewhere", resp.StatusCode, elsewhere.Load())
	}
}

// A client that stalls mid-body is cut off by body_timeout (no server
// timeout is set here); the attempt ends and its temporary file is gone
// (TestMain checks that no body file stays open).
func TestSlowClientCutOff(t *testing.T) {
	t.Parallel()
	te := credentialtest.NewTokenEndpoint(t, "rt-0")
	api := newAPIServer(t, "Bearer at-1")
	s := newSidecar(t, &Handler{TokenURL: te.URL(), ClientID: "c", RefreshToken: "rt-0",
		BodyOptions: BodyOptions{ReplayMemory: 1024, BodyTimeout: caddyDuration(300 * time.Millisecond)}}, hostPort(t, api.server.URL))

	conn, err := net.Dial("tcp", hostPort(t, s.server.URL))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	io.WriteString(conn, "POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
	conn.Write(bytes.Repeat([]byte("a"), 5000)) // past the memory threshold, then nothing more
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	start := time.Now()
	answer, _ := io.ReadAll(conn) // returns when the sidecar gives up on the client
	if bytes.HasPrefix(answer, []byte("HTTP/1.1 200")) {
		t.Errorf("a stalled upload was answered 200: %q", answer)
	}
	if waited := time.Since(start); waited > 5*time.Second {
		t.Errorf("the stalled client was held %s; want it cut off near body_timeout (300ms)", waited)
	}
	if n := len(api.seen()); n > 1 {
		t.Errorf("upstream saw %d requests; want at most the one attempt", n)
	}
}

// encryption_key encrypts what the handler stores.
func TestHandlerEncryptsKeystore(t *testing.T) {
	te := credentialtest.NewTokenEndpoint(t, "rt-0")
	api := newAPIServer(t, "Bearer at-1")
	key := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32))
	t.Setenv("TEST_KEYSTORE_KEY_ENCRYPT", key)
	s := newSidecar(t, &Handler{TokenURL: te.URL(), ClientID: "c", RefreshToken: "rt-0", EncryptionKeys: []string{"{env.TEST_KEYSTORE_KEY_ENCRYPT}"}}, hostPort(t, api.server.URL))
	if resp, _ := s.get(t, "/"); resp.StatusCode != http.StatusOK {
		t.Fatalf("status = %d; want 200", resp.StatusCode)
	}
	raw, err := os.ReadFile(s.dir + "/default.json")
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, []byte("at-1")) || bytes.Contains(raw, []byte("rt-1")) || !bytes.Contains(raw, []byte("AES-256-GCM")) {
		t.Errorf("stored document is not encrypted: %s", raw)
	}
	// A seed never overwrites a document that does not decrypt.
	_, err = keystore.JSONCodec{}.Decode("default", raw)
	if !errors.Is(err, keystore.ErrCorrupt) {
		t.Errorf("plain decoding of the encrypted document = %v; want ErrCorrupt", err)
	}
}

func caddyDuration(d time.Duration) caddy.Duration { return caddy.Duration(d) }

// A body that arrived whole, then an upstream slower than body_timeout to
// answer: the idle deadline must not outlive the body. Go's server reads
// the connection in the background once the body has ended, and when that
// read times out it cancels the request (a 499 after body_timeout).
func TestSlowUpstreamAfterBody(t *testing.T) {
	t.Parallel()
	te := credentialtest.NewTokenEndpoint(t, "rt-0")
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		slow := time.NewTimer(time.Second) // the upstream's own latency
		defer slow.Stop()
		select {
		case <-slow.C:
			io.WriteString(w, "done")
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(api.Close)
	s := newSidecar(t, &Handler{TokenURL: te.URL(), ClientID: "c", RefreshToken: "rt-0",
		BodyOptions: BodyOptions{BodyTimeout: caddyDuration(300 * time.Millisecond)}}, hostPort(t, api.URL))

	req, _ := http.NewRequest(http.MethodPost, s.server.URL+"/slow", bytes.NewReader(make([]byte, 1000)))
	resp, body := s.do(t, req)
	if resp.StatusCode != http.StatusOK || string(body) != "done" {
		t.Errorf("POST with an upstream slower than body_timeout = %d %q; want 200 \"done\"", resp.StatusCode, body)
	}
}
