package oauth2upstream

import (
	"bytes"
	"io"
	"net/http"
	"slices"
	"sync"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// maxHeldBody is the most of a trigger answer's body that is held back for
// a possible replay. A 401's body is an error message; a larger answer
// goes to the client as it is, unreplayed, so that no upstream can make the
// sidecar hold an unbounded amount of memory.
const maxHeldBody = 64 << 10

var heldBodyPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// attemptWriter is the response writer of every attempt. It never passes on
// an upstream's "100 Continue": the client gets its one 100 from Go's
// server when the handler first reads the body, and the upstream's (one
// per attempt, when Expect goes upstream) would be a second and a third
// (RFC 9110 section 10.1.1 allows a client one). Other 1xx answers, such as
// 103 Early Hints, go through.
//
// On a first attempt, a response whose
// status is a trigger (401 by default; with invalidToken, a 401 whose
// WWW-Authenticate says error="invalid_token") is held back, not sent: its
// status and body here, its headers in the real writer's header map. The
// handler then either replays the request, after restoring the headers it
// had before the attempt, or sends the held response unchanged.
type attemptWriter struct {
	caddyhttp.ResponseWriterWrapper // by value: no allocation of its own
	triggers                        []int
	invalidToken                    bool
	wroteHeader                     bool
	held                            bool
	// tooLarge: the trigger answer's body outgrew maxHeldBody and went to
	// the client unreplayed.
	tooLarge bool
	// dpopNonce holds a resource server's use_dpop_nonce 401 too (asksDPoPNonce, retryWithNonce).
	dpopNonce bool
	status    int
	body      *bytes.Buffer
}

// reset makes aw the writer of an attempt on w; triggers lists the statuses
// to hold back, and invalidToken adds a 401 that says error="invalid_token"
// (none for a replay).
func (aw *attemptWriter) reset(w http.ResponseWriter, triggers []int, invalidToken bool) {
	*aw = attemptWriter{ResponseWriterWrapper: caddyhttp.ResponseWriterWrapper{ResponseWriter: w},
		triggers: triggers, invalidToken: invalidToken}
}

// isTrigger reports whether an answer of status, whose headers are already
// in the real writer's map, means "token rejected".
func (aw *attemptWriter) isTrigger(status int) bool {
	return slices.Contains(aw.triggers, status) ||
		aw.invalidToken && status == http.StatusUnauthorized && rejectsToken(aw.Header()) ||
		aw.dpopNonce && status == http.StatusUnauthorized && asksDPoPNonce(aw.Header())
}

func (aw *attemptWriter) WriteHeader(status int) {
	if aw.wroteHeader {
		return
	}
	if status == http.StatusContinue {
		return
	}
	if status > 100 && status < 200 {
		aw.ResponseWriter.WriteHeader(status)
		return
	}
	aw.wroteHeader = true
	if aw.isTrigger(status) {
		aw.held, aw.status = true, status
		aw.body = heldBodyPool.Get().(*bytes.Buffer)
		return
	}
	aw.ResponseWriter.WriteHeader(status)
}

func (aw *attemptWriter) Write(p []byte) (int, error) {
	if !aw.wroteHeader {
		aw.WriteHeader(http.StatusOK)
	}
	if aw.held {
		if aw.body.Len()+len(p) <= maxHeldBody {
			return aw.body.Write(p)
		}
		if err := aw.giveUpHolding(); err != nil {
			return 0, err
		}
	}
	return aw.ResponseWriter.Write(p)
}

// giveUpHolding sends the held part of a trigger answer that is too large
// to hold, so that the rest streams to the client as it comes.
func (aw *attemptWriter) giveUpHolding() error {
	aw.held, aw.tooLarge = false, true
	aw.ResponseWriter.WriteHeader(aw.status)
	_, err := aw.ResponseWriter.Write(aw.body.Bytes())
	aw.free()
	return err
}

func (aw *attemptWriter) ReadFrom(r io.Reader) (int64, error) {
	if !aw.wroteHeader {
		aw.WriteHeader(http.StatusOK)
	}
	if aw.held {
		// Through Write, in pieces, so that the bound applies.
		return io.Copy(writerOnly{aw}, r)
	}
	return aw.ResponseWriterWrapper.ReadFrom(r)
}

// writerOnly hides a writer's ReadFrom, so that io.Copy writes in pieces.
type writerOnly struct{ io.Writer }

// FlushError keeps a held response held. Without it,
// http.ResponseController would unwrap to the real writer and flush, which
// sends the held status.
func (aw *attemptWriter) FlushError() error {
	if aw.held || !aw.wroteHeader {
		return nil
	}
	return http.NewResponseController(aw.ResponseWriter).Flush()
}

// Flush implements http.Flusher for callers that assert it.
func (aw *attemptWriter) Flush() { _ = aw.FlushError() }

// sendHeld writes the held response to the client, unchanged.
func (aw *attemptWriter) sendHeld() error {
	aw.ResponseWriter.WriteHeader(aw.status)
	_, err := aw.ResponseWriter.Write(aw.body.Bytes())
	return err
}

// free returns the held body's buffer to its pool, unless it grew past
// what the pool should keep.
func (aw *attemptWriter) free() {
	if aw.body != nil {
		if aw.body.Cap() <= 2*maxHeldBody {
			aw.body.Reset()
			heldBodyPool.Put(aw.body)
		}
		aw.body = nil
	}
}
