package oauth2upstream

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

// BenchmarkZeroCopy is what zero_copy_min's default is chosen from: POSTs
// through oauth2_upstream and reverse_proxy (expect_continue_timeout 1s)
// to an upstream that reads bodies whole, on loopback and over a link with
// 20 ms of round trip added (a relay that holds every segment 10 ms each
// way). bare: reverse_proxy alone; kept: zero_copy_min off, the body kept
// for a replay and sent at once, as before; zero_copy: the body sent after
// the upstream's 100 Continue, one round trip later, and not kept. The
// three run side by side in one process.
//
//	go test -run '^$' -bench BenchmarkZeroCopy -count 5
func BenchmarkZeroCopy(b *testing.B) {
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Length", strconv.Itoa(len(benchAnswer)))
		w.Write(benchAnswer)
	}))
	b.Cleanup(upstream.Close)
	handlers := map[string]*Handler{
		"kept": newBenchHandler(b, func(h *Handler) { h.ZeroCopyMin = -1 }),
		"zero_copy": newBenchHandler(b, func(h *Handler) {
			h.ZeroCopyMin = 1
		}),
	}
	// What provisioning judges of a server whose reverse_proxy waits for
	// the 100 (judgeExpectHops); the benchmark's handler has no server.
	handlers["zero_copy"].zeroCopyReady = true
	for _, link := range []struct {
		name string
		rtt  time.Duration
	}{{"loopback", 0}, {"rtt_20ms", 20 * time.Millisecond}} {
		addr := upstream.Listener.Addr().String()
		if link.rtt > 0 {
			addr = startDelayRelay(b, addr, link.rtt/2)
		}
		proxy := newBenchProxy(b, addr, &reverseproxy.HTTPTransport{ExpectContinueTimeout: caddy.Duration(time.Second)})
		viaProxy := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
			return proxy.ServeHTTP(w, r, answer1KiB)
		})
		for _, size := range []int{16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20} {
			for _, mode := range []string{"bare", "kept", "zero_copy"} {
				var mw caddyhttp.MiddlewareHandler = noopMiddleware{}
				if h, ok := handlers[mode]; ok {
					mw = h
				}
				b.Run(fmt.Sprintf("%s/POST_%dKiB/%s", link.name, size>>10, mode), func(b *testing.B) {
					w := newBenchWriter()
					req := newBenchRequest(http.MethodPost, "http://127.0.0.1/api", size)
					b.SetBytes(int64(size))
					for b.Loop() {
						w.reset()
						if err := mw.ServeHTTP(w, req.next(w), viaProxy); err != nil || w.status != http.StatusOK {
							b.Fatalf("ServeHTTP() = %v, status %d; want 200", err, w.status)
						}
					}
				})
			}
		}
	}
}

// startDelayRelay relays TCP connections to target, holding every segment
// for delay in each direction: a link with 2*delay of round trip and no
// bandwidth limit. It returns its loopback address.
func startDelayRelay(b *testing.B, target string, delay time.Duration) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex // guards conns
		conns []net.Conn // closed at the end: the proxy keeps idle ones open
	)
	b.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", target)
			if err != nil {
				in.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, in, out)
			mu.Unlock()
			wg.Go(func() { delayCopy(out, in, delay) })
			wg.Go(func() { delayCopy(in, out, delay) })
		}
	})
	return ln.Addr().String()
}

// delayCopy copies src to dst, each segment delay after it was read, and
// closes both at the end.
func delayCopy(dst, src net.Conn, delay time.Duration) {
	type segment struct {
		data []byte
		at   time.Time
	}
	segments := make(chan segment, 4096)
	go func() {
		defer close(segments)
		for {
			buf := make([]byte, 32<<10)
			n, err := src.Read(buf)
			if n > 0 {
				segments <- segment{data: buf[:n], at: time.Now().Add(delay)}
			}
			if err != nil {
				return
			}
		}
	}()
	defer dst.Close()
	defer src.Close()
	timer := time.NewTimer(0)
	for s := range segments {
		if wait := time.Until(s.at); wait > 0 {
			timer.Reset(wait)
			<-timer.C
		}
		if _, err := dst.Write(s.data); err != nil {
			return
		}
	}
}
