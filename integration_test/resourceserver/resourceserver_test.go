package resourceserver

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"github.com/oauth2upstream/caddy-oauth2-upstream/integration_test/authserver"
)

type fixture struct {
	auth   *authserver.Server
	api    *Server
	client *http.Client
}

func newFixture(t *testing.T, cfg authserver.Config) *fixture {
	t.Helper()
	auth, err := authserver.New(cfg)
	if err != nil {
		t.Fatalf("authserver.New() = %v", err)
	}
	t.Cleanup(func() { auth.Close() })
	api, err := New(auth.IntrospectURL(), authserver.ResourceServerClientID, authserver.ResourceServerClientSecret)
	if err != nil {
		t.Fatalf("New() = %v", err)
	}
	t.Cleanup(func() {
		if err := api.Close(); err != nil {
			t.Errorf("Close() = %v", err)
		}
	})
	transport := &http.Transport{ExpectContinueTimeout: 5 * time.Second}
	t.Cleanup(transport.CloseIdleConnections)
	return &fixture{auth: auth, api: api, client: &http.Client{Transport: transport, Timeout: 10 * time.Second}}
}

// token seeds a grant and refreshes it with x/oauth2, as the sidecar would.
func (f *fixture) token(t *testing.T) *oauth2.Token {
	t.Helper()
	seed, err := f.auth.Seed(t.Context(), authserver.DefaultClientID, "api")
	if err != nil {
		t.Fatalf("Seed() = %v", err)
	}
	conf := &oauth2.Config{
		ClientID:     authserver.DefaultClientID,
		ClientSecret: authserver.DefaultClientSecret,
		Endpoint:     oauth2.Endpoint{TokenURL: f.auth.TokenURL(), AuthStyle: oauth2.AuthStyleInHeader},
	}
	ctx := context.WithValue(t.Context(), oauth2.HTTPClient, f.client)
	tok, err := conf.TokenSource(ctx, &oauth2.Token{RefreshToken: seed}).Token()
	if err != nil {
		t.Fatalf("refresh() = %v", err)
	}
	return tok
}

func (f *fixture) do(t *testing.T, method, path string, body io.Reader, authorization ...string) *http.Response {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, f.api.URL()+path, body)
	if err != nil {
		t.Fatalf("NewRequest() = %v", err)
	}
	for _, a := range authorization {
		req.Header.Add("Authorization", a)
	}
	resp, err := f.client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

func decodeEcho(t *testing.T, resp *http.Response) Echo {
	t.Helper()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status = %d; want 200", resp.StatusCode)
	}
	var echo Echo
	if err := json.NewDecoder(resp.Body).Decode(&echo); err != nil {
		t.Fatalf("decode echo: %v", err)
	}
	return echo
}

func randomBody(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatalf("rand.Read() = %v", err)
	}
	return b
}

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// Scenario: an active token gets the request echoed: method, path, body
// digest and the number of credentials that arrived.
func TestActiveTokenEchoesRequest(t *testing.T) {
	t.Parallel()
	f := newFixture(t, authserver.Config{})
	tok := f.token(t)
	body := randomBody(t, 300<<10)

	echo := decodeEcho(t, f.do(t, http.MethodPost, "/v1/things?x=1", bytes.NewReader(body), "Bearer "+tok.AccessToken))
	want := Echo{Method: "POST", Path: "/v1/things", Query: "x=1", SHA256: sha256Hex(body), Length: int64(len(body)), AuthorizationCount: 1}
	if echo != want {
		t.Errorf("echo = %+v; want %+v", echo, want)
	}
	if got := f.api.Requests(); got != 1 {
		t.Errorf("Requests() = %d; want 1", got)
	}
	if got := f.api.Unauthorized(); got != 0 {
		t.Errorf("Unauthorized() = %d; want 0", got)
	}
}

// Scenario: a second Authorization header is counted, so tests can prove the
// sidecar sends exactly one credential (design invariant 1).
func TestAuthorizationHeadersAreCounted(t *testing.T) {
	t.Parallel()
	f := newFixture(t, authserver.Config{})
	tok := f.token(t)
	echo := decodeEcho(t, f.do(t, http.MethodGet, "/", nil, "Bearer "+tok.AccessToken, "Bearer stale"))
	if echo.AuthorizationCount != 2 {
		t.Errorf("authorization_count = %d; want 2", echo.AuthorizationCount)
	}
}

