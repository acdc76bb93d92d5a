package oauth2upstream

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// replayChunkSize is the size of the pooled buffers that keep a request
// body in memory. Chunks, unlike one growing buffer, are never copied when
// the body grows, and go back to the pool whole.
const replayChunkSize = 32 << 10

var chunkPool = sync.Pool{New: func() any {
	b := make([]byte, replayChunkSize)
	return &b
}}

var (
	errBodyDetached = errors.New("request body was taken over for a replay")
	errBodyReleased = errors.New("request body buffer was released")
	errBodyTooLarge = errors.New("request body is larger than max_replay_body")
	// errBodyStreamed: the upstream asked for the body with its 100
	// Continue and read part of it before rejecting the token, and what
	// was sent was not kept (zerocopy.go).
	errBodyStreamed = errors.New("request body went upstream after its 100 Continue and was not kept")
)

// replayBody streams the client's request body to the first attempt while
// keeping a copy for a replay: the upload is not held up waiting for itself,
// and the rest of the body is read only when a replay needs it. The copy
// lives in pooled memory chunks up to memLimit, then in a temporary file
// that is unlinked as soon as it is created, so no crash leaves it behind.
//
// A body of which the client has sent nothing yet needs no copy: the
// replay reads it from the client's connection (rewind). On the zero-copy
// path (zerocopy.go) an attempt whose upstream asked for the body with
// "100 Continue" streams it without keeping anything.
type replayBody struct {
	src      io.Reader
	memLimit int64
	maxSize  int64
	// conn sets the client connection's read deadline for the idle
	// timeout; nil without one. Set once, before the first read, with
	// idle and latest.
	conn *http.ResponseController
	idle time.Duration
	// latest is the server's own read deadline as far as the handler can
	// tell (zero: none): the idle timeout never moves a deadline past it.
	latest time.Time
	// deadlineSet is when readSrc last moved the deadline (zero: never);
	// only the goroutine reading the client's body, under mu, uses it.
	deadlineSet time.Time
	// trailer is the request's trailer map, and owned the headers the
	// sidecar owns (the credential header, DPoP): the server fills
	// trailers in when the body ends, and the client's own credentials
	// must not reach the upstream that way either.
	trailer http.Header
	owned   []string

	// zeroCopy: the request goes upstream with Expect, and an attempt
	// whose upstream sends 100 Continue before its first read keeps no
	// copy. Set once, before the first attempt.
	zeroCopy bool
	// continued is set by the transport's Got100Continue hook, on its own
	// goroutine, before it lets the body be read; reset for each attempt.
	continued atomic.Bool
	trace     httptrace.ClientTrace

	// mu guards every field below. The proxy's transport reads the body
	// on its own goroutine, and may still be reading when the handler
	// takes the body over for a replay or releases it.
	mu     sync.Mutex
	chunks []*[]byte
	size   int64 // bytes kept
	file   *os.File
	cannot error // why no replay is possible, or nil
	// consumed is the number of bytes read from the client, kept or not.
	consumed int64
	eof      bool
	readErr  error
	// attempt numbers the attempt whose reader may read the client's
	// body (0 the first, which reads through the replayBody itself);
	// rewind moves it on, and release ends it, so that a transport still
	// running an earlier attempt reads nothing more.
	attempt  int
	released bool // chunks and file are gone
	// decided: this attempt's first read has chosen whether it keeps what
	// it reads; streamed: it chose not to (its upstream sent a 100).
	decided    bool
	streamed   bool
	replaySize int64
}

// newReplayBody wraps r's body for a possible replay, or returns nil when
// the request has no body. maxSize < 0 disables replay of bodies.
// owned are the canonical names of the headers the sidecar owns, removed
// from the request's trailers when the body ends.
func newReplayBody(r *http.Request, memLimit, maxSize int64, owned []string) *replayBody {
	if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
		return nil
	}
	b := &replayBody{src: r.Body, memLimit: min(memLimit, max(maxSize, 0)), maxSize: maxSize,
		trailer: r.Trailer, owned: owned}
	if maxSize < 0 || r.ContentLength > maxSize {
		// Known to be too large: stream it, keep nothing.
		b.cannot = errBodyTooLarge
	}
	return b
}

