package oauth2upstream

import (
	"bytes"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/oauth2upstream/caddy-oauth2-upstream/credential/credentialtest"
)

// A client that sends its own credential or DPoP proof as a request
// trailer, or a DPoP header, does not get it to the upstream: only the
// injected header carries a credential.
func TestCredentialTrailerIsRemoved(t *testing.T) {
	t.Parallel()
	te := credentialtest.NewTokenEndpoint(t, "rt-0")
	type request struct{ Header, Trailer http.Header }
	seen := make(chan request, 1)
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		seen <- request{r.Header.Clone(), r.Trailer.Clone()}
	}))
	t.Cleanup(api.Close)
	s := newSidecar(t, &Handler{TokenURL: te.URL(), ClientID: "c", RefreshToken: "rt-0"}, hostPort(t, api.URL))

	body := &trailerBody{Reader: strings.NewReader("payload")}
	req, _ := http.NewRequest(http.MethodPost, s.server.URL+"/up", body)
	req.ContentLength = -1 // chunked: trailers follow the body
	req.Header.Set("DPoP", "the-clients-own-proof")
	req.Trailer = http.Header{"Authorization": nil, "Dpop": nil, "X-Checksum": nil}
	body.done = func() {
		req.Trailer.Set("Authorization", "Bearer the-clients-own")
		req.Trailer.Set("DPoP", "the-clients-own-proof")
		req.Trailer.Set("X-Checksum", "abc")
	}
	if resp, out := s.do(t, req); resp.StatusCode != http.StatusOK {
		t.Fatalf("POST = %d %s; want 200", resp.StatusCode, out)
	}
	got := <-seen
	for _, owned := range []string{"Authorization", "DPoP"} {
		if v := got.Trailer.Values(owned); len(v) != 0 {
			t.Errorf("upstream got %s trailer %q; want none", owned, v)
		}
	}
	if v := got.Header.Values("DPoP"); len(v) != 0 {
		t.Errorf("upstream got the client's DPoP header %q; want none (no dpop configured)", v)
	}

	if got.Trailer.Get("X-Checksum") != "abc" {
		t.Errorf("upstream got trailers %v; want X-Checksum kept", got.Trailer)
	}
}

// trailerBody calls done at EOF, when a client sets its trailers.
type trailerBody struct {
	io.Reader
	done func()
}

func (b *trailerBody) Read(p []byte) (int, error) {
	n, err := b.Reader.Read(p)
	if err == io.EOF && b.done != nil {
		b.done()
		b.done = nil
	}
	return n, err
}

// A 64 MiB 401 body is not held: it streams to the client unreplayed,
// counted as not_replayable, and the handler's heap stays far below it.
func TestLargeTriggerBodyIsNotHeld(t *testing.T) {
	t.Parallel()
	const size = 64 << 20
	te := credentialtest.NewTokenEndpoint(t, "rt-0")
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusUnauthorized)
		chunk := bytes.Repeat([]byte("x"), 32<<10)
		for range size / len(chunk) {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	}))
	t.Cleanup(api.Close)
	s := newSidecar(t, &Handler{TokenURL: te.URL(), ClientID: "c", RefreshToken: "rt-0"}, hostPort(t, api.URL))

	resp, err := http.Get(s.server.URL + "/big")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var peak uint64
	n, err := io.Copy(io.Discard, &heapWatch{Reader: resp.Body, peak: &peak})
	if err != nil || n != size || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("GET = %d with %d bytes, %v; want the upstream's 401 with all %d bytes", resp.StatusCode, n, err, size)
	}
	t.Logf("heap in use peaked at %d MiB while a 64 MiB 401 streamed", peak>>20)
	if peak > 48<<20 {
		t.Errorf("heap peaked at %d MiB while a 64 MiB 401 streamed; want it not held", peak>>20)
	}
	if got := te.Grants.Load(); got != 1 {
		t.Errorf("grants = %d; want 1 (no refresh for an answer that could not be replayed)", got)
	}
	series := `caddy_oauth2_upstream_replays_total{key_set="default",outcome="not_replayable"}`
	if v, ok := sample(scrape(t, s.ctx.GetMetricsRegistry()), series); !ok || v != 1 {
		t.Errorf("%s = %v (present %v); want 1", series, v, ok)
	}
}

