package integration_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/oauth2upstream/caddy-oauth2-upstream/integration_test/authserver"
	"github.com/oauth2upstream/caddy-oauth2-upstream/integration_test/resourceserver"
	"github.com/oauth2upstream/caddy-oauth2-upstream/integration_test/sidecar"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
)

// tokenLifespan is the access token lifespan of most scenarios. fosite
// rounds expires_in down to whole seconds, so 3s is announced as
// expires_in 2; with expiry_skew 500ms a proactive sidecar refreshes every
// 1.5s, while the provider still accepts the old token for another 1.5s.
//
// min_refresh_interval is scaled down with them (10s against tokens of an
// hour in production): at its default every rejection of a 3s token would
// come too soon after its grant to make another.
const (
	tokenLifespan      = 3 * time.Second
	expirySkew         = 500 * time.Millisecond
	minRefreshInterval = 250 * time.Millisecond
)

// minTokenLife is the credential engine's: a token with less left counts
// as expired, so it is refreshed by then whatever the skew.
const minTokenLife = time.Second

// refreshWindow is when the sidecar refreshes a token granted at granted
// (zero: unknown) that expires at expiry, with expiry_skew skew: the skew,
// at most half the lifetime, before the expiry, each generation at its own
// point down to half of that (the engine's spread), and in any case once
// less than minTokenLife is left.
func refreshWindow(granted, expiry time.Time, skew time.Duration) (earliest, latest time.Time) {
	if !granted.IsZero() {
		skew = min(skew, expiry.Sub(granted)/2)
	}
	return expiry.Add(-max(skew, minTokenLife)), expiry.Add(-max(skew/2, minTokenLife))
}

// keySetName is the key set every scenario uses unless it says otherwise.
const keySetName = "default"

func newAuthServer(t *testing.T, cfg authserver.Config) *authserver.Server {
	t.Helper()
	if cfg.AccessTokenLifespan == 0 {
		cfg.AccessTokenLifespan = tokenLifespan
	}
	s, err := authserver.New(cfg)
	if err != nil {
		t.Fatalf("authserver.New() = %v", err)
	}
	registerAuthServer(s)
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("authserver Close() = %v", err)
		}
	})
	return s
}

func newResourceServer(t *testing.T, auth *authserver.Server) *resourceserver.Server {
	t.Helper()
	rs, err := resourceserver.New(auth.IntrospectURL(), authserver.ResourceServerClientID, authserver.ResourceServerClientSecret)
	if err != nil {
		t.Fatalf("resourceserver.New() = %v", err)
	}
	t.Cleanup(func() {
		if err := rs.Close(); err != nil {
			t.Errorf("resourceserver Close() = %v", err)
		}
	})
	return rs
}

// seedToken mints the refresh token a user's consent would have produced.
func seedToken(t *testing.T, auth *authserver.Server) string {
	t.Helper()
	rt, err := auth.Seed(t.Context(), authserver.DefaultClientID, "api", "refresh_token")
	if err != nil {
		t.Fatalf("Seed() = %v", err)
	}
	return rt
}

// spec describes one sidecar of a scenario.
type spec struct {
	auth *authserver.Server
	// upstream is reverse_proxy's upstream: host:port or a placeholder.
	upstream string
	// keystore is the keystore option's value: "file <dir>" or a redis block.
	keystore string
	// options are further oauth2_upstream lines (refresh, expiry_skew, ...);
	// without a min_refresh_interval line, minRefreshInterval is set.
	options []string
	// proxy is the body of the reverse_proxy block.
	proxy string
	// seed is the refresh token given as {env.SEED}; "" for none.
	seed string
	// port is the port to serve on; 0 lets the kernel choose.
	port int
	// client is the OAuth2 client; nil: DefaultClientID.
	client *authserver.Client
	// tokenURL, when set, replaces auth's token endpoint (another server's).
	tokenURL string
	// env is added to the sidecar's environment (NAME=value).
	env []string
}

var logSeq atomic.Int64

// unsafeName keeps a test name usable in a file name.
var unsafeName = regexp.MustCompile(`[^A-Za-z0-9_.-]+`)

// newSidecar prepares (without starting) a sidecar for s, its log kept for
// the suite's leak check, its process stopped when the test ends.
func newSidecar(t *testing.T, s spec) *sidecar.Process {
	t.Helper()
	client := authserver.Client{ID: authserver.DefaultClientID, Secret: authserver.DefaultClientSecret}
	if s.client != nil {
		client = *s.client
	}
	tokenURL := s.tokenURL
	if tokenURL == "" {
		tokenURL = s.auth.TokenURL()
	}
	lines := []string{
		"token_url " + tokenURL,
		"client_id " + client.ID,
		"client_secret {env.CLIENT_SECRET}",
		"keystore " + s.keystore,
	}
	if s.seed != "" {
		lines = append(lines, "refresh_token {env.SEED}")
	}
	if !slices.ContainsFunc(s.options, func(o string) bool { return strings.HasPrefix(o, "min_refresh_interval ") }) {
		lines = append(lines, "min_refresh_interval "+minRefreshInterval.String())
	}
	lines = append(lines, s.options...)
	name := fmt.Sprintf("%03d-%s.log", logSeq.Add(1), unsafeName.ReplaceAllString(t.Name(), "_"))
	p, err := sidecar.New(sidecar.Options{
		Bin:      caddyBin,
		Dir:      t.TempDir(),
		Port:     s.port,
		Handler:  strings.Join(lines, "\n"),
		Upstream: s.upstream,
		Proxy:    s.proxy,
		Env:      append([]string{"CLIENT_SECRET=" + client.Secret, "SEED=" + s.seed}, s.env...),
		Debug:    true,
		LogPath:  filepath.Join(logDir, name),
	})
	if err != nil {
		t.Fatalf("sidecar.New() = %v", err)
	}
	t.Cleanup(func() {
		if err := p.Stop(); err != nil {
			t.Errorf("stopping the sidecar on %s: %v", p.Addr, err)
		}
	})
	return p
}

