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

// Room of a headerSnapshot that costs no allocation: what Caddy's server
// puts in every response header before the handlers run (Server, and
// Alt-Svc with HTTP/3; so the header is never empty), with space to spare.
const (
	snapshotKeys   = 4
	snapshotValues = 8
)

// headerSnapshot is the response header before an attempt, so a replay
// starts from it and the held response's headers (WWW-Authenticate, ...)
// do not leak into the replayed answer. It copies the values (handlers such
// as `header` rewrite values in place), into fixed room when they fit,
// else into a clone; only a restore, on the rare replay path, allocates.
type headerSnapshot struct {
	n      int
	keys   [snapshotKeys]string
	counts [snapshotKeys]int
	values [snapshotValues]string
	large  http.Header // the snapshot when it does not fit
}

func (s *headerSnapshot) take(h http.Header) {
	s.n, s.large = 0, nil
	total := 0
	for _, v := range h {
		total += len(v)
	}
	if len(h) > snapshotKeys || total > snapshotValues {
		s.large = h.Clone()
		return
	}
	i := 0
	for k, v := range h {
		s.keys[s.n], s.counts[s.n] = k, len(v)
		i += copy(s.values[i:], v)
		s.n++
	}
}

func (s *headerSnapshot) restore(h http.Header) {
	clear(h)
	if s.large != nil {
		for k, v := range s.large {
			h[k] = v
		}
		return
	}
	i := 0
	for j := range s.n {
		h[s.keys[j]] = slices.Clone(s.values[i : i+s.counts[j]])
		i += s.counts[j]
	}
}
