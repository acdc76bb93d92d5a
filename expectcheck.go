package oauth2upstream

import (
	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/oauth2upstream/caddy-oauth2-upstream/internal/proxyhops"
)

// judgeExpectHops reads the reverse_proxy handlers after this one in its
// server's routes. The zero-copy path (zero_copy_min) is taken only when
// there is one at least and every one waits for the upstream's 100
// Continue: Go's transport otherwise sends the body at once, whatever the
// request's Expect header says (the net/http Transport.ExpectContinueTimeout
// doc: "Zero means no timeout and causes the body to be sent
// immediately"), and an Expect added for zero_copy_min would only make an
// upstream that rejects a token unread close the connection under the
// upload.
//
// It also logs, once per handler, when upstream_expect can send Expect
// upstream to a reverse_proxy that does not wait: an API that answers 401
// to a revoked token before reading the upload, and closes the
// connection, cuts the upload off, and the transport reports the write
// error, a 502 to the client, instead of the 401 that would refresh and
// replay.
func (h *Handler) judgeExpectHops(ctx caddy.Context) {
	_, hops := proxyhops.OfServer(ctx)
	h.zeroCopyReady = waitForContinue(hops)
	if h.zeroCopyReady && h.ZeroCopyMin > 0 {
		h.logger.Debug(zeroCopyOn, zap.Int64("zero_copy_min", h.ZeroCopyMin))
	}
	if h.UpstreamExpect == "off" {
		return
	}
	for _, hop := range hops {
		if hop.Transport.HTTP() && hop.Transport.ExpectContinueTimeout <= 0 {
			h.logger.Warn("reverse_proxy after oauth2_upstream has no expect_continue_timeout: an upstream that rejects a token before reading an upload and closes the connection gets the body anyway and the client a 502, not a refresh and replay, and zero_copy_min is not used (every upload is copied for a replay); set it in reverse_proxy's transport (transport http { expect_continue_timeout 1s }), or set upstream_expect off",
				zap.String("upstream_expect", h.UpstreamExpect))
			return
		}
	}
}

// zeroCopyOn is the debug line of a handler that takes the zero-copy path.
const zeroCopyOn = "uploads of at least zero_copy_min are not copied once the upstream asks for them with 100 Continue"

// waitForContinue reports whether hops holds a reverse_proxy at least and
// each one's transport waits for the upstream's 100 Continue.
func waitForContinue(hops []proxyhops.Hop) bool {
	for _, hop := range hops {
		if !hop.Transport.HTTP() || hop.Transport.ExpectContinueTimeout <= 0 {
			return false
		}
	}
	return len(hops) > 0
}
