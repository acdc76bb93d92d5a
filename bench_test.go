package oauth2upstream

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore/file"
)

// Benchmarks of the handler's own cost: the fast path (a valid
// token, no replay) against a no-op middleware and in front of Caddy's
// reverse_proxy against reverse_proxy alone, and the replay buffer's tee,
// rewind and replay. The end-to-end comparison of the built binary is the
// bench module's (cd bench && go run ./cmd/bench).
//
//	go test -run '^$' -bench . -benchmem

// serverHeader is what Caddy's server puts in every response header before
// any handler runs (caddyhttp.Server.ServeHTTP), so the header map a handler
// sees is never empty.
var benchServerHeader = []string{"Caddy"}

// benchWriter is a reusable ResponseWriter that keeps nothing, so that a
// benchmark's allocations are the handler's.
type benchWriter struct {
	header http.Header
	status int
}

func newBenchWriter() *benchWriter { return &benchWriter{header: make(http.Header)} }

// reset makes the writer look like Caddy's for a new request.
func (w *benchWriter) reset() {
	clear(w.header)
	w.header["Server"] = benchServerHeader
	w.status = 0
}

func (w *benchWriter) Header() http.Header { return w.header }

func (w *benchWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return len(p), nil
}

func (w *benchWriter) WriteHeader(status int) {
	if w.status == 0 {
		w.status = status
	}
}

// SetReadDeadline is there because Caddy's writer has it (through
// http.ResponseController); without it every body_timeout update would
// allocate an ErrNotSupported error that Caddy never makes.
func (w *benchWriter) SetReadDeadline(time.Time) error { return nil }

// newBenchHandler provisions a Handler whose file keystore holds a valid,
// long-lived access token, so that ServeHTTP takes the fast path. The token
// endpoint is never asked.
func newBenchHandler(b *testing.B, configure ...func(*Handler)) *Handler {
	b.Helper()
	dir := b.TempDir()
	store, err := file.New(dir)
	if err != nil {
		b.Fatal(err)
	}
	raw, _ := json.Marshal(map[string]string{"backend": "file", "path": dir})
	h := &Handler{TokenURL: "http://127.0.0.1:9/token", ClientID: "bench", KeystoreRaw: raw}
	for _, c := range configure {
		c(h)
	}
	ks := &keystore.KeySet{Name: defaultKeySet, Generation: 1, UpdatedAt: time.Now().UTC(),
		Expiry: time.Now().Add(24 * time.Hour).UTC(), Token: keystore.Token{},
		Client: &keystore.Binding{TokenURL: h.TokenURL, ClientID: h.ClientID}} // the handler's own
	ks.Token.SetString(keystore.FieldAccessToken, "bench-access-token")
	ks.Token.SetString(keystore.FieldRefreshToken, "bench-refresh-token")
	if err := store.Save(context.Background(), ks); err != nil {
		b.Fatal(err)
	}

	provisionMu.Lock()
	defer provisionMu.Unlock()
	ctx, err := caddy.ProvisionContext(adminOff())
	if err != nil {
		b.Fatalf("ProvisionContext() = %v", err)
	}
	if err := h.Provision(ctx); err != nil {
		b.Fatalf("Provision() = %v", err)
	}
	if err := h.Validate(); err != nil {
		b.Fatalf("Validate() = %v", err)
	}
	b.Cleanup(func() { h.Cleanup() })
	return h
}

// benchRequest is a request that each iteration re-arms with a fresh
// replacer and body, as Caddy's server does for every request.
type benchRequest struct {
	base *http.Request
	body []byte
	rd   *bytes.Reader
	rc   io.ReadCloser
}

func newBenchRequest(method, target string, bodySize int) *benchRequest {
	br := &benchRequest{base: httptest.NewRequest(method, target, nil), body: bytes.Repeat([]byte("x"), bodySize)}
	br.rd = bytes.NewReader(br.body)
	br.rc = io.NopCloser(br.rd)
	return br
}

// next prepares the request for one iteration: a fresh replacer and vars
// (caddyhttp.PrepareRequest, the same for every variant) and a rewound body.
func (br *benchRequest) next(w http.ResponseWriter) *http.Request {
	r := caddyhttp.PrepareRequest(br.base, caddy.NewReplacer(), w, benchCaddyServer)
	if len(br.body) > 0 {
		br.rd.Reset(br.body)
		r.Body, r.ContentLength = br.rc, int64(len(br.body))
	}
	return r
}

var benchCaddyServer = &caddyhttp.Server{}

// noopMiddleware is the baseline of BenchmarkMiddleware: a handler that
// passes the request on and does nothing else.
type noopMiddleware struct{}

func (noopMiddleware) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	return next.ServeHTTP(w, r)
}

