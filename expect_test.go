package oauth2upstream

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/oauth2upstream/caddy-oauth2-upstream/credential/credentialtest"
)

// A client that sends "Expect: 100-continue" gets exactly one "100
// Continue", replays included: the upstream's own 100s (one per attempt)
// are not passed on. A strict client, which waits for the 100 before it
// sends its body, is served.
func TestOneContinuePerRequest(t *testing.T) {
	t.Parallel()
	te := credentialtest.NewTokenEndpoint(t, "rt-0")
	api := newAPIServer(t, "Bearer at-2") // at-1 is rejected: one refresh, one replay
	s := newSidecar(t, &Handler{TokenURL: te.URL(), ClientID: "c", RefreshToken: "rt-0"}, hostPort(t, api.server.URL))
	clock := credentialtest.NewClock()
	s.useClock(clock)
	if _, err := s.handler.engine.Current(context.Background(), "default"); err != nil { // grants at-1
		t.Fatal(err)
	}
	ageTokens(clock)

	conn, err := net.Dial("tcp", s.server.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	body := bytes.Repeat([]byte("b"), 100_000)
	fmt.Fprintf(conn, "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n", len(body))
	r := bufio.NewReader(conn)
	first, err := r.ReadString('\n')
	if err != nil || !strings.HasPrefix(first, "HTTP/1.1 100 ") {
		t.Fatalf("first line = %q, %v; want a 100 Continue before the body is sent", first, err)
	}
	if _, err := conn.Write(body); err != nil {
		t.Fatal(err)
	}
	rest, _ := io.ReadAll(r)
	answer := first + string(rest)
	if n := strings.Count(answer, "HTTP/1.1 100 "); n != 1 {
		t.Errorf("client got %d 100 Continue; want exactly 1:\n%s", n, answer)
	}
	if !strings.Contains(answer, "HTTP/1.1 200 ") {
		t.Errorf("answer %q; want 200 after the refresh and the replay", answer)
	}
	if got := te.Grants.Load(); got != 2 {
		t.Errorf("grants = %d; want 2 (the seed's first token, one refresh)", got)
	}
}

// upstream_expect and zero_copy_min decide whether Expect goes upstream,
// whatever the client sent: auto sends it when the client asked, or the
// body is at least zero_copy_min (of unknown length counts as large), but
// zero_copy_min only with a reverse_proxy that waits for the 100 (noWait:
// one without expect_continue_timeout).
func TestUpstreamExpect(t *testing.T) {
	t.Parallel()
	tests := []struct {
		mode        string
		zeroCopyMin int64 // 0: the default
		chunked     bool
		clientAsks  bool
		noWait      bool
		wantUpExpct bool
	}{
		{mode: "auto", chunked: true, wantUpExpct: true},
		{mode: "auto", chunked: true, noWait: true},
		{mode: "auto", zeroCopyMin: 7, noWait: true},
		{mode: "auto", clientAsks: true, noWait: true, wantUpExpct: true},
		{mode: "auto", chunked: true, zeroCopyMin: -1},
		{mode: "auto", clientAsks: true, wantUpExpct: true},
		{mode: "auto", clientAsks: true, zeroCopyMin: -1, wantUpExpct: true},
		{mode: "auto"}, // 7 bytes, below the default
		{mode: "auto", zeroCopyMin: 7, wantUpExpct: true}, // at zero_copy_min
		{mode: "auto", zeroCopyMin: 8},
		{mode: "on", wantUpExpct: true},
		{mode: "on", chunked: true, wantUpExpct: true},
		{mode: "off", chunked: true, clientAsks: true},
	}
	for _, tt := range tests {
		name := fmt.Sprintf("%s/zero_copy_min=%d/chunked=%v/client_expect=%v/no_wait=%v", tt.mode, tt.zeroCopyMin, tt.chunked, tt.clientAsks, tt.noWait)
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			te := credentialtest.NewTokenEndpoint(t, "rt-0")
			seen := make(chan string, 1)
			up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				io.Copy(io.Discard, r.Body)
				seen <- r.Header.Get("Expect")
			}))
			t.Cleanup(up.Close)
			proxy := &reverseproxy.Handler{Upstreams: reverseproxy.UpstreamPool{{Dial: hostPort(t, up.URL)}}}
			if !tt.noWait {
				proxy.TransportRaw = json.RawMessage(`{"protocol":"http","expect_continue_timeout":5000000000}`)
			}
			s := newSidecarWithProxy(t, &Handler{TokenURL: te.URL(), ClientID: "c", RefreshToken: "rt-0", BodyOptions: BodyOptions{UpstreamExpect: tt.mode, ZeroCopyMin: tt.zeroCopyMin}}, proxy)
			var reader io.Reader = strings.NewReader("payload")
			if tt.chunked {
				reader = io.MultiReader(reader) // no length known: chunked
			}
			req, _ := http.NewRequest(http.MethodPost, s.server.URL+"/x", reader)
			if tt.clientAsks {
				req.Header.Set("Expect", "100-continue")
			}
			if resp, body := s.do(t, req); resp.StatusCode != http.StatusOK {
				t.Fatalf("POST = %d %s", resp.StatusCode, body)
			}
			if got := <-seen; (got == "100-continue") != tt.wantUpExpct {
				t.Errorf("upstream got Expect %q; want it sent: %v", got, tt.wantUpExpct)
			}
		})
	}
}
