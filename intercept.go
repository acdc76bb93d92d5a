package oauth2upstream

import (
	"bytes"
	"io"
	"net/http"
	"slices"
	"sync"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

var heldBodyPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// attemptWriter is the response writer of a first attempt. A response whose
// status is a trigger (401 by default) is held back, not sent: its status
// and body here, its headers in the real writer's header map. The handler
// then either replays the request, after restoring the headers it had
// before the attempt, or sends the held response unchanged.
type attemptWriter struct {
	caddyhttp.ResponseWriterWrapper // by value: no allocation of its own
	triggers                        []int
	wroteHeader                     bool
	held                            bool
	status                          int
	body                            *bytes.Buffer
}

// reset makes aw the writer of a first attempt on w.
func (aw *attemptWriter) reset(w http.ResponseWriter, triggers []int) {
	*aw = attemptWriter{ResponseWriterWrapper: caddyhttp.ResponseWriterWrapper{ResponseWriter: w}, triggers: triggers}
}

func (aw *attemptWriter) WriteHeader(status int) {
	if aw.wroteHeader {
		return
	}
	if status >= 100 && status < 200 {
		// Informational responses (103 Early Hints) go through; the
		// final status follows.
		aw.ResponseWriter.WriteHeader(status)
		return
	}
	aw.wroteHeader = true
	if slices.Contains(aw.triggers, status) {
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
		return aw.body.Write(p)
	}
	return aw.ResponseWriter.Write(p)
}

func (aw *attemptWriter) ReadFrom(r io.Reader) (int64, error) {
	if !aw.wroteHeader {
		aw.WriteHeader(http.StatusOK)
	}
	if aw.held {
		return aw.body.ReadFrom(r)
	}
	return aw.ResponseWriterWrapper.ReadFrom(r)
}

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

// free returns the held body's buffer to its pool.
func (aw *attemptWriter) free() {
	if aw.body != nil {
		aw.body.Reset()
		heldBodyPool.Put(aw.body)
		aw.body = nil
	}
}

// exchange is what ServeHTTP keeps for one request, in one allocation: the
// first attempt's writer and the placeholders (BenchmarkMiddleware: one
// allocation fewer per request than two separate ones).
type exchange struct {
	attempt attemptWriter
	vars    requestPlaceholders
}

// restoreHeader makes h what it was when saved was cloned from it.
func restoreHeader(h, saved http.Header) {
	clear(h)
	for k, v := range saved {
		h[k] = v
	}
}
