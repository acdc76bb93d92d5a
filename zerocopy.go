package oauth2upstream

import (
	"errors"
	"net/http"
	"net/http/httptrace"

	"go.uber.org/zap"
)

// The zero-copy path. An upstream asked with "Expect: 100-continue" either
// answers with a final status before the body is sent, or asks for the
// body with 100 Continue once it has accepted the request head, the token
// included (RFC 9110 section 10.1.1: an origin server answers at once with
// the final status "if that status can be determined by examining just the
// request-line and header fields"). Go's transport, given reverse_proxy's
// expect_continue_timeout, does not read the request body until then, and
// Go's server does not send the client its own 100, or read its body,
// until the handler first reads it. So:
//
//   - a rejection before the 100 finds the body unread: the replay reads
//     it from the client's connection, and nothing was ever kept
//     (replayBody.rewind);
//   - after the 100 the body streams without a copy, since the token has
//     been accepted;
//   - an upstream that sends no 100 within expect_continue_timeout gets
//     the body as before, kept for a replay (decideLocked).

// streamAfterContinue puts the body of r on the zero-copy path: r goes
// upstream with Expect (setUpstreamExpect), and the returned request, the
// one to send, tells the body when the upstream's 100 Continue came. The
// transport calls Got100Continue on its reading goroutine before it lets
// its writing goroutine read the body, so the hook has run by the body's
// first read of an attempt that was asked for it. reverse_proxy's own
// trace (which forwards 1xx answers) composes with this one.
func (b *replayBody) streamAfterContinue(r *http.Request) *http.Request {
	b.zeroCopy = true
	b.trace.Got100Continue = func() { b.continued.Store(true) }
	return r.WithContext(httptrace.WithClientTrace(r.Context(), &b.trace))
}

// decideLocked chooses, at an attempt's first read of the client's body,
// whether the attempt keeps what it reads: not when its upstream asked for
// the body with 100 Continue on the zero-copy path.
func (b *replayBody) decideLocked() {
	if b.decided {
		return
	}
	b.decided = true
	b.streamed = b.zeroCopy && b.continued.Load()
}

// clientReader reads the client's body for an attempt after one that read
// none of it: nothing was kept, and nothing needs to be.
type clientReader struct {
	body    *replayBody
	attempt int
}

func (c *clientReader) Read(p []byte) (int, error) { return c.body.readFor(c.attempt, p) }

// Close does nothing, as replayBody's: the server closes the client's body.
func (c *clientReader) Close() error { return nil }

// zeroCopyFor reports whether a request's body may take the zero-copy
// path: zero_copy_min is on, the reverse_proxy after the handler waits for
// 100 Continue, and this handler's upstream has not been seen to reject a
// token after its 100 Continue.
func (h *Handler) zeroCopyFor() bool {
	return h.ZeroCopyMin > 0 && h.zeroCopyReady && !h.lateRejection.Load()
}

// noteUnkeptBody is called when a trigger answer cannot be replayed
// because of err. When the body went upstream unkept after a 100 Continue,
// the upstream sends 100 before it looks at the token: Node.js's HTTP
// server, for one, answers every Expect with 100 unless the application
// listens for 'checkContinue' (https://nodejs.org/api/http.html#event-checkcontinue).
// Its 100 vouches for nothing, so from now on this handler keeps request
// bodies for a replay as it does without zero_copy_min, until it is
// provisioned again; the answer that taught it goes to the client, counted
// as not_replayable.
func (h *Handler) noteUnkeptBody(name string, err error) {
	if errors.Is(err, errBodyStreamed) && h.lateRejection.CompareAndSwap(false, true) {
		h.logger.Warn("the upstream rejected a token after its 100 Continue, so an upload it had asked for was not kept and its rejection went to the client; request bodies are kept for a replay from now on (until the handler is provisioned again); set zero_copy_min off for such an upstream",
			zap.String("key_set", name))
	}
}