// Scenario: requests without an active access token get 401 and a Bearer
// challenge (RFC 6750 section 3).
func TestUnauthorized(t *testing.T) {
	t.Parallel()
	f := newFixture(t, authserver.Config{})
	tok := f.token(t)
	tests := []struct {
		name          string
		authorization []string
		wantChallenge string
	}{
		{"no credentials", nil, `Bearer realm="resourceserver"`},
		{"basic credentials", []string{"Basic dXNlcjpwYXNz"}, `Bearer realm="resourceserver"`},
		{"unknown token", []string{"Bearer ory_at_nope.nope"}, `Bearer realm="resourceserver", error="invalid_token"`},
		{"refresh token as bearer", []string{"Bearer " + tok.RefreshToken}, `Bearer realm="resourceserver", error="invalid_token"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := f.do(t, http.MethodGet, "/", nil, tt.authorization...)
			if resp.StatusCode != http.StatusUnauthorized {
				t.Fatalf("status = %d; want 401", resp.StatusCode)
			}
			if got := resp.Header.Get("WWW-Authenticate"); got != tt.wantChallenge {
				t.Errorf("WWW-Authenticate = %q; want %q", got, tt.wantChallenge)
			}
		})
	}
	if got, want := f.api.Unauthorized(), len(tests); got != want {
		t.Errorf("Unauthorized() = %d; want %d", got, want)
	}
}

// Scenario: nothing is cached; a token revoked between two requests is
// refused on the second one.
func TestEveryRequestIsIntrospected(t *testing.T) {
	t.Parallel()
	f := newFixture(t, authserver.Config{})
	tok := f.token(t)
	bearer := "Bearer " + tok.AccessToken
	decodeEcho(t, f.do(t, http.MethodGet, "/", nil, bearer))

	if err := f.auth.Revoke(t.Context(), tok.RefreshToken); err != nil {
		t.Fatalf("Revoke() = %v", err)
	}
	if resp := f.do(t, http.MethodGet, "/", nil, bearer); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("status after revoke = %d; want 401", resp.StatusCode)
	}
}

// Scenario: an access token is refused once its lifespan is over, which is
// what makes the sidecar refresh.
func TestExpiredTokenIsRefused(t *testing.T) {
	t.Parallel()
	const lifespan = time.Second
	f := newFixture(t, authserver.Config{AccessTokenLifespan: lifespan})
	issued := time.Now()
	bearer := "Bearer " + f.token(t).AccessToken

	deadline := issued.Add(lifespan + 5*time.Second)
	ticker := time.NewTicker(50 * time.Millisecond)
	defer ticker.Stop()
	for {
		resp := f.do(t, http.MethodGet, "/", nil, bearer)
		if resp.StatusCode == http.StatusUnauthorized {
			break
		}
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status = %d; want 200 then 401", resp.StatusCode)
		}
		if time.Now().After(deadline) {
			t.Fatalf("token still accepted %v after issue; want 401 after about %v", time.Since(issued), lifespan)
		}
		<-ticker.C
	}
	if f.api.Requests() < 2 {
		t.Errorf("Requests() = %d; want the token accepted at least once before expiry", f.api.Requests())
	}
}

// Scenario: the API keeps refusing even a freshly refreshed token, so the
// sidecar must give the 401 back after one replay (design invariant 2).
func TestAlwaysUnauthorized(t *testing.T) {
	t.Parallel()
	f := newFixture(t, authserver.Config{})
	bearer := "Bearer " + f.token(t).AccessToken

	f.api.AlwaysUnauthorized(true)
	resp := f.do(t, http.MethodGet, "/", nil, bearer)
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("status with AlwaysUnauthorized = %d; want 401", resp.StatusCode)
	}
	if got, want := resp.Header.Get("WWW-Authenticate"), `error="invalid_token"`; !strings.Contains(got, want) {
		t.Errorf("WWW-Authenticate = %q; want it to contain %q", got, want)
	}
	f.api.AlwaysUnauthorized(false)
	decodeEcho(t, f.do(t, http.MethodGet, "/", nil, bearer))
}

// Scenario: an API that wants another scheme than Bearer (Zoho's
// Zoho-oauthtoken) takes the token under it, in any case, refuses it as
// Bearer, and names its scheme in the challenge.
func TestScheme(t *testing.T) {
	t.Parallel()
	f := newFixture(t, authserver.Config{})
	token := f.token(t).AccessToken
	f.api.Scheme("Zoho-oauthtoken")
	tests := []struct {
		name          string
		authorization string
		wantStatus    int
	}{
		{"the scheme", "Zoho-oauthtoken " + token, http.StatusOK},
		{"the scheme, lower case", "zoho-oauthtoken " + token, http.StatusOK},
		{"Bearer", "Bearer " + token, http.StatusUnauthorized},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := f.do(t, http.MethodGet, "/", nil, tt.authorization)
			if resp.StatusCode != tt.wantStatus {
				t.Fatalf("status = %d; want %d", resp.StatusCode, tt.wantStatus)
			}
			if got, want := resp.Header.Get("WWW-Authenticate"), `Zoho-oauthtoken realm="resourceserver"`; tt.wantStatus == http.StatusUnauthorized && got != want {
				t.Errorf("WWW-Authenticate = %q; want %q", got, want)
			}
		})
	}
}

// readSpy records whether anything read the body.
type readSpy struct {
	r    io.Reader
	read atomic.Bool
}

func (s *readSpy) Read(p []byte) (int, error) {
	s.read.Store(true)
	return s.r.Read(p)
}

// Scenario: with RejectBeforeBody the 401 comes before the body is read, so
// the sidecar has to replay a body that the first attempt never sent.
func TestRejectBeforeBody(t *testing.T) {
	t.Parallel()
	f := newFixture(t, authserver.Config{})
	f.api.RejectBeforeBody(true)

	t.Run("chunked body never sent", func(t *testing.T) {
		// The client never writes the body: the 401 can only arrive if the
		// server answers without reading it.
		pr, pw := io.Pipe()
		defer pw.Close()
		resp := f.do(t, http.MethodPost, "/", pr, "Bearer ory_at_nope.nope")
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("status = %d; want 401", resp.StatusCode)
		}
	})
	t.Run("Expect 100-continue body not sent", func(t *testing.T) {
		body := &readSpy{r: bytes.NewReader(randomBody(t, 64<<10))}
		req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, f.api.URL()+"/", body)
		if err != nil {
			t.Fatalf("NewRequest() = %v", err)
		}
		req.ContentLength = 64 << 10
		req.Header.Set("Expect", "100-continue")
		req.Header.Set("Authorization", "Bearer ory_at_nope.nope")
		resp, err := f.client.Do(req)
		if err != nil {
			t.Fatalf("POST: %v", err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("status = %d; want 401", resp.StatusCode)
		}
		if body.read.Load() {
			t.Errorf("request body was read; want it never sent (no 100 Continue)")
		}
	})
	t.Run("large body cut off mid-upload", func(t *testing.T) {
		// The client is still writing when the 401 arrives and the server
		// hangs up; net/http's lingering close lets the answer through.
		resp := f.do(t, http.MethodPost, "/", bytes.NewReader(randomBody(t, 8<<20)), "Bearer ory_at_nope.nope")
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("status = %d; want 401", resp.StatusCode)
		}
	})
	t.Run("active token still gets the whole body", func(t *testing.T) {
		payload := randomBody(t, 300<<10)
		echo := decodeEcho(t, f.do(t, http.MethodPut, "/upload", bytes.NewReader(payload), "Bearer "+f.token(t).AccessToken))
		if echo.SHA256 != sha256Hex(payload) || echo.Length != int64(len(payload)) {
			t.Errorf("echo = %d bytes, sha256 %s; want %d bytes, %s", echo.Length, echo.SHA256, len(payload), sha256Hex(payload))
		}
	})
}

// Scenario: when introspection itself fails, the API answers 503, not 401,
// so that the sidecar does not spend a refresh token over it.
func TestIntrospectionFailureIsNotUnauthorized(t *testing.T) {
	t.Parallel()
	f := newFixture(t, authserver.Config{})
	tok := f.token(t)
	wrongCredentials, err := New(f.auth.IntrospectURL(), authserver.ResourceServerClientID, "wrong")
	if err != nil {
		t.Fatalf("New() = %v", err)
	}
	defer wrongCredentials.Close()

	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, wrongCredentials.URL()+"/", nil)
	if err != nil {
		t.Fatalf("NewRequest() = %v", err)
	}
	req.Header.Set("Authorization", "Bearer "+tok.AccessToken)
	resp, err := f.client.Do(req)
	if err != nil {
		t.Fatalf("GET: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("status = %d; want 503", resp.StatusCode)
	}
	if got := wrongCredentials.Unauthorized(); got != 0 {
		t.Errorf("Unauthorized() = %d; want 0", got)
	}
}
