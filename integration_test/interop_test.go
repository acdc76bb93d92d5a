package integration_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"github.com/oauth2upstream/caddy-oauth2-upstream/integration_test/authserver"
	"github.com/oauth2upstream/caddy-oauth2-upstream/integration_test/resourceserver"
	"github.com/oauth2upstream/caddy-oauth2-upstream/integration_test/sidecar"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore/file"
)

// interopBodySize is the size of every POST body: past the 1 MiB
// replay_memory default, so a replay is read back partly from the
// temporary file, and past the 1 MiB above which curl sends
// "Expect: 100-continue" of its own accord.
const interopBodySize = 3 << 20

// interopCase is one request that every client makes.
type interopCase struct {
	method string
	name   string // the subtest: client/method/name
	// framing is how the client library frames the body: one of the
	// framing constants, the scripts' CASE argument.
	framing string
	// stale: the stored access token was revoked, so the upstream answers
	// 401 and the sidecar refreshes and replays the request. Otherwise
	// the token is accepted and nothing is refreshed.
	stale bool
}

var interopCases = []interopCase{
	{method: http.MethodGet, name: "before-refresh", framing: framingNone},
	{method: http.MethodGet, name: "after-refresh", framing: framingNone, stale: true},
	{method: http.MethodPost, name: "content-length-before-refresh", framing: framingContentLength},
	{method: http.MethodPost, name: "content-length-after-refresh", framing: framingContentLength, stale: true},
	{method: http.MethodPost, name: "chunked-before-refresh", framing: framingChunked},
	{method: http.MethodPost, name: "chunked-after-refresh", framing: framingChunked, stale: true},
	{method: http.MethodPost, name: "expect-before-refresh", framing: framingExpect},
	{method: http.MethodPost, name: "expect-after-refresh", framing: framingExpect, stale: true},
}

// continues is the number of 100 Continue the client must be sent: one
// when it asked for it, none otherwise.
func (c interopCase) continues() int {
	if c.framing == framingExpect {
		return 1
	}
	return 0
}

// Connectors send their calls with their own language's HTTP client, with
// its defaults: curl, Python requests, Node's fetch and http, Java's
// HttpClient, and a hand-framed reference client. Each makes a GET and
// 3 MiB POSTs framed by Content-Length, chunked, and with
// "Expect: 100-continue", each before and after a refresh with a replay,
// through an upstream that rejects a token before reading the body (as many
// APIs do; the transport waits for its 100 Continue, as the README advises).
// Every request must be answered 200 with the body byte for byte and one
// Authorization header at the upstream (invariants 1 and 3), and the
// client must be sent exactly one 100 Continue when it asked for one and
// none otherwise (RFC 9110 section 10.1.1; Caddy issue 5280: reverse_proxy
// passes the upstream's 100 on, after Go's server sent its own).
//
// A client whose runtime is missing is skipped, or failed when CI is set.
func TestInteropClients(t *testing.T) {
	body := newInteropBody(t)
	for _, client := range interopClients {
		t.Run(client.name, func(t *testing.T) {
			t.Parallel()
			command, err := client.find(t.Context())
			if err != nil {
				if os.Getenv("CI") != "" {
					t.Fatalf("%s cannot run: %v (.ci/run installs it)", client.name, err)
				}
				t.Skipf("%s cannot run: %v", client.name, err)
			}
			run := client.run
			if run == nil {
				run = runScript
			}
			env := newInteropEnv(t)
			for _, method := range []string{http.MethodGet, http.MethodPost} {
				t.Run(method, func(t *testing.T) {
					for _, tc := range interopCases {
						if tc.method != method {
							continue
						}
						t.Run(tc.name, func(t *testing.T) {
							keySet := unsafeName.ReplaceAllString(client.name+"-"+tc.name, "-")
							env.storeKeySet(t, keySet, tc.stale)
							req := interopRequest{framing: tc.framing, url: env.tap.URL() + "/" + keySet + "/upload", bodyFile: body.file}
							res := run(t.Context(), command, req)
							exchanges := env.tap.exchanges(t, "/"+keySet+"/")
							if res.Unsupported != "" {
								t.Skipf("%s does not make this request: %s", client.name, res.Unsupported)
							}
							env.check(t, keySet, tc, body, res, exchanges)
						})
					}
				})
			}
		})
	}
}