// staticHeader is the other baseline: a middleware that sets a fixed
// Authorization header, as nginx's proxy_set_header does. Next to it, the
// handler's own cost shows apart from what any added header costs the
// proxy (its request clone, its logging, the upstream's parsing).
type staticHeader struct{}

var benchStaticAuthorization = "Bearer bench-access-token"

func (staticHeader) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	r.Header.Set("Authorization", benchStaticAuthorization)
	return next.ServeHTTP(w, r)
}

// answer1KiB is a trivial next handler: it reads the body, as an upstream
// would, and answers 1 KiB.
var answer1KiB = caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
	if r.Body != nil {
		io.Copy(io.Discard, r.Body)
	}
	w.WriteHeader(http.StatusOK)
	_, err := w.Write(benchAnswer)
	return err
})

var benchAnswer = make([]byte, 1<<10)

// BenchmarkMiddleware isolates the handler: ServeHTTP with a trivial next,
// against a middleware that only calls next and one that sets a static
// header. The difference in allocs/op is what the handler allocates per
// request (target: at most 3 more than bare).
func BenchmarkMiddleware(b *testing.B) {
	h := newBenchHandler(b)
	for _, bc := range []struct {
		name     string
		mw       caddyhttp.MiddlewareHandler
		method   string
		bodySize int
	}{
		{name: "noop/GET", mw: noopMiddleware{}, method: http.MethodGet},
		{name: "static_header/GET", mw: staticHeader{}, method: http.MethodGet},
		{name: "oauth2_upstream/GET", mw: h, method: http.MethodGet},
		{name: "noop/POST_1KiB", mw: noopMiddleware{}, method: http.MethodPost, bodySize: 1 << 10},
		{name: "static_header/POST_1KiB", mw: staticHeader{}, method: http.MethodPost, bodySize: 1 << 10},
		{name: "oauth2_upstream/POST_1KiB", mw: h, method: http.MethodPost, bodySize: 1 << 10},
	} {
		b.Run(bc.name, func(b *testing.B) {
			w := newBenchWriter()
			req := newBenchRequest(bc.method, "http://127.0.0.1/api", bc.bodySize)
			b.ReportAllocs()
			for b.Loop() {
				w.reset()
				if err := bc.mw.ServeHTTP(w, req.next(w), answer1KiB); err != nil || w.status != http.StatusOK {
					b.Fatalf("ServeHTTP() = %v, status %d; want 200", err, w.status)
				}
			}
		})
	}
}

// BenchmarkProxy is the fast path in front of Caddy's real reverse_proxy to
// a loopback upstream, against reverse_proxy alone and behind a static
// header, in the same process and with the same request preparation. Its
// allocs/op include the in-process upstream's.
func BenchmarkProxy(b *testing.B) {
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Length", strconv.Itoa(len(benchAnswer)))
		w.Write(benchAnswer)
	}))
	b.Cleanup(upstream.Close)
	h := newBenchHandler(b)
	proxy := newBenchProxy(b, upstream.Listener.Addr().String())
	viaProxy := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		return proxy.ServeHTTP(w, r, answer1KiB)
	})
	for _, bc := range []struct {
		name     string
		mw       caddyhttp.MiddlewareHandler
		method   string
		bodySize int
	}{
		{name: "reverse_proxy/GET", mw: noopMiddleware{}, method: http.MethodGet},
		{name: "static_header+reverse_proxy/GET", mw: staticHeader{}, method: http.MethodGet},
		{name: "oauth2_upstream+reverse_proxy/GET", mw: h, method: http.MethodGet},
		{name: "reverse_proxy/POST_64KiB", mw: noopMiddleware{}, method: http.MethodPost, bodySize: 64 << 10},
		{name: "static_header+reverse_proxy/POST_64KiB", mw: staticHeader{}, method: http.MethodPost, bodySize: 64 << 10},
		{name: "oauth2_upstream+reverse_proxy/POST_64KiB", mw: h, method: http.MethodPost, bodySize: 64 << 10},
	} {
		b.Run(bc.name, func(b *testing.B) {
			w := newBenchWriter()
			req := newBenchRequest(bc.method, "http://127.0.0.1/api", bc.bodySize)
			b.ReportAllocs()
			for b.Loop() {
				w.reset()
				if err := bc.mw.ServeHTTP(w, req.next(w), viaProxy); err != nil || w.status != http.StatusOK {
					b.Fatalf("ServeHTTP() = %v, status %d; want 200", err, w.status)
				}
			}
		})
	}
}

