package integration_test

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"math/rand/v2"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/oauth2upstream/caddy-oauth2-upstream/integration_test/authserver"
	"github.com/oauth2upstream/caddy-oauth2-upstream/integration_test/sidecar"
)

// Sizes of the zero-copy scenario: a warm-up upload that takes the same
// path as the measured one, and the measured one: sixteen times
// replay_memory's default, and far more than a sidecar holds when it
// copies nothing.
const (
	warmUpSize     = 64 << 10
	zeroCopyUpload = 16 << 20
)

// Issue 26: a chunked upload of 16 MiB through an upstream that rejects
// the stale token before it reads the body (and, being Go's server, sends
// no 100 Continue and closes the connection). On the zero-copy path the
// sidecar asks the upstream with Expect, the 401 comes before the body
// left, the replay reads the body from the client's connection and it
// streams after the upstream's 100: the upstream gets the body byte for
// byte after one refresh, and the sidecar's peak RSS hardly moves, though
// replay_memory and max_replay_body would let it hold all 16 MiB. With
// zero_copy_min off the same upload is kept for a replay, in memory: the
// peak RSS grows by about the body's size, which shows that the bound of
// the first case would catch a copy.
func TestZeroCopyUploadReplayedFromClient(t *testing.T) {
	tests := []struct {
		name    string
		options []string
		// The sidecar's peak RSS during the upload grows by less than
		// maxGrowth (0: no bound) and at least minGrowth.
		maxGrowth, minGrowth int64
	}{
		{name: "zero_copy_min default", maxGrowth: 8 << 20},
		{
			// upstream_expect on: without Expect this upstream would close
			// the connection under the upload (the README's advice for an
			// API that rejects before reading), and a 502 would hide the copy.
			name: "zero_copy_min off", options: []string{"zero_copy_min off", "upstream_expect on"},
			minGrowth: 12 << 20,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			auth := newAuthServer(t, authserver.Config{AccessTokenLifespan: time.Minute})
			api := newResourceServer(t, auth)
			api.RejectBeforeBody(true)
			dir, ksOption := fileKeystore(t)
			storeStaleKeySet(t, auth, dir, "warm-up")
			storeStaleKeySet(t, auth, dir, "upload")
			options := append([]string{
				"key_set {http.request.header.X-Key-Set}", "key_set_allow [a-z0-9-]+",
				"replay_memory 64MiB", "max_replay_body 64MiB",
			}, tt.options...)
			sc := startSidecar(t, spec{
				auth: auth, upstream: hostport(api.URL()), keystore: ksOption, options: options,
				proxy: "transport http {\nexpect_continue_timeout 5s\n}",
			})
			c := newClient(t, 1)

			// The warm-up takes the same path with a small body: refresh,
			// replay, upstream connections, the handler's buffers.
			if r, _ := chunkedUpload(t, c, sc.URL(), "warm-up", warmUpSize); r.err != nil || r.status != http.StatusOK {
				t.Fatalf("warm-up POST: %s; want 200", r)
			}
			before := resetPeakRSS(t, sc)
			requests, rejected, grants := api.Requests(), api.Unauthorized(), auth.Grants()

			r, sum := chunkedUpload(t, c, sc.URL(), "upload", zeroCopyUpload)
			after := peakRSS(t, sc)
			growth := after - before
			t.Logf("sidecar peak RSS %d KiB before the %d MiB upload, %d KiB after: grew by %d KiB",
				before>>10, zeroCopyUpload>>20, after>>10, growth>>10)

			if r.err != nil || r.status != http.StatusOK {
				t.Fatalf("POST of %d bytes: %s; want 200", zeroCopyUpload, r)
			}
			if e := r.echo(t); e.Length != zeroCopyUpload || e.SHA256 != hex.EncodeToString(sum) {
				t.Errorf("resource server received %d bytes, sha256 %s; want %d bytes, sha256 %x", e.Length, e.SHA256, zeroCopyUpload, sum)
			}
			if got := api.Unauthorized() - rejected; got != 1 {
				t.Errorf("resource server answered 401 %d times; want 1 (the stale token)", got)
			}
			if got := api.Requests() - requests; got != 2 {
				t.Errorf("resource server saw %d requests; want 2 (the request and its replay)", got)
			}
			if got := auth.Grants() - grants; got != 1 {
				t.Errorf("refresh grants during the upload = %d; want 1", got)
			}
			if ks, _ := readKeySet(t, dir, "upload"); ks.Generation != 2 {
				t.Errorf("stored generation %d; want 2 (one refresh)", ks.Generation)
			}
			if tt.maxGrowth > 0 && growth >= tt.maxGrowth {
				t.Errorf("sidecar peak RSS grew by %d KiB during the upload; want less than %d KiB (the body is not copied)", growth>>10, tt.maxGrowth>>10)
			}
			if growth < tt.minGrowth {
				t.Errorf("sidecar peak RSS grew by %d KiB during the upload; want at least %d KiB (the body is kept in memory)", growth>>10, tt.minGrowth>>10)
			}
		})
	}
}

// chunkedUpload POSTs size deterministic random bytes to key set keySet,
// framed chunked (a body of unknown length), generated as they are sent,
// and returns the answer and the sha256 of what was sent. An answer that
// came before the whole body was sent is an error.
func chunkedUpload(t *testing.T, c *http.Client, baseURL, keySet string, size int64) (response, []byte) {
	t.Helper()
	body := &generatedBody{rng: rand.NewChaCha8([32]byte{'z', 'e', 'r', 'o', 'c', 'o', 'p', 'y'}), left: size, sum: sha256.New()}
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, baseURL+"/upload", body)
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = -1 // unknown: chunked
	req.Header.Set("X-Key-Set", keySet)
	req.Header.Set("Content-Type", "application/octet-stream")
	r := do(c, req)
	left, sum := body.sent()
	if r.err == nil && left != 0 {
		r.err = fmt.Errorf("answered %s with %d of %d bytes not sent", r, left, size)
	}
	return r, sum
}

// generatedBody reads left more bytes of rng, hashing them into sum. The
// transport reads it on its own goroutine, which may still be reading when
// an early answer has come.
type generatedBody struct {
	mu   sync.Mutex // guards the fields below
	rng  *rand.ChaCha8
	left int64
	sum  hash.Hash
}

func (g *generatedBody) Read(p []byte) (int, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.left == 0 {
		return 0, io.EOF
	}
	p = p[:min(int64(len(p)), g.left)]
	_, _ = g.rng.Read(p)
	g.sum.Write(p)
	g.left -= int64(len(p))
	return len(p), nil
}

// sent returns the number of bytes not read yet and the sha256 of those
// read.
func (g *generatedBody) sent() (left int64, sum []byte) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.left, g.sum.Sum(nil)
}

// resetPeakRSS makes the sidecar's peak RSS what it holds now, and returns
// it.
func resetPeakRSS(t *testing.T, sc *sidecar.Process) int64 {
	t.Helper()
	if err := sc.ResetPeakRSS(); err != nil {
		t.Skipf("cannot measure the sidecar's memory here: %v", err)
	}
	return peakRSS(t, sc)
}

func peakRSS(t *testing.T, sc *sidecar.Process) int64 {
	t.Helper()
	rss, err := sc.PeakRSS()
	if err != nil {
		t.Fatalf("reading the sidecar's peak RSS: %v", err)
	}
	return rss
}