// startSidecar prepares and starts a sidecar.
func startSidecar(t *testing.T, s spec) *sidecar.Process {
	t.Helper()
	p := newSidecar(t, s)
	mustStart(t, p)
	return p
}

func mustStart(t *testing.T, p *sidecar.Process) {
	t.Helper()
	if err := p.Start(t.Context()); err != nil {
		t.Fatalf("starting the sidecar: %v", err)
	}
}

// fileKeystore makes a keystore directory and returns the keystore option
// naming it.
func fileKeystore(t *testing.T) (dir, option string) {
	dir = filepath.Join(t.TempDir(), "keystore")
	return dir, "file " + dir
}

// readKeySet decodes the stored document of key set name, failing the test
// when it is missing or does not decode (a torn write would not).
func readKeySet(t *testing.T, dir, name string) (*keystore.KeySet, []byte) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, name+".json"))
	if err != nil {
		t.Fatalf("reading key set %q: %v", name, err)
	}
	ks, err := keystore.JSONCodec{}.Decode(name, data)
	if err != nil {
		t.Fatalf("decoding key set %q: %v\n%s", name, err, data)
	}
	return ks, data
}

// newClient returns a client with its own connection pool, closed when the
// test ends, that never uses a proxy.
func newClient(t *testing.T, conns int) *http.Client {
	t.Helper()
	tr := &http.Transport{
		Proxy:               nil,
		MaxIdleConns:        conns,
		MaxIdleConnsPerHost: conns,
		IdleConnTimeout:     30 * time.Second,
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

// response is what a client got.
type response struct {
	status int
	header http.Header
	body   []byte
	err    error
}

func do(c *http.Client, req *http.Request) response {
	resp, err := c.Do(req)
	if err != nil {
		return response{err: err}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return response{status: resp.StatusCode, header: resp.Header, body: body, err: err}
}

func get(c *http.Client, url string) response {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return response{err: err}
	}
	return do(c, req)
}

func (r response) String() string {
	if r.err != nil {
		return "error " + r.err.Error()
	}
	return fmt.Sprintf("%d %s", r.status, truncate(string(r.body), 300))
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

// echo decodes the resource server's 200 answer.
func (r response) echo(t *testing.T) resourceserver.Echo {
	t.Helper()
	var e resourceserver.Echo
	if err := json.Unmarshal(r.body, &e); err != nil {
		t.Fatalf("decoding the resource server's answer %s: %v", r, err)
	}
	return e
}

// problem is the sidecar's RFC 9457 error answer.
type problem struct {
	Status     int    `json:"status"`
	Detail     string `json:"detail"`
	KeySet     string `json:"key_set"`
	OAuthError string `json:"oauth_error"`
}

// problem decodes a problem+json answer, failing the test for anything else.
func (r response) problem(t *testing.T) problem {
	t.Helper()
	if ct := r.header.Get("Content-Type"); ct != "application/problem+json" {
		t.Fatalf("answer %s has Content-Type %q; want application/problem+json", r, ct)
	}
	var p problem
	if err := json.Unmarshal(r.body, &p); err != nil {
		t.Fatalf("decoding problem %s: %v", r, err)
	}
	return p
}

// waitFor polls cond every 10ms until it holds, failing the test after timeout.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, timeout)
		}
		select {
		case <-t.Context().Done():
			t.Fatalf("%s: %v", what, t.Context().Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// tally counts the outcomes of a stream of requests.
type tally struct {
	mu       sync.Mutex // guards the fields below
	total    int
	byStatus map[int]int
	errors   []string
	others   []string // answers other than 200, first few
}

func (ta *tally) add(r response) {
	ta.mu.Lock()
	defer ta.mu.Unlock()
	ta.total++
	if ta.byStatus == nil {
		ta.byStatus = map[int]int{}
	}
	switch {
	case r.err != nil:
		if len(ta.errors) < 5 {
			ta.errors = append(ta.errors, r.err.Error())
		}
		ta.byStatus[0]++
	default:
		ta.byStatus[r.status]++
		if r.status != http.StatusOK && len(ta.others) < 5 {
			ta.others = append(ta.others, r.String())
		}
	}
}

// allOK reports whether every request was answered 200, and describes the
// outcomes otherwise.
func (ta *tally) allOK() (bool, string) {
	ta.mu.Lock()
	defer ta.mu.Unlock()
	ok := ta.total > 0 && ta.byStatus[http.StatusOK] == ta.total
	return ok, fmt.Sprintf("%d requests, by status %v (0: transport error), errors %q, other answers %q",
		ta.total, ta.byStatus, ta.errors, ta.others)
}

func (ta *tally) count() int {
	ta.mu.Lock()
	defer ta.mu.Unlock()
	return ta.total
}

// introspect asks the authorization server, as the resource server does,
// whether accessToken is active.
func introspect(t *testing.T, auth *authserver.Server, accessToken string) bool {
	t.Helper()
	form := url.Values{"token": {accessToken}, "token_type_hint": {"access_token"}}
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, auth.IntrospectURL(), strings.NewReader(form.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(authserver.ResourceServerClientID, authserver.ResourceServerClientSecret)
	r := do(http.DefaultClient, req)
	if r.err != nil || r.status != http.StatusOK {
		t.Fatalf("introspection: %s", r)
	}
	var answer struct {
		Active bool `json:"active"`
	}
	if err := json.Unmarshal(r.body, &answer); err != nil {
		t.Fatalf("introspection answer %s: %v", r, err)
	}
	return answer.Active
}
