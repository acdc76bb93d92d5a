package integration_test

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"github.com/oauth2upstream/caddy-oauth2-upstream/integration_test/authserver"
	"github.com/oauth2upstream/caddy-oauth2-upstream/integration_test/resourceserver"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore/file"
)

// Body sizes of the replay scenario: empty, one byte, a small upload, and
// one past the 1 MiB replay_memory default, so it is replayed from the
// temporary file.
var replaySizes = []int{0, 1, 64 << 10, 5 << 20}

// rawTimeout bounds one raw request, 5 MiB upload and replay included.
const rawTimeout = 60 * time.Second

// Scenario 2: request bodies of 0 B, 1 B, 64 KiB and 5 MiB, framed by
// Content-Length or chunked, with and without Expect: 100-continue, reach
// the resource server byte for byte after its 401 (invariant 3). Each case
// has its own key set whose stored access token is stale (a real one, that
// a later refresh revoked), so its first attempt meets a 401, the sidecar
// refreshes once and replays.
//
// Two upstreams: one that reads the whole body before it checks the token,
// and one that rejects before reading it (as many APIs do); for the latter,
// as the README says, reverse_proxy waits for the upstream's 100 Continue
// (expect_continue_timeout), and the cases send Expect: 100-continue.
func TestReplayedBodiesArriveByteIdentical(t *testing.T) {
	tests := []struct {
		name        string
		rejectEarly bool
		proxy       string
		expect      []bool
	}{
		{name: "upstream reads the body first", expect: []bool{false, true}},
		{
			name: "upstream rejects before reading", rejectEarly: true, expect: []bool{true},
			proxy: "transport http {\nexpect_continue_timeout 5s\n}",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			auth := newAuthServer(t, authserver.Config{AccessTokenLifespan: time.Minute})
			api := newResourceServer(t, auth)
			api.RejectBeforeBody(tt.rejectEarly)
			dir, ksOption := fileKeystore(t)
			sc := startSidecar(t, spec{
				auth: auth, upstream: hostport(api.URL()), keystore: ksOption, proxy: tt.proxy,
				options: []string{"key_set {http.request.header.X-Key-Set}", "key_set_allow [a-z0-9-]+"},
			})
			n := 0
			for _, expect := range tt.expect {
				for _, chunked := range []bool{false, true} {
					for _, size := range replaySizes {
						n++
						name := fmt.Sprintf("case-%d", n)
						label := fmt.Sprintf("%d bytes, chunked %t, Expect %t", size, chunked, expect)
						t.Run(label, func(t *testing.T) {
							storeStaleKeySet(t, auth, dir, name)
							checkReplay(t, sc.Addr, api, dir, name, size, chunked, expect)
						})
					}
				}
			}
		})
	}
}

// storeStaleKeySet stores key set name holding a live refresh token and a
// revoked access token, with no expiry: only a 401 can tell it is stale.
func storeStaleKeySet(t *testing.T, auth *authserver.Server, dir, name string) {
	t.Helper()
	conf := &oauth2.Config{
		ClientID: authserver.DefaultClientID, ClientSecret: authserver.DefaultClientSecret,
		Endpoint: oauth2.Endpoint{TokenURL: auth.TokenURL(), AuthStyle: oauth2.AuthStyleInHeader},
	}
	ctx := context.WithValue(t.Context(), oauth2.HTTPClient, &http.Client{Timeout: 10 * time.Second})
	first, err := conf.TokenSource(ctx, &oauth2.Token{RefreshToken: seedToken(t, auth)}).Token()
	if err != nil {
		t.Fatalf("first grant: %v", err)
	}
	// The next refresh revokes the first access token (and spends the
	// refresh token it came with).
	second, err := conf.TokenSource(ctx, &oauth2.Token{RefreshToken: first.RefreshToken}).Token()
	if err != nil {
		t.Fatalf("second grant: %v", err)
	}
	if introspect(t, auth, first.AccessToken) {
		t.Fatalf("the first access token is still active after a refresh; want revoked")
	}
	// Stored an hour ago: a token that has been in use for a while, whose
	// rejection makes a grant (min_refresh_interval).
	ks := &keystore.KeySet{Name: name, Generation: 1, UpdatedAt: time.Now().Add(-time.Hour).UTC(), Token: keystore.Token{},
		Client: &keystore.Binding{TokenURL: auth.TokenURL(), ClientID: authserver.DefaultClientID}} // the sidecar's, or it is refused
	ks.Token.SetString(keystore.FieldAccessToken, first.AccessToken)
	ks.Token.SetString(keystore.FieldRefreshToken, second.RefreshToken)
	ks.Token.SetString(keystore.FieldTokenType, "bearer")
	store, err := file.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := store.Save(t.Context(), ks); err != nil {
		t.Fatalf("storing key set %q: %v", name, err)
	}
}