// idleTimeout cuts the client off when it sends nothing for d: before each
// read from the client the connection's read deadline moves to d from now,
// so only time spent waiting for the client counts, not time the upstream
// takes to accept what was read. d <= 0 leaves the connection alone.
//
// Setting a deadline replaces the server's own, so the server's
// ReadTimeout (Caddy's read_body timeout) must still bound the whole
// request: the server's deadline is ReadTimeout after the request's first
// byte, which came at most ReadHeaderTimeout before the handler started,
// so no deadline set here goes past ReadTimeout - ReadHeaderTimeout from
// the handler's start. With a ReadTimeout but no shorter ReadHeaderTimeout
// that bound is unknown, and the connection is left alone.
func (b *replayBody) idleTimeout(w http.ResponseWriter, r *http.Request, d time.Duration) {
	if d <= 0 {
		return
	}
	if srv, ok := r.Context().Value(http.ServerContextKey).(*http.Server); ok && srv.ReadTimeout > 0 {
		if srv.ReadHeaderTimeout <= 0 || srv.ReadHeaderTimeout >= srv.ReadTimeout {
			return
		}
		b.latest = time.Now().Add(srv.ReadTimeout - srv.ReadHeaderTimeout)
	}
	b.conn, b.idle = http.NewResponseController(w), d
}

// readSrc reads from the client's body, under the idle timeout. Writers
// that cannot set deadlines simply keep the server's.
//
// The deadline moves at most once every idle/8, to idle+idle/8 from then:
// every read still has at least idle for its bytes to come (a client is
// cut off between idle and idle*9/8 after it went quiet). Moving it before
// every 32 KiB read, as the transport reads, cost measurable CPU on large
// uploads (BENCHMARKS.md, "Bodies").
func (b *replayBody) readSrc(p []byte) (int, error) {
	if b.conn == nil {
		return b.src.Read(p)
	}
	if now := time.Now(); b.deadlineSet.IsZero() || now.Sub(b.deadlineSet) >= b.idle/8 {
		deadline := now.Add(b.idle + b.idle/8)
		if !b.latest.IsZero() && deadline.After(b.latest) {
			deadline = b.latest
		}
		_ = b.conn.SetReadDeadline(deadline)
		b.deadlineSet = now
	}
	n, err := b.src.Read(p)
	if err == io.EOF {
		// At the body's end Go's server starts reading the connection in
		// the background, to notice a client that goes away. That read
		// must not inherit the idle deadline: when it expires the server
		// cancels the request's context, and an upstream slower than the
		// timeout to answer would be cut off. Only at a clean end: after a
		// timeout the expired deadline is what makes the server give up on
		// the stalled client.
		_ = b.conn.SetReadDeadline(time.Time{})
	}
	return n, err
}

// Read passes the client's body to the first attempt, recording it.
func (b *replayBody) Read(p []byte) (int, error) { return b.readFor(0, p) }

// readFor passes the client's body to an attempt, recording it unless the
// attempt streams it (decideLocked).
func (b *replayBody) readFor(attempt int, p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case b.attempt < 0:
		return 0, errBodyReleased
	case attempt != b.attempt:
		return 0, errBodyDetached
	}
	b.decideLocked()
	n, err := b.readSrc(p)
	b.consumed += int64(n)
	b.recordLocked(p[:n])
	switch {
	case err == io.EOF:
		b.endLocked()
	case err != nil:
		b.readErr = err
	}
	return n, err
}

// endLocked notes the end of the client's body. By then the server has
// filled in the request's trailers, and reverse_proxy copies them when it
// reads this end: the owned headers go first, whatever the client sent in
// them.
func (b *replayBody) endLocked() {
	b.eof = true
	for _, key := range b.owned {
		delete(b.trailer, key)
	}
}

// Close does nothing: the HTTP server closes the client's body when the
// handler returns, and a replay still needs it until then.
func (b *replayBody) Close() error { return nil }

