package oauth2upstream

import (
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2"
)

// BodyOptions are the options of request bodies: how much is kept for a
// replay, how long a client may stall, and whether Expect goes upstream.
// Handler embeds them, so their JSON fields sit beside the handler's own.
type BodyOptions struct {
	// ReplayMemory is how many bytes of a request body are kept in memory
	// for a replay; the rest goes to a temporary file. Zero or absent: the
	// default, 1048576 (the Caddyfile refuses 0).
	ReplayMemory int64 `json:"replay_memory,omitempty"`

	// MaxReplayBody is the largest request body, in bytes, that can be
	// replayed. A larger body streams to the upstream once, and a trigger
	// status then goes back to the client (the token is still refreshed
	// for the next request). -1 disables replaying requests with a body.
	// Zero or absent: the default, 67108864 (64 MiB); the Caddyfile takes
	// "off" for -1 and refuses 0.
	MaxReplayBody int64 `json:"max_replay_body,omitempty"`

	// BodyTimeout is the longest the handler waits for the next bytes of
	// a request body from the client (an idle timeout, not a bound on the
	// whole upload, which may be slowed by the upstream); a stalled client
	// is cut off (within an eighth more: the deadline moves at most every
	// BodyTimeout/8) and its kept body freed. It never extends the server's
	// own read timeout. Zero or absent: the default, 60s; -1 disables
	// (the Caddyfile takes "off" and refuses 0).
	BodyTimeout caddy.Duration `json:"body_timeout,omitempty"`

	// UpstreamExpect is when a request with a body goes upstream with
	// "Expect: 100-continue": "auto" (when the client sent it), "on"
	// (always) or "off" (never). The client's own handshake is with this
	// server, whatever this says. With Expect, and reverse_proxy's
	// transport option expect_continue_timeout (without it Go sends the
	// body at once, and an upstream that rejects unread closes the
	// connection under the upload), an upstream that rejects the token
	// answers before the body leaves: nothing is uploaded in vain, and
	// nothing races the upload; without Expect, an upstream that answers
	// 401 to a chunked upload unread and resets the connection turns the
	// 401 into a 502. The price is one round trip per request with a body
	// (BenchmarkUpstreamExpect: +8 % for 4 KiB POSTs and +30 % for 64 KiB
	// ones on loopback). Default: auto. A request of at least ZeroCopyMin
	// goes upstream with Expect under auto too; off turns ZeroCopyMin off.
	UpstreamExpect string `json:"upstream_expect,omitempty"`

	// ZeroCopyMin is the smallest request body, in bytes, that goes
	// upstream with "Expect: 100-continue" and is not copied for a
	// replay when the upstream asks for it with 100 Continue (zerocopy.go):
	// a rejection before the 100 is replayed from the client's connection,
	// unread until then. A body of unknown length (chunked) counts as
	// large. Every request that goes upstream with Expect, whatever its
	// size, takes the same path. A rejection after the 100 cannot be
	// replayed: it goes to the client, counted as not_replayable, and the
	// handler keeps bodies again from then on. Needs reverse_proxy's
	// expect_continue_timeout (without it the body is sent, and kept, at
	// once). Zero or absent: the default, DefaultZeroCopyMin; -1 (the
	// Caddyfile's "off") keeps every body as before; upstream_expect off
	// turns it off too, and refuses an explicit size.
	ZeroCopyMin int64 `json:"zero_copy_min,omitempty"`
}

// DefaultZeroCopyMin is zero_copy_min's default, chosen from
// BenchmarkZeroCopy (BENCHMARKS.md, "Zero-copy uploads").
const DefaultZeroCopyMin = 1 << 20

// setUpstreamExpect makes Expect on the upstream request what
// upstream_expect and, when zeroCopy, zero_copy_min say, whatever the
// client sent: the client's own handshake is with this server, which
// answers it when the body is first read. It reports whether Expect goes.
func (b *BodyOptions) setUpstreamExpect(r *http.Request, zeroCopy bool) bool {
	clientSent := strings.EqualFold(r.Header.Get("Expect"), "100-continue")
	large := zeroCopy && (r.ContentLength < 0 || r.ContentLength >= b.ZeroCopyMin)
	switch {
	case b.UpstreamExpect == "on",
		b.UpstreamExpect == "auto" && (clientSent || large):
		r.Header.Set("Expect", "100-continue")
		return true
	default:
		r.Header.Del("Expect")
		return false
	}
}

// setZeroCopyDefault fills zero_copy_min in, after upstream_expect.
func (b *BodyOptions) setZeroCopyDefault() {
	if b.ZeroCopyMin == 0 {
		b.ZeroCopyMin = DefaultZeroCopyMin
		if b.UpstreamExpect == "off" {
			b.ZeroCopyMin = -1
		}
	}
}

// validateZeroCopy refuses a zero_copy_min that cannot be kept.
func (b *BodyOptions) validateZeroCopy() error {
	switch {
	case b.ZeroCopyMin < -1:
		return fmt.Errorf("zero_copy_min %d: must be a positive size, or -1 (off)", b.ZeroCopyMin)
	case b.ZeroCopyMin > 0 && b.UpstreamExpect == "off":
		return errors.New("zero_copy_min needs Expect upstream, which upstream_expect off forbids: set zero_copy_min off, or upstream_expect auto")
	}
	return nil
}