// checkReplay sends one body through the sidecar and checks that it arrived
// whole after exactly one 401 and one grant.
func checkReplay(t *testing.T, addr string, api *resourceserver.Server, dir, keySet string, size int, chunked, expect bool) {
	t.Helper()
	body := make([]byte, size)
	rng := rand.NewChaCha8([32]byte{byte(size), byte(size >> 8), byte(size >> 16)})
	_, _ = rng.Read(body)
	sum := sha256.Sum256(body)
	requests, rejected := api.Requests(), api.Unauthorized()

	r := rawPost(t, addr, keySet, body, chunked, expect)
	if r.err != nil || r.status != http.StatusOK {
		t.Fatalf("POST: %s; want 200", r)
	}
	e := r.echo(t)
	if e.Length != int64(size) || e.SHA256 != hex.EncodeToString(sum[:]) {
		t.Errorf("resource server received %d bytes, sha256 %s; want %d bytes, sha256 %x", e.Length, e.SHA256, size, sum)
	}
	if e.AuthorizationCount != 1 {
		t.Errorf("resource server saw %d Authorization headers; want 1", e.AuthorizationCount)
	}
	if got := api.Unauthorized() - rejected; got != 1 {
		t.Errorf("resource server answered 401 %d times; want 1 (the stale token)", got)
	}
	if got := api.Requests() - requests; got != 2 {
		t.Errorf("resource server saw %d requests; want 2 (the request and its replay)", got)
	}
	if ks, _ := readKeySet(t, dir, keySet); ks.Generation != 2 {
		t.Errorf("stored generation %d; want 2 (one refresh)", ks.Generation)
	}
}

// rawPost sends a POST over its own connection, framing the body exactly as
// asked: net/http's client decides framing itself (an empty chunked body,
// for one, goes out with no body at all). With expect it sends the headers,
// waits for 100 Continue, and sends no body if the final answer comes first.
func rawPost(t *testing.T, addr, keySet string, body []byte, chunked, expect bool) response {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return response{err: err}
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(rawTimeout))
	bw, br := bufio.NewWriterSize(conn, 64<<10), bufio.NewReader(conn)
	fmt.Fprintf(bw, "POST /upload HTTP/1.1\r\nHost: %s\r\nX-Key-Set: %s\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n", addr, keySet)
	if chunked {
		bw.WriteString("Transfer-Encoding: chunked\r\n")
	} else {
		fmt.Fprintf(bw, "Content-Length: %d\r\n", len(body))
	}
	if expect {
		bw.WriteString("Expect: 100-continue\r\n")
	}
	bw.WriteString("\r\n")
	if err := bw.Flush(); err != nil {
		return response{err: err}
	}
	if expect {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return response{err: fmt.Errorf("waiting for 100 Continue: %w", err)}
		}
		if resp.StatusCode != http.StatusContinue {
			return readResponse(resp) // a final answer: the body is not sent
		}
	}
	if err := writeBody(bw, body, chunked); err != nil {
		return response{err: fmt.Errorf("sending the body: %w", err)}
	}
	for {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return response{err: err}
		}
		if resp.StatusCode >= 200 {
			return readResponse(resp)
		}
	}
}

func writeBody(bw *bufio.Writer, body []byte, chunked bool) error {
	if !chunked {
		bw.Write(body)
		return bw.Flush()
	}
	const chunk = 16 << 10
	for len(body) > 0 {
		n := min(chunk, len(body))
		fmt.Fprintf(bw, "%x\r\n", n)
		bw.Write(body[:n])
		bw.WriteString("\r\n")
		body = body[n:]
	}
	bw.WriteString("0\r\n\r\n")
	return bw.Flush()
}

func readResponse(resp *http.Response) response {
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return response{status: resp.StatusCode, header: resp.Header, body: body, err: err}
}
