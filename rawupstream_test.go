package oauth2upstream

import (
	"bufio"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
)

// rawUpstream is an HTTP/1.1 API written by hand, for the Expect
// behaviours Go's server does not have. It accepts the access tokens
// at-2, at-3, ... in turn, each for one request, and answers a 200 with
// the body's sha256 in hex; any other token gets a 401, on a connection
// kept open. Without earlyReject it never sends 100 Continue and reads
// every body before it answers (a server that ignores Expect); with it,
// it rejects a token from the request head, before reading the body,
// then drains the body to stay in step, and asks for accepted bodies
// with 100 Continue.
type rawUpstream struct {
	earlyReject bool
	mu          sync.Mutex // guards next and conns
	next        int        // the number of the token accepted next
	conns       []net.Conn // every connection accepted, closed at the end
}

// newRawUpstream serves a rawUpstream on loopback and returns its address.
func newRawUpstream(t *testing.T, earlyReject bool) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &rawUpstream{earlyReject: earlyReject, next: 2}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		u.mu.Lock()
		for _, c := range u.conns {
			c.Close() // reverse_proxy keeps idle connections open
		}
		u.mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			u.mu.Lock()
			u.conns = append(u.conns, conn)
			u.mu.Unlock()
			wg.Go(func() { u.serve(conn) })
		}
	})
	return ln.Addr().String()
}

func (u *rawUpstream) serve(conn net.Conn) {
	defer conn.Close()
	br := bufio.NewReader(conn)
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		ok := u.accept(req.Header.Get("Authorization"))
		if !ok && u.earlyReject {
			fmt.Fprintf(conn, "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer error=\"invalid_token\"\r\nContent-Length: 0\r\n\r\n")
			if _, err := io.Copy(io.Discard, req.Body); err != nil {
				return
			}
			continue
		}
		if ok && u.earlyReject && strings.EqualFold(req.Header.Get("Expect"), "100-continue") {
			fmt.Fprintf(conn, "HTTP/1.1 100 Continue\r\n\r\n")
		}
		h := sha256.New()
		if _, err := io.Copy(h, req.Body); err != nil {
			return
		}
		if !ok {
			fmt.Fprintf(conn, "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer error=\"invalid_token\"\r\nContent-Length: 0\r\n\r\n")
			continue
		}
		sum := fmt.Sprintf("%x\n", h.Sum(nil))
		fmt.Fprintf(conn, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(sum), sum)
	}
}

// accept reports whether auth carries the token accepted next, and moves
// on to the one after it.
func (u *rawUpstream) accept(auth string) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	if auth != fmt.Sprintf("Bearer at-%d", u.next) {
		return false
	}
	u.next++
	return true
}