// heapWatch samples the heap as the client reads.
type heapWatch struct {
	io.Reader
	peak  *uint64
	reads int
}

func (h *heapWatch) Read(p []byte) (int, error) {
	if h.reads++; h.reads%64 == 0 {
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		*h.peak = max(*h.peak, m.HeapInuse)
	}
	return h.Reader.Read(p)
}

// body_timeout moves the read deadline only within the server's own read
// timeout: a client trickling its body is cut off by the server's 1s
// ReadTimeout, not kept alive by body_timeout's 30s idle allowance.
func TestBodyTimeoutKeepsServerReadTimeout(t *testing.T) {
	t.Parallel()
	te := credentialtest.NewTokenEndpoint(t, "rt-0")
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
	}))
	t.Cleanup(api.Close)
	s := newSidecarWithProxy(t, &Handler{TokenURL: te.URL(), ClientID: "c", RefreshToken: "rt-0", BodyOptions: BodyOptions{BodyTimeout: caddyDuration(30 * time.Second)}},
		&reverseproxy.Handler{Upstreams: reverseproxy.UpstreamPool{{Dial: hostPort(t, api.URL)}}},
		func(srv *http.Server) { srv.ReadTimeout, srv.ReadHeaderTimeout = time.Second, 100*time.Millisecond })

	conn, err := net.Dial("tcp", s.server.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	io.WriteString(conn, "POST /slow HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
	start := time.Now()
	cutOff := false
	for range 50 { // a byte every 100ms: never idle for long, 5s in all
		if _, err := io.WriteString(conn, "1\r\nx\r\n"); err != nil {
			cutOff = true
			break
		}
		time.Sleep(100 * time.Millisecond) // the client's own pace
	}
	io.WriteString(conn, "0\r\n\r\n")
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	answer, _ := io.ReadAll(conn)
	took := time.Since(start)
	if !cutOff && strings.HasPrefix(string(answer), "HTTP/1.1 200") {
		t.Fatalf("a body trickled for %s was accepted (%q); want it cut off by the server's 1s ReadTimeout", took, answer)
	}
}

// A zero in the Caddyfile would silently become the default: it is refused,
// naming the option, or means "off" where the option says so.
func TestCaddyfileZeros(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, option, want string
	}{
		{name: "max_replay_body", option: "max_replay_body 0", want: "max_replay_body: must be a positive size, or off"},
		{name: "replay_memory", option: "replay_memory 0", want: "replay_memory: must be a positive size"},
		{name: "expiry_skew", option: "expiry_skew 0s", want: "expiry_skew must be a positive duration"},
		{name: "max_wait", option: "max_wait 0s", want: "max_wait must be a positive duration"},
		{name: "token_timeout", option: "token_timeout 0", want: "token_timeout must be a positive duration"},
		{name: "body_timeout", option: "body_timeout 0s", want: "body_timeout must be a positive duration"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var h Handler
			err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser("oauth2_upstream {\n " + tt.option + "\n}"))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("UnmarshalCaddyfile(%q) = %v; want an error containing %q", tt.option, err, tt.want)
			}
		})
	}
	var h Handler
	if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser("oauth2_upstream {\n max_replay_body off\n body_timeout off\n}")); err != nil ||
		h.MaxReplayBody != -1 || h.BodyTimeout != -1 {
		t.Errorf("off = max_replay_body %d, body_timeout %d, %v; want -1, -1", h.MaxReplayBody, h.BodyTimeout, err)
	}
}

