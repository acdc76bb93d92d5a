package oauth2upstream

import (
	"fmt"
	"net/http"
	"slices"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/oauth2upstream/caddy-oauth2-upstream/credential"
)

// GrantOptions bound when the handler makes grants: which upstream answers
// count as a rejected token, how soon after a grant a rejection may cause
// another, and how long a token endpoint may hold grants back. Every grant
// has a cause, and a refresh token is not spent on a rejection that a new
// token would not cure. Handler embeds them, so their JSON fields sit
// beside the handler's own.
type GrantOptions struct {
	// RefreshOnInvalidToken makes a 401 whose WWW-Authenticate carries
	// error="invalid_token" (RFC 6750 section 3.1) a trigger, for an API
	// that says why it rejects: with it, and without 401 in RefreshOn, a
	// 401 with insufficient_scope, or with no error at all, goes to the
	// client unchanged and makes no grant. The Caddyfile spells it
	// `refresh_on invalid_token`; it cannot be combined with 401 in
	// RefreshOn, which triggers on every 401. Default: false.
	RefreshOnInvalidToken bool `json:"refresh_on_invalid_token,omitempty"`

	// MinRefreshInterval is the youngest a token may be for its rejection
	// to make a grant. A trigger answer to a token granted less than this
	// ago goes to the client as it came, with no grant (and, when a newer
	// token already exists, after one replay with it): the upstream
	// rejected a token it had just been given for some other reason, and
	// refreshing would only spend a refresh token per request (counted as
	// replays_total{outcome="too_recent"}). Zero or absent: the default,
	// 10s; -1 disables (the Caddyfile takes "off" and refuses 0).
	MinRefreshInterval caddy.Duration `json:"min_refresh_interval,omitempty"`

	// MaxRetryAfter caps how long a token endpoint's Retry-After holds
	// grants back, so that a provider's mistaken "Retry-After: 31536000"
	// does not stop refreshes for a year. Zero or absent: the default,
	// 5m (the Caddyfile refuses 0).
	MaxRetryAfter caddy.Duration `json:"max_retry_after,omitempty"`

	// Keepalive refreshes, in the background, every key set the handler
	// may serve (its key_set, or every stored name key_set_allow admits)
	// that has not been refreshed for this long, whether or not requests
	// use it: a refresh token that is never used dies (Microsoft's after
	// 90 days of inactivity, Google's after six months). Replicas that
	// share a keystore make one grant between them. Zero or absent: the
	// default, 7d; -1 disables (the Caddyfile takes "off" and refuses 0).
	Keepalive caddy.Duration `json:"keepalive,omitempty"`

	// ReauthorizeWarning is how long before a refresh token expires, when
	// the provider announces when that is (refresh_token_expires_in,
	// x_refresh_token_expires_in or refresh_expires_in) and no refresh
	// will put it off, that the key set is flagged (refresh_expiring in
	// its status, the caddy_oauth2_upstream_refresh_token_expiring gauge)
	// and, with notify, announced by a key_set.expiring notification, once
	// per generation: time for a person to connect the account again. The
	// keepalive renews such a key set halfway through its refresh token's
	// life, so a lifetime that each refresh extends is never flagged
	// unless those refreshes fail. Zero or absent: the default, 7d; -1
	// disables (the Caddyfile takes "off" and refuses 0).
	ReauthorizeWarning caddy.Duration `json:"reauthorize_warning,omitempty"`

	// MaxConcurrentGrants bounds the grants (token requests) the handler
	// has in flight at once:
	// when many tokens expire together (accounts connected in one batch,
	// a restart after an outage) the token endpoint sees a steady stream
	// of grants rather than thousands at once, which it would rate-limit.
	// Proactive and keepalive refreshes take at most three quarters of
	// them, so a request whose token has expired is not queued behind
	// those. Zero or absent: the default, 8; -1: no bound (the Caddyfile
	// takes "off").
	MaxConcurrentGrants int `json:"max_concurrent_grants,omitempty"`
}

func (g *GrantOptions) setDefaults() {
	if g.MinRefreshInterval == 0 {
		g.MinRefreshInterval = caddy.Duration(credential.DefaultMinRefreshInterval)
	}
	if g.MaxRetryAfter == 0 {
		g.MaxRetryAfter = caddy.Duration(credential.DefaultMaxRetryAfter)
	}
	if g.Keepalive == 0 {
		g.Keepalive = caddy.Duration(credential.DefaultKeepalive)
	}
	if g.ReauthorizeWarning == 0 {
		g.ReauthorizeWarning = caddy.Duration(credential.DefaultReauthorizeWarning)
	}
}

// validate checks the options, and that refreshOn (the handler's trigger
// statuses) does not contradict RefreshOnInvalidToken.
func (g *GrantOptions) validate(refreshOn []int) error {
	if g.RefreshOnInvalidToken && slices.Contains(refreshOn, http.StatusUnauthorized) {
		return fmt.Errorf("refresh_on: 401 triggers on every 401, and invalid_token only on a 401 whose WWW-Authenticate says error=\"invalid_token\"; list one of them")
	}
	if g.MinRefreshInterval < -1 {
		return fmt.Errorf("min_refresh_interval %s: must be positive, or -1 to disable", time.Duration(g.MinRefreshInterval))
	}
	if g.MaxConcurrentGrants < -1 {
		return fmt.Errorf("max_concurrent_grants %d: must be positive, or -1 for no bound", g.MaxConcurrentGrants)
	}
	if g.Keepalive < -1 {
		return fmt.Errorf("keepalive %s: must be positive, or -1 to disable", time.Duration(g.Keepalive))
	}
	if g.ReauthorizeWarning < -1 {
		return fmt.Errorf("reauthorize_warning %s: must be positive, or -1 to disable", time.Duration(g.ReauthorizeWarning))
	}
	if g.MaxRetryAfter < 0 {
		return fmt.Errorf("max_retry_after %s: must be positive", time.Duration(g.MaxRetryAfter))
	}
	return nil
}
