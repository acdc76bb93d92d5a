package oauth2upstream

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"
)

func randomBytes(n int, seed byte) []byte {
	b := make([]byte, n)
	rand.NewChaCha8([32]byte{seed}).Read(b)
	return b
}

func newBodyRequest(body io.Reader, length int64) *http.Request {
	r, _ := http.NewRequest(http.MethodPost, "http://upstream/", body)
	r.ContentLength = length
	return r
}

// The copy a replay reads is the body, byte for byte, across the memory
// chunks, the spill file and their boundaries, whether the first attempt
// read all of it, part of it, or none.
func TestReplayBodyRoundTrip(t *testing.T) {
	tests := []struct {
		name      string
		size      int
		memLimit  int64
		firstRead int // bytes the first attempt reads before the replay
	}{
		{name: "memory only", size: 1000, memLimit: 4096, firstRead: 1000},
		{name: "exactly the memory limit", size: 4096, memLimit: 4096, firstRead: 4096},
		{name: "spills to file", size: 100_000, memLimit: 4096, firstRead: 100_000},
		{name: "limit not a chunk multiple", size: 200_000, memLimit: replayChunkSize + 17, firstRead: 200_000},
		{name: "first attempt read part", size: 200_000, memLimit: 50_000, firstRead: 70_001},
		{name: "first attempt read nothing", size: 200_000, memLimit: 50_000, firstRead: 0},
		{name: "no memory at all", size: 10_000, memLimit: 0, firstRead: 10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("TMPDIR", t.TempDir())
			want := randomBytes(tt.size, byte(tt.size))
			b := newReplayBody(newBodyRequest(bytes.NewReader(want), int64(tt.size)), tt.memLimit, 1<<20, []string{"Authorization"})
			defer b.release()

			first := make([]byte, tt.firstRead)
			if _, err := io.ReadFull(b, first); err != nil {
				t.Fatalf("first attempt read: %v", err)
			}
			replay, err := b.rewind()
			if err != nil {
				t.Fatalf("rewind() = %v", err)
			}
			got, err := io.ReadAll(replay)
			if err != nil {
				t.Fatalf("reading the replay: %v", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("replay is %d bytes, differing from the %d sent", len(got), len(want))
			}
			// The first attempt may read no more once the body is taken over.
			if n, err := b.Read(make([]byte, 10)); !errors.Is(err, errBodyDetached) {
				t.Errorf("Read after rewind = %d, %v; want errBodyDetached", n, err)
			}
			// The spill file was unlinked when it was made.
			if entries, _ := os.ReadDir(os.Getenv("TMPDIR")); len(entries) != 0 {
				t.Errorf("temporary directory holds %d entries; want none", len(entries))
			}
		})
	}
}

// Bodies larger than max_replay_body are streamed but not replayed, whether
// the length is announced or discovered.
func TestReplayBodyTooLarge(t *testing.T) {
	t.Parallel()
	data := randomBytes(5000, 1)
	for _, length := range []int64{5000, -1} {
		b := newReplayBody(newBodyRequest(bytes.NewReader(data), length), 1024, 4096, []string{"Authorization"})
		got, err := io.ReadAll(b)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("length %d: the first attempt read %d bytes, %v; want the whole body", length, len(got), err)
		}
		if _, err := b.rewind(); !errors.Is(err, errBodyTooLarge) {
			t.Errorf("length %d: rewind() = %v; want errBodyTooLarge", length, err)
		}
		b.release()
	}
	// max_replay_body -1: no body is kept at all.
	b := newReplayBody(newBodyRequest(strings.NewReader("x"), 1), 1024, -1, []string{"Authorization"})
	io.ReadAll(b)
	if _, err := b.rewind(); !errors.Is(err, errBodyTooLarge) {
		t.Errorf("max -1: rewind() = %v; want errBodyTooLarge", err)
	}
}