func newBenchProxy(b *testing.B, upstream string, transport ...*reverseproxy.HTTPTransport) *reverseproxy.Handler {
	b.Helper()
	provisionMu.Lock()
	defer provisionMu.Unlock()
	ctx, err := caddy.ProvisionContext(adminOff())
	if err != nil {
		b.Fatalf("ProvisionContext() = %v", err)
	}
	proxy := &reverseproxy.Handler{Upstreams: reverseproxy.UpstreamPool{{Dial: upstream}}}
	if len(transport) > 0 {
		proxy.TransportRaw = caddyconfig.JSONModuleObject(transport[0], "protocol", "http", nil)
	}
	if err := proxy.Provision(ctx); err != nil {
		b.Fatalf("provisioning reverse_proxy: %v", err)
	}
	b.Cleanup(func() { proxy.Cleanup() })
	return proxy
}

// BenchmarkUpstreamExpect is the price of upstream_expect: POSTs through
// oauth2_upstream and reverse_proxy (expect_continue_timeout 1s, as the
// shipped configurations set it) to a loopback upstream that reads bodies
// whole, with "Expect: 100-continue" sent upstream (on) and without (off);
// auto, the default, is "on" for requests whose client sent Expect. Each on/off pair runs side by side in one process.
//
//	go test -run '^$' -bench BenchmarkUpstreamExpect -count 6
func BenchmarkUpstreamExpect(b *testing.B) {
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Length", strconv.Itoa(len(benchAnswer)))
		w.Write(benchAnswer)
	}))
	b.Cleanup(upstream.Close)
	proxy := newBenchProxy(b, upstream.Listener.Addr().String(),
		&reverseproxy.HTTPTransport{ExpectContinueTimeout: caddy.Duration(time.Second)})
	viaProxy := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		return proxy.ServeHTTP(w, r, answer1KiB)
	})
	handlers := map[string]*Handler{
		"on":  newBenchHandler(b, func(h *Handler) { h.UpstreamExpect = "on" }),
		"off": newBenchHandler(b, func(h *Handler) { h.UpstreamExpect = "off" }),
	}
	for _, size := range []int{4 << 10, 64 << 10, 1 << 20} {
		for _, mode := range []string{"off", "on"} {
			b.Run(fmt.Sprintf("POST_%dKiB/upstream_expect_%s", size>>10, mode), func(b *testing.B) {
				w := newBenchWriter()
				req := newBenchRequest(http.MethodPost, "http://127.0.0.1/api", size)
				for b.Loop() {
					w.reset()
					if err := handlers[mode].ServeHTTP(w, req.next(w), viaProxy); err != nil || w.status != http.StatusOK {
						b.Fatalf("ServeHTTP() = %v, status %d; want 200", err, w.status)
					}
				}
			})
		}
	}
}

// BenchmarkReplayBody is the cost of keeping a body for a replay while it
// streams to the first attempt (tee), and of a replay (tee, then rewind
// and read it all again), against reading the body with no copy kept.
// Reads are 32 KiB, as the proxy's transport does. 4 MiB spills past the
// default replay_memory (1 MiB) into the temporary file.
func BenchmarkReplayBody(b *testing.B) {
	for _, size := range []int{64 << 10, 1 << 20, 4 << 20} {
		body := bytes.Repeat([]byte("0123456789abcdef"), size/16)
		buf := make([]byte, 32<<10)
		name := strconv.Itoa(size>>10) + "KiB"
		b.Run("stream/"+name, func(b *testing.B) {
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for b.Loop() {
				drain(b, bytes.NewReader(body), buf)
			}
		})
		b.Run("tee/"+name, func(b *testing.B) {
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for b.Loop() {
				rb := newBenchReplayBody(body)
				drain(b, rb, buf)
				rb.release()
			}
		})
		b.Run("tee+rewind+replay/"+name, func(b *testing.B) {
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for b.Loop() {
				rb := newBenchReplayBody(body)
				drain(b, rb, buf)
				replay, err := rb.rewind()
				if err != nil {
					b.Fatalf("rewind() = %v", err)
				}
				if n := drain(b, replay, buf); n != int64(size) {
					b.Fatalf("replay read %d bytes; want %d", n, size)
				}
				rb.release()
			}
		})
	}
}

func newBenchReplayBody(body []byte) *replayBody {
	r := &http.Request{Body: io.NopCloser(bytes.NewReader(body)), ContentLength: int64(len(body))}
	return newReplayBody(r, defaultReplayMemory, defaultMaxReplayBody, []string{"Authorization"})
}

// drain reads r to its end in len(buf) reads, as io.Copy would without the
// WriterTo and ReaderFrom shortcuts.
func drain(b *testing.B, r io.Reader, buf []byte) int64 {
	var n int64
	for {
		m, err := r.Read(buf)
		n += int64(m)
		if err == io.EOF {
			return n
		}
		if err != nil {
			b.Fatalf("Read() = %v", err)
		}
	}
}
