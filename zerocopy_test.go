package oauth2upstream

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/oauth2upstream/caddy-oauth2-upstream/credential/credentialtest"
)

// zeroCopySidecar is a sidecar whose reverse_proxy waits up to wait for
// the upstream's 100 Continue, in front of upstream, with its token aged
// so that the first attempt's at-1 is rejected and the replay carries
// at-2. The clock it returns is the handler's.
func zeroCopySidecar(t *testing.T, h *Handler, upstream string, wait time.Duration) (*sidecar, *credentialtest.Clock) {
	t.Helper()
	te := credentialtest.NewTokenEndpoint(t, "rt-0")
	h.TokenURL, h.ClientID, h.RefreshToken = te.URL(), "c", "rt-0"
	proxy := &reverseproxy.Handler{Upstreams: reverseproxy.UpstreamPool{{Dial: upstream}},
		TransportRaw: json.RawMessage(fmt.Sprintf(`{"protocol":"http","expect_continue_timeout":%d}`, wait))}
	s := newSidecarWithProxy(t, h, proxy)
	clock := credentialtest.NewClock()
	s.useClock(clock)
	s.get(t, "/warm-up") // grants at-1
	ageTokens(clock)
	return s, clock
}

// replaysCounted is the sidecar's replays_total for outcome.
func (s *sidecar) replaysCounted(t *testing.T, outcome string) float64 {
	t.Helper()
	v, _ := sample(scrape(t, s.ctx.GetMetricsRegistry()), fmt.Sprintf(`caddy_oauth2_upstream_replays_total{key_set="default",outcome=%q}`, outcome))
	return v
}

// An upstream that rejects the token before its 100 Continue gets the body
// only on the replay, read from the client's connection then: the client
// (which waits for a 100 before it sends) is asked for the body once, after
// the rejection, and the upload arrives byte for byte although it is larger
// than max_replay_body, so no copy of it could have been kept.
func TestZeroCopyReplaysUnreadBody(t *testing.T) {
	t.Parallel()
	api := newAPIServer(t, "Bearer at-1")
	api.rejectUnread = true // Go's server: a 401 before reading, Connection: close, no 100
	s, _ := zeroCopySidecar(t, &Handler{BodyOptions: BodyOptions{ZeroCopyMin: 1 << 10, MaxReplayBody: 64 << 10}},
		hostPort(t, api.server.URL), 5*time.Second)
	api.setValid("Bearer at-2")

	body := randomBytes(300<<10, 9)
	conn, err := net.Dial("tcp", s.server.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(conn, "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n", len(body))
	r := bufio.NewReader(conn)
	first, err := r.ReadString('\n')
	if err != nil || !strings.HasPrefix(first, "HTTP/1.1 100 ") {
		t.Fatalf("first line = %q, %v; want a 100 Continue", first, err)
	}
	// The client is asked for its body only once the upstream has
	// rejected the first attempt, unread.
	if seen := api.seen()[1:]; len(seen) != 1 || seen[0].Status != http.StatusUnauthorized || seen[0].Length != 0 { // after the warm-up
		t.Errorf("when the client was asked for its body the upstream had seen %+v; want one rejection, unread", seen)
	}
	if _, err := conn.Write(body); err != nil {
		t.Fatal(err)
	}
	rest, _ := io.ReadAll(r)
	answer := first + string(rest)
	if n := strings.Count(answer, "HTTP/1.1 100 "); n != 1 {
		t.Errorf("client got %d 100 Continue; want exactly 1:\n%.300s", n, answer)
	}
	sum := sha256.Sum256(body)
	if !strings.HasPrefix(strings.SplitN(answer, "\r\n", 2)[1], "\r\n") || !strings.Contains(answer, "HTTP/1.1 200 ") ||
		!strings.Contains(answer, hex.EncodeToString(sum[:])) {
		t.Errorf("answer %.300q; want 200 with the body's sha256 %x", answer, sum)
	}
	if got := s.replaysCounted(t, replayReplayed); got != 1 {
		t.Errorf("replayed = %v; want 1", got)
	}
}

// Once the upstream has asked for the body with 100 Continue, the body
// streams without a copy. An upstream that rejects the token only after
// reading it (as a server that sends 100 before it looks does) cannot be
// replayed: its 401 goes to the client, counted as not_replayable, and
// from then on the handler keeps bodies, so the next such rejection is
// replayed.
func TestZeroCopyLateRejectionKeepsBodiesAfterwards(t *testing.T) {
	t.Parallel()
	api := newAPIServer(t, "Bearer at-1") // reads the body, then answers 401
	s, clock := zeroCopySidecar(t, &Handler{BodyOptions: BodyOptions{ZeroCopyMin: 1 << 10}}, hostPort(t, api.server.URL), 5*time.Second)
	api.setValid("Bearer at-2")
	body := randomBytes(100<<10, 3)

	resp, got := s.do(t, mustRequest(t, http.MethodPost, s.server.URL+"/upload", bytes.NewReader(body)))
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("first upload = %d %s; want the upstream's 401, passed on: the body was not kept", resp.StatusCode, got)
	}
	if n := s.replaysCounted(t, replayNotReplayable); n != 1 {
		t.Errorf("not_replayable = %v; want 1", n)
	}
	if s.logs.FilterMessageSnippet("rejected a token after its 100 Continue").Len() != 1 {
		t.Errorf("no warning names the late rejection")
	}

	// The upload above refreshed to at-2; the upstream now wants at-3.
	ageTokens(clock)
	api.setValid("Bearer at-3")
	resp, got = s.do(t, mustRequest(t, http.MethodPost, s.server.URL+"/upload", bytes.NewReader(body)))
	var answer apiAnswer
	sum := sha256.Sum256(body)
	if resp.StatusCode != http.StatusOK || json.Unmarshal(got, &answer) != nil || answer.SHA256 != hex.EncodeToString(sum[:]) {
		t.Fatalf("second upload = %d %s; want 200 with sha256 %x, replayed from the kept copy", resp.StatusCode, got, sum)
	}
	if n := s.replaysCounted(t, replayReplayed); n != 1 {
		t.Errorf("replayed = %v; want 1", n)
	}
}

