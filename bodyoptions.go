package oauth2upstream

import (
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
	// is cut off and its kept body freed. It never extends the server's
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
	// ones on loopback). Default: auto.
	UpstreamExpect string `json:"upstream_expect,omitempty"`
}

// setUpstreamExpect makes Expect on the upstream request what
// upstream_expect says, whatever the client sent: the client's own
// handshake is with this server, which answers it when the body is first
// read.
func (b *BodyOptions) setUpstreamExpect(r *http.Request) {
	clientSent := strings.EqualFold(r.Header.Get("Expect"), "100-continue")
	switch {
	case b.UpstreamExpect == "on",
		b.UpstreamExpect == "auto" && clientSent:
		r.Header.Set("Expect", "100-continue")
	default:
		r.Header.Del("Expect")
	}
}