// A credential header that Caddy does not redact is refused while
// reverse_proxy logs at debug level: its "upstream roundtrip" lines would
// print the token.
func TestHeaderRefusedWhenReverseProxyLogsDebug(t *testing.T) {
	t.Parallel()
	var cfg caddy.Config
	// A discard writer would make Caddy drop the log: a file it is.
	logFile := jsonString(t.TempDir() + "/debug.log")
	err := json.Unmarshal([]byte(`{"admin":{"disabled":true},"logging":{"logs":{"rp":{"level":"DEBUG","writer":{"output":"file","filename":`+logFile+`},
		"include":["http.handlers.reverse_proxy"]}}}}`), &cfg)
	if err != nil {
		t.Fatal(err)
	}
	provisionMu.Lock()
	ctx, err := caddy.ProvisionContext(&cfg)
	provisionMu.Unlock()
	if err != nil {
		t.Fatalf("ProvisionContext() = %v", err)
	}
	tests := []struct {
		header  string
		wantErr bool
	}{
		{header: "X-Api-Key", wantErr: true},
		{header: "Authorization"},
	}
	for _, tt := range tests {
		h := &Handler{TokenURL: "https://login.example.com/token", ClientID: "c", HeaderName: tt.header,
			KeystoreRaw: json.RawMessage(`{"backend":"file","path":` + jsonString(t.TempDir()) + `}`)}
		err := h.Provision(ctx)
		if (err != nil) != tt.wantErr {
			t.Errorf("Provision() with header %s and a debug reverse_proxy log = %v; want error %v", tt.header, err, tt.wantErr)
		}
		if err == nil {
			h.Cleanup()
		}
	}
}

func jsonString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// TRACE is refused with a 405 problem, before any token is loaded: the
// upstream would echo the injected credential back to the client. With
// allow_trace it goes upstream.
func TestTraceRefused(t *testing.T) {
	t.Parallel()
	te := credentialtest.NewTokenEndpoint(t, "rt-0")
	api := newAPIServer(t, "Bearer at-1")
	s := newSidecar(t, &Handler{TokenURL: te.URL(), ClientID: "c", RefreshToken: "rt-0"}, hostPort(t, api.server.URL))
	req, _ := http.NewRequest(http.MethodTrace, s.server.URL+"/echo", nil)
	resp, body := s.do(t, req)
	if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Content-Type") != "application/problem+json" {
		t.Errorf("TRACE = %d %s (%s); want 405 application/problem+json", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	if strings.Contains(string(body), "at-1") || te.Grants.Load() != 0 || len(api.seen()) != 0 {
		t.Errorf("TRACE: body %s, %d grants, %d upstream requests; want no token, no grant, nothing upstream", body, te.Grants.Load(), len(api.seen()))
	}

	te2 := credentialtest.NewTokenEndpoint(t, "rt-0")
	allowed := newSidecar(t, &Handler{TokenURL: te2.URL(), ClientID: "c", RefreshToken: "rt-0", AllowTrace: true}, hostPort(t, api.server.URL))
	req, _ = http.NewRequest(http.MethodTrace, allowed.server.URL+"/echo", nil)
	if resp, body := allowed.do(t, req); resp.StatusCode != http.StatusOK {
		t.Errorf("TRACE with allow_trace = %d (%s); want 200 from the upstream", resp.StatusCode, body)
	}
}

// The connect page's cookies (an operator's browser sends them to every
// port of the host: cookies are not port-scoped) never reach the upstream;
// the client's own cookies do, in order.
func TestConnectCookiesAreNotProxied(t *testing.T) {
	t.Parallel()
	te := credentialtest.NewTokenEndpoint(t, "rt-0")
	seen := make(chan []string, 2)
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen <- r.Header.Values("Cookie")
	}))
	t.Cleanup(api.Close)
	s := newSidecar(t, &Handler{TokenURL: te.URL(), ClientID: "c", RefreshToken: "rt-0"}, hostPort(t, api.URL))
	tests := []struct {
		name   string
		cookie string
		want   []string
	}{
		{"mixed", "a=1; oauth2_upstream_csrf_x=secret; __Host-oauth2_upstream_flow_x=state; b=2", []string{"a=1; b=2"}},
		{"only the page's", "oauth2_upstream_csrf_x=secret", nil},
	}
	for _, tt := range tests {
		req, _ := http.NewRequest(http.MethodGet, s.server.URL+"/x", nil)
		req.Header.Set("Cookie", tt.cookie)
		if resp, body := s.do(t, req); resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: GET = %d %s", tt.name, resp.StatusCode, body)
		}
		if got := <-seen; !slices.Equal(got, tt.want) {
			t.Errorf("%s: upstream got Cookie %q; want %q", tt.name, got, tt.want)
		}
	}
}
