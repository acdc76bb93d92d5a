package oauth2upstream

import (
	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/oauth2upstream/caddy-oauth2-upstream/internal/proxyhops"
)

// warnExpectWithoutTimeout logs, once per handler, when upstream_expect can
// send "Expect: 100-continue" upstream but a reverse_proxy after the
// handler has no expect_continue_timeout. Go's transport then sends the
// body at once, without waiting for the upstream's 100 Continue (the
// net/http Transport.ExpectContinueTimeout doc: "Zero means no timeout and
// causes the body to be sent immediately"): an API that answers 401 to a
// revoked token before reading the upload, and closes the connection, cuts
// the upload off, and the transport reports the write error, a 502 to the
// client, instead of the 401 that would refresh and replay. And no body
// takes the zero-copy path (zero_copy_min), since none waits for a 100
// Continue: each is kept for a replay, as without it.
func (h *Handler) warnExpectWithoutTimeout(ctx caddy.Context) {
	if h.UpstreamExpect == "off" {
		return
	}
	_, hops := proxyhops.OfServer(ctx)
	for _, hop := range hops {
		if hop.Transport.HTTP() && hop.Transport.ExpectContinueTimeout <= 0 {
			h.logger.Warn("reverse_proxy after oauth2_upstream has no expect_continue_timeout: an upstream that rejects a token before reading an upload and closes the connection gets the body anyway and the client a 502, not a refresh and replay, and every upload is copied for a replay (zero_copy_min needs it); set it in reverse_proxy's transport (transport http { expect_continue_timeout 1s }), or set upstream_expect off",
				zap.String("upstream_expect", h.UpstreamExpect))
			return
		}
	}
}