// recordLocked appends p to the copy: memory first, then the file.
func (b *replayBody) recordLocked(p []byte) {
	if b.cannot != nil || b.streamed || len(p) == 0 {
		return
	}
	if b.size+int64(len(p)) > b.maxSize {
		b.cannot = errBodyTooLarge
		b.freeLocked()
		return
	}
	for len(p) > 0 && b.size < b.memLimit {
		i, off := int(b.size/replayChunkSize), int(b.size%replayChunkSize)
		if i == len(b.chunks) {
			b.chunks = append(b.chunks, chunkPool.Get().(*[]byte))
		}
		room := min(int64(replayChunkSize-off), b.memLimit-b.size)
		n := copy((*b.chunks[i])[off:int64(off)+room], p)
		p = p[n:]
		b.size += int64(n)
	}
	if len(p) == 0 {
		return
	}
	if b.file == nil {
		f, err := createUnlinkedTemp()
		if err != nil {
			b.cannot = err
			b.freeLocked()
			return
		}
		b.file = f
	}
	if _, err := b.file.Write(p); err != nil {
		b.cannot = fmt.Errorf("keeping request body for a replay: %w", err)
		b.freeLocked()
		return
	}
	b.size += int64(len(p))
}

// createUnlinkedTemp makes a temporary file and removes its name at once:
// the open descriptor keeps the data, and the kernel frees it when the
// descriptor is closed, however the process ends.
func createUnlinkedTemp() (*os.File, error) {
	f, err := os.CreateTemp("", "oauth2-upstream-body-*")
	if err != nil {
		return nil, fmt.Errorf("creating temporary file for a replay: %w", err)
	}
	if err := os.Remove(f.Name()); err != nil {
		f.Close()
		return nil, fmt.Errorf("unlinking temporary file for a replay: %w", err)
	}
	return f, nil
}

// rewind takes the body over from the attempt that read it and returns a
// reader of the whole body for the next one. When that attempt read
// nothing of it, the next reads it from the client (whatever its size:
// nothing is kept). Otherwise it reads the copy; when the upstream answered
// before it read everything, the rest is read from the client into the
// copy here. It fails when the body is too large, could not be kept, went
// upstream unkept, or the client's upload broke.
func (b *replayBody) rewind() (io.ReadCloser, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.attempt++
	if b.consumed == 0 && !b.eof && b.readErr == nil && b.maxSize >= 0 {
		b.decided, b.streamed = false, false
		b.continued.Store(false)
		return &clientReader{body: b, attempt: b.attempt}, nil
	}
	if b.streamed {
		return nil, errBodyStreamed
	}
	if !b.eof && b.readErr == nil && b.cannot == nil {
		buf := chunkPool.Get().(*[]byte)
		for b.cannot == nil {
			n, err := b.readSrc(*buf)
			b.consumed += int64(n)
			b.recordLocked((*buf)[:n])
			if err == io.EOF {
				b.endLocked()
				break
			}
			if err != nil {
				b.readErr = err
				break
			}
		}
		chunkPool.Put(buf)
	}
	if b.cannot != nil {
		return nil, b.cannot
	}
	if b.readErr != nil {
		return nil, fmt.Errorf("reading request body: %w", b.readErr)
	}
	b.replaySize = b.size
	return &replayReader{body: b}, nil
}

// release frees the copy. Readers still running on a transport goroutine
// get an error instead of memory that went back to the pool.
func (b *replayBody) release() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.attempt = -1
	b.freeLocked()
}

func (b *replayBody) freeLocked() {
	for _, c := range b.chunks {
		chunkPool.Put(c)
	}
	b.chunks = nil
	if b.file != nil {
		b.file.Close()
		b.file = nil
	}
	b.released = true
}

// readAtLocked copies the recorded body from offset off into p.
func (b *replayBody) readAtLocked(p []byte, off int64) (int, error) {
	if b.released {
		return 0, errBodyReleased
	}
	if off >= b.replaySize {
		return 0, io.EOF
	}
	if off < b.memLimit {
		i, o := int(off/replayChunkSize), int(off%replayChunkSize)
		end := min(int64(replayChunkSize), b.memLimit-int64(i)*replayChunkSize, b.replaySize-int64(i)*replayChunkSize)
		return copy(p, (*b.chunks[i])[o:end]), nil
	}
	want := min(int64(len(p)), b.replaySize-off)
	n, err := b.file.ReadAt(p[:want], off-b.memLimit)
	if err == io.EOF && int64(n) == want {
		err = nil
	}
	return n, err
}

// replayReader reads the recorded body from the start, for the replay.
type replayReader struct {
	body *replayBody
	off  int64 // only the transport goroutine reading the replay uses it
}

func (r *replayReader) Read(p []byte) (int, error) {
	r.body.mu.Lock()
	defer r.body.mu.Unlock()
	n, err := r.body.readAtLocked(p, r.off)
	r.off += int64(n)
	return n, err
}

func (r *replayReader) Close() error { return nil }
