package integration_test

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// tapIdleTimeout bounds the wait for a client's connections to close once
// the client is done; past it the tap closes them itself.
const tapIdleTimeout = 10 * time.Second

// wireTap is a TCP relay on a kernel-chosen loopback port in front of the
// sidecar that parses both directions of every connection as the bytes pass,
// unchanged: the request heads a client sent, and every response the client
// was sent, interim (1xx) ones included. Client libraries hide interim
// responses (Python's http.client and Java's HttpClient skip them), so the
// wire is where "the client saw exactly one 100 Continue" is checked.
type wireTap struct {
	ln     net.Listener
	target string
	relays sync.WaitGroup // accept loop and connection goroutines

	mu    sync.Mutex // guards conns
	conns []*tappedConn
}

// tappedConn is what one client connection carried.
type tappedConn struct {
	done chan struct{} // closed when both directions are over

	client, server net.Conn

	mu        sync.Mutex // guards requests and responses
	requests  []*http.Request
	responses []wireResponse
}

// wireResponse is one final response and the interim responses before it.
type wireResponse struct {
	interim []int // 1xx status codes, in order
	status  int   // the final status; 0 when none came
}

// wireExchange pairs a request head with what came back for it.
type wireExchange struct {
	req  *http.Request // head only: Method, URL, Header, ContentLength, TransferEncoding
	resp wireResponse
}

func (e wireExchange) String() string {
	return fmt.Sprintf("%s %s (Content-Length %d, Transfer-Encoding %q, Expect %q): interim %v, final %d",
		e.req.Method, e.req.URL.Path, e.req.ContentLength, e.req.TransferEncoding, e.req.Header.Get("Expect"),
		e.resp.interim, e.resp.status)
}

// continues counts the 100 Continue responses of the exchange.
func (e wireExchange) continues() int {
	n := 0
	for _, code := range e.resp.interim {
		if code == http.StatusContinue {
			n++
		}
	}
	return n
}

// newWireTap relays connections to target until the test ends.
func newWireTap(t *testing.T, target string) *wireTap {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tap := &wireTap{ln: ln, target: target}
	tap.relays.Add(1)
	go tap.accept()
	t.Cleanup(func() {
		ln.Close()
		tap.closeConns()
		tap.relays.Wait()
	})
	return tap
}

// URL is the base URL that clients use instead of the sidecar's.
func (tap *wireTap) URL() string { return "http://" + tap.ln.Addr().String() }

func (tap *wireTap) accept() {
	defer tap.relays.Done()
	for {
		client, err := tap.ln.Accept()
		if err != nil {
			return // closed
		}
		server, err := net.DialTimeout("tcp", tap.target, 5*time.Second)
		if err != nil {
			client.Close()
			continue
		}
		c := &tappedConn{done: make(chan struct{}), client: client, server: server}
		tap.mu.Lock()
		tap.conns = append(tap.conns, c)
		tap.mu.Unlock()
		tap.relays.Add(1)
		go func() {
			defer tap.relays.Done()
			c.relay()
		}()
	}
}

// relay copies both directions, each through a parser, passing a half
// close on (a client may finish sending before it reads), and closes both
// sockets when both directions are over or one of them broke.
func (c *tappedConn) relay() {
	defer close(c.done)
	var parsers sync.WaitGroup
	pass := func(dst, src net.Conn, parse func(io.Reader)) error {
		pr, pw := io.Pipe()
		parsers.Add(1)
		go func() {
			defer parsers.Done()
			parse(pr)
			_, _ = io.Copy(io.Discard, pr) // whatever did not parse
		}()
		_, err := io.Copy(dst, io.TeeReader(src, pw))
		pw.Close()
		if err == nil {
			err = dst.(*net.TCPConn).CloseWrite()
		}
		return err
	}
	errs := make(chan error, 2)
	go func() { errs <- pass(c.server, c.client, c.parseRequests) }()
	go func() { errs <- pass(c.client, c.server, c.parseResponses) }()
	for range 2 {
		if err := <-errs; err != nil {
			c.close() // a reset or a closed socket: end the other direction too
		}
	}
	c.close()
	parsers.Wait()
}

func (c *tappedConn) close() {
	c.client.Close()
	c.server.Close()
}

func (c *tappedConn) parseRequests(r io.Reader) {
	br := bufio.NewReader(r)
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		c.mu.Lock()
		c.requests = append(c.requests, req)
		c.mu.Unlock()
		if _, err := io.Copy(io.Discard, req.Body); err != nil {
			return
		}
	}
}

func (c *tappedConn) parseResponses(r io.Reader) {
	br := bufio.NewReader(r)
	var interim []int
	for {
		// nil request: bodies framed as for a GET; no client here sends HEAD.
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			if !errors.Is(err, io.EOF) || len(interim) > 0 {
				c.record(wireResponse{interim: interim}) // interim responses, then nothing
			}
			return
		}
		if resp.StatusCode < 200 && resp.StatusCode != http.StatusSwitchingProtocols {
			interim = append(interim, resp.StatusCode)
			continue
		}
		c.record(wireResponse{interim: interim, status: resp.StatusCode})
		interim = nil
		if _, err := io.Copy(io.Discard, resp.Body); err != nil {
			return
		}
	}
}

func (c *tappedConn) record(r wireResponse) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.responses = append(c.responses, r)
}

// exchanges waits until every connection so far is over (closing those
// still open after tapIdleTimeout: a client that was killed has no use for
// them), forgets them, and returns the exchanges whose path is under
// prefix, in order.
func (tap *wireTap) exchanges(t *testing.T, prefix string) []wireExchange {
	t.Helper()
	tap.mu.Lock()
	conns := tap.conns
	tap.conns = nil
	tap.mu.Unlock()
	deadline := time.Now().Add(tapIdleTimeout)
	var got []wireExchange
	for _, c := range conns {
		select {
		case <-c.done:
		case <-time.After(time.Until(deadline)):
			t.Errorf("a connection to the sidecar was still open %s after the client was done; closing it", tapIdleTimeout)
			c.close()
			<-c.done
		}
		c.mu.Lock()
		for i, req := range c.requests {
			if !strings.HasPrefix(req.URL.Path, prefix) {
				continue
			}
			e := wireExchange{req: req}
			if i < len(c.responses) {
				e.resp = c.responses[i]
			}
			got = append(got, e)
		}
		c.mu.Unlock()
	}
	return got
}

// closeConns ends every connection still being relayed.
func (tap *wireTap) closeConns() {
	tap.mu.Lock()
	defer tap.mu.Unlock()
	for _, c := range tap.conns {
		c.close()
	}
}