// interopBody is the body of every POST, kept in a file for the clients.
type interopBody struct {
	file string
	size int
	sum  [sha256.Size]byte
}

// newInteropBody writes 3 MiB of random bytes to a file.
func newInteropBody(t *testing.T) interopBody {
	t.Helper()
	data := make([]byte, interopBodySize)
	_, _ = rand.NewChaCha8([32]byte{'i', 'n', 't', 'e', 'r', 'o', 'p'}).Read(data)
	b := interopBody{file: filepath.Join(t.TempDir(), "body.bin"), size: len(data), sum: sha256.Sum256(data)}
	if err := os.WriteFile(b.file, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return b
}

// interopEnv is one client's own authorization server, upstream, sidecar
// and tap, so that clients run side by side. The sidecar takes the key set
// from the first path segment: each case has its own, stored beforehand.
type interopEnv struct {
	auth    *authserver.Server
	dir     string // the file keystore
	sidecar *sidecar.Process
	tap     *wireTap
}

func newInteropEnv(t *testing.T) *interopEnv {
	t.Helper()
	auth := newAuthServer(t, authserver.Config{AccessTokenLifespan: time.Minute})
	api := newResourceServer(t, auth)
	api.RejectBeforeBody(true)
	dir, ksOption := fileKeystore(t)
	// The API rejects before it reads the body, chunked uploads included:
	// the configuration the README gives for such an API (Expect upstream,
	// and a transport that waits for the 100). The suite runs on the
	// zero-copy path: its 3 MiB bodies are past zero_copy_min (its default,
	// spelled out), so a rejected one is replayed from the client's
	// connection and an accepted one streams after the upstream's 100.
	sc := startSidecar(t, spec{
		auth: auth, upstream: hostport(api.URL()), keystore: ksOption,
		options: []string{"key_set {http.request.uri.path.0}", "key_set_allow [a-z0-9-]+", "upstream_expect on", "zero_copy_min 1MiB"},
		proxy:   "transport http {\nexpect_continue_timeout 5s\n}",
	})
	return &interopEnv{auth: auth, dir: dir, sidecar: sc, tap: newWireTap(t, sc.Addr)}
}

// storeKeySet stores key set name with an access token the upstream
// accepts, or, when stale, with one a later refresh revoked, as
// storeStaleKeySet does. Neither has an expiry: only a 401 makes the
// sidecar refresh.
func (env *interopEnv) storeKeySet(t *testing.T, name string, stale bool) {
	t.Helper()
	if stale {
		storeStaleKeySet(t, env.auth, env.dir, name)
		return
	}
	conf := &oauth2.Config{
		ClientID: authserver.DefaultClientID, ClientSecret: authserver.DefaultClientSecret,
		Endpoint: oauth2.Endpoint{TokenURL: env.auth.TokenURL(), AuthStyle: oauth2.AuthStyleInHeader},
	}
	ctx := context.WithValue(t.Context(), oauth2.HTTPClient, &http.Client{Timeout: 10 * time.Second})
	tok, err := conf.TokenSource(ctx, &oauth2.Token{RefreshToken: seedToken(t, env.auth)}).Token()
	if err != nil {
		t.Fatalf("grant: %v", err)
	}
	ks := &keystore.KeySet{Name: name, Generation: 1, UpdatedAt: time.Now().Add(-time.Hour).UTC(), Token: keystore.Token{},
		Client: &keystore.Binding{TokenURL: env.auth.TokenURL(), ClientID: authserver.DefaultClientID}} // the sidecar's, or it is refused
	ks.Token.SetString(keystore.FieldAccessToken, tok.AccessToken)
	ks.Token.SetString(keystore.FieldRefreshToken, tok.RefreshToken)
	ks.Token.SetString(keystore.FieldTokenType, "bearer")
	store, err := file.New(env.dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := store.Save(t.Context(), ks); err != nil {
		t.Fatalf("storing key set %q: %v", name, err)
	}
}

// check compares what the client got, what crossed the wire and what was
// stored with what case tc must come to.
func (env *interopEnv) check(t *testing.T, keySet string, tc interopCase, body interopBody, res clientResult, exchanges []wireExchange) {
	t.Helper()
	wantSize, wantSum := body.size, body.sum
	if tc.framing == framingNone {
		wantSize, wantSum = 0, sha256.Sum256(nil)
	}
	if len(exchanges) != 1 {
		t.Errorf("the client sent %d requests; want 1: %v", len(exchanges), exchanges)
	}
	for _, e := range exchanges {
		if got := e.continues(); got != tc.continues() {
			t.Errorf("the client was sent %d 100 Continue; want %d: %v", got, tc.continues(), e)
		}
		checkFraming(t, e, tc, wantSize)
	}
	if res.Continues != nil && *res.Continues != tc.continues() {
		t.Errorf("the client library reports %d 100 Continue; want %d", *res.Continues, tc.continues())
	}
	if res.err != nil {
		t.Fatalf("client: %v%s", res.err, env.sidecarErrors(keySet))
	}
	if res.Status != http.StatusOK {
		t.Fatalf("status %d, body %q; want 200%s", res.Status, truncate(res.Body, 300), env.sidecarErrors(keySet))
	}
	var echo resourceserver.Echo
	if err := json.Unmarshal([]byte(res.Body), &echo); err != nil {
		t.Fatalf("decoding the resource server's answer %q: %v", truncate(res.Body, 300), err)
	}
	if echo.Method != tc.method || echo.Length != int64(wantSize) || echo.SHA256 != hex.EncodeToString(wantSum[:]) {
		t.Errorf("resource server received %s with %d bytes, sha256 %s; want %s with %d bytes, sha256 %x",
			echo.Method, echo.Length, echo.SHA256, tc.method, wantSize, wantSum)
	}
	if echo.AuthorizationCount != 1 {
		t.Errorf("resource server saw %d Authorization headers; want 1", echo.AuthorizationCount)
	}
	wantGeneration := int64(1)
	if tc.stale {
		wantGeneration = 2 // one refresh
	}
	if ks, _ := readKeySet(t, env.dir, keySet); ks.Generation != wantGeneration {
		t.Errorf("stored generation %d; want %d", ks.Generation, wantGeneration)
	}
}

// sidecarErrors returns the sidecar's error log lines about key set
// name's requests, which tell a failure's cause (tokens are never logged).
func (env *interopEnv) sidecarErrors(keySet string) string {
	data, err := os.ReadFile(env.sidecar.LogPath)
	if err != nil {
		return "\nreading the sidecar's log: " + err.Error()
	}
	var b strings.Builder
	for _, line := range strings.Split(string(data), "\n") {
		if strings.Contains(line, `"level":"error"`) && strings.Contains(line, `"/`+keySet+`/`) {
			b.WriteString("\nsidecar: " + truncate(line, 600))
		}
	}
	return b.String()
}

// checkFraming checks that the client framed the request as the case says,
// so that each case tests what its name claims.
func checkFraming(t *testing.T, e wireExchange, tc interopCase, size int) {
	t.Helper()
	chunked := len(e.req.TransferEncoding) > 0 && e.req.TransferEncoding[0] == "chunked"
	expect := e.req.Header.Get("Expect") != ""
	var ok bool
	switch tc.framing {
	case framingNone:
		ok = e.req.ContentLength <= 0 && !chunked && !expect
	case framingContentLength:
		ok = e.req.ContentLength == int64(size) && !expect
	case framingChunked:
		ok = chunked && !expect
	case framingExpect:
		ok = e.req.ContentLength == int64(size) && expect
	}
	if e.req.Method != tc.method || !ok {
		t.Errorf("the client sent %v; want %s framed as %s", e, tc.method, tc.framing)
	}
}