// An upstream that never answers Expect with 100 Continue gets the body
// when expect_continue_timeout passes, and the body is kept as before, so
// a rejection after it is replayed.
func TestZeroCopyUpstreamWithoutContinueKeepsBody(t *testing.T) {
	t.Parallel()
	up := newRawUpstream(t, false)
	s, _ := zeroCopySidecar(t, &Handler{BodyOptions: BodyOptions{ZeroCopyMin: 1 << 10}}, up, 50*time.Millisecond)
	body := randomBytes(200<<10, 5)
	resp, got := s.do(t, mustRequest(t, http.MethodPost, s.server.URL+"/upload", io.MultiReader(bytes.NewReader(body))))
	sum := sha256.Sum256(body)
	if resp.StatusCode != http.StatusOK || strings.TrimSpace(string(got)) != hex.EncodeToString(sum[:]) {
		t.Fatalf("upload = %d %s; want 200 with sha256 %x", resp.StatusCode, got, sum)
	}
}

// An upstream that rejects before its 100 but keeps the connection makes
// Go's transport send the body after the rejection anyway (to keep the
// connection in step), racing the replay for the client's body. Whoever
// wins, the replay carries the whole body, byte for byte.
func TestZeroCopyRejectionOnKeptConnection(t *testing.T) {
	t.Parallel()
	up := newRawUpstream(t, true)
	s, clock := zeroCopySidecar(t, &Handler{BodyOptions: BodyOptions{ZeroCopyMin: 1 << 10}}, up, 5*time.Second)
	for i := range 20 {
		ageTokens(clock) // each token serves one upload, then is rejected
		body := randomBytes(256<<10, byte(i))
		req := mustRequest(t, http.MethodPost, s.server.URL+"/upload", bytes.NewReader(body))
		resp, got := s.do(t, req)
		sum := sha256.Sum256(body)
		if resp.StatusCode != http.StatusOK || strings.TrimSpace(string(got)) != hex.EncodeToString(sum[:]) {
			t.Fatalf("upload %d = %d %s; want 200 with sha256 %x", i, resp.StatusCode, got, sum)
		}
	}
}

func mustRequest(t *testing.T, method, url string, body io.Reader) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	return req
}