// A client whose upload breaks cannot be replayed: from the copy, rewind
// reports the error; a replay that reads the body from the client gets it.
func TestReplayBodyClientError(t *testing.T) {
	t.Parallel()
	broken := func() io.Reader { return io.MultiReader(strings.NewReader("partial"), iotestErrReader{}) }
	b := newReplayBody(newBodyRequest(broken(), -1), 1024, 4096, []string{"Authorization"})
	defer b.release()
	if _, err := b.Read(make([]byte, 3)); err != nil {
		t.Fatal(err)
	}
	if _, err := b.rewind(); err == nil || !strings.Contains(err.Error(), "reading request body") {
		t.Errorf("rewind() after a read = %v; want the client's read error", err)
	}

	unread := newReplayBody(newBodyRequest(broken(), -1), 1024, 4096, []string{"Authorization"})
	defer unread.release()
	replay, err := unread.rewind()
	if err != nil {
		t.Fatalf("rewind() of an unread body = %v", err)
	}
	if _, err := io.ReadAll(replay); err == nil || !strings.Contains(err.Error(), "connection reset") {
		t.Errorf("reading the replay = %v; want the client's read error", err)
	}
}

type iotestErrReader struct{}

func (iotestErrReader) Read([]byte) (int, error) { return 0, errors.New("connection reset") }

// After release, a transport goroutine still reading the replay gets an
// error, never memory that went back to the pool: from the copy, or from
// the client when the first attempt read nothing.
func TestReplayBodyReleasedReader(t *testing.T) {
	t.Parallel()
	for _, firstRead := range []int{10, 0} {
		t.Run(fmt.Sprintf("first_read=%d", firstRead), func(t *testing.T) {
			t.Parallel()
			b := newReplayBody(newBodyRequest(bytes.NewReader(randomBytes(100_000, 2)), 100_000), 50_000, 1<<20, []string{"Authorization"})
			if _, err := io.ReadFull(b, make([]byte, firstRead)); err != nil {
				t.Fatal(err)
			}
			replay, err := b.rewind()
			if err != nil {
				t.Fatal(err)
			}
			if _, err := replay.Read(make([]byte, 10)); err != nil {
				t.Fatalf("Read before release: %v", err)
			}
			b.release()
			if _, err := replay.Read(make([]byte, 10)); !errors.Is(err, errBodyReleased) {
				t.Errorf("Read after release = %v; want errBodyReleased", err)
			}
		})
	}
}

// Requests without a body need no copy.
func TestReplayBodyNone(t *testing.T) {
	t.Parallel()
	for _, r := range []*http.Request{
		newBodyRequest(nil, 0),
		newBodyRequest(http.NoBody, 0),
	} {
		if b := newReplayBody(r, 1024, 4096, []string{"Authorization"}); b != nil {
			t.Errorf("newReplayBody(no body) = %v; want nil", b)
		}
	}
}

// deadlineWriter records the read deadlines set through a
// ResponseController.
type deadlineWriter struct {
	http.ResponseWriter
	deadlines []time.Time
}

func (w *deadlineWriter) SetReadDeadline(d time.Time) error {
	w.deadlines = append(w.deadlines, d)
	return nil
}

// body_timeout gives every read of the client's body at least the idle
// time, while the deadline moves only once every idle/8, not before every
// read, and is cleared at the body's end.
func TestReplayBodyIdleDeadline(t *testing.T) {
	t.Parallel()
	const idle = 800 * time.Millisecond
	body := randomBytes(64<<10, 4)
	w := &deadlineWriter{}
	b := newReplayBody(newBodyRequest(bytes.NewReader(body), int64(len(body))), 1<<20, 1<<20, []string{"Authorization"})
	defer b.release()
	b.conn, b.idle = http.NewResponseController(w), idle
	buf := make([]byte, 1<<10)
	for {
		readAt := time.Now()
		_, err := b.Read(buf)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if last := w.deadlines[len(w.deadlines)-1]; last.Before(readAt.Add(idle)) {
			t.Fatalf("a read at %s had until %s; want at least body_timeout (%s)", readAt.Format(time.StampMicro), last.Format(time.StampMicro), idle)
		}
	}
	// 64 reads within far less than idle/8: one deadline, then the clear.
	if len(w.deadlines) != 2 || !w.deadlines[1].IsZero() {
		t.Errorf("deadlines set = %v; want one, then the clear at the end", w.deadlines)
	}
}
