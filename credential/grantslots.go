package credential

import (
	"context"
	"fmt"
)

// DefaultMaxConcurrentGrants is Config.MaxConcurrentGrants's default: what
// a token endpoint's rate limits tolerate from one client. With grants of
// 20 ms that is up to 400 grants a second.
const DefaultMaxConcurrentGrants = 8

// grantSlots bounds the token requests of an engine in flight at once, so
// that when many tokens expire together (accounts connected in one batch,
// a restart after an outage) the token endpoint sees a steady stream of
// grants rather than thousands at once, which it would rate-limit. The
// keystore work around a grant (lock, read, save) holds no slot.
// Refreshes that no request waits for (proactive, keepalive) may take only
// some of the slots: a request whose token has expired, or was rejected,
// is not queued behind a backlog of them. A nil *grantSlots is unbounded.
type grantSlots struct {
	all        chan struct{} // every refresh takes one
	background chan struct{} // a background refresh takes one too
}

func newGrantSlots(limit int) *grantSlots {
	if limit < 0 {
		return nil
	}
	if limit == 0 {
		limit = DefaultMaxConcurrentGrants
	}
	// With more than one slot, at least one stays for urgent refreshes.
	return &grantSlots{all: make(chan struct{}, limit), background: make(chan struct{}, max(1, limit*3/4))}
}

// backgroundCause reports whether a refresh for cause is one no request
// waits for.
func backgroundCause(cause string) bool {
	return cause == causeExpiring || cause == causeKeepalive || cause == causeUnstored
}

// acquire waits for a slot for a refresh of key set name, or for ctx to
// end. A background refresh waits for a background slot first, unless
// promoted closes meanwhile: a request came to wait for it. release gives
// the slots back.
func (s *grantSlots) acquire(ctx context.Context, name string, background bool, promoted <-chan struct{}) (release func(), err error) {
	if s == nil {
		return func() {}, nil
	}
	tookBackground := false
	if background {
		select {
		case s.background <- struct{}{}:
			tookBackground = true
		case <-promoted:
		case <-ctx.Done():
			return nil, s.timeout(ctx, name)
		}
	}
	select {
	case s.all <- struct{}{}:
	case <-ctx.Done():
		if tookBackground {
			<-s.background
		}
		return nil, s.timeout(ctx, name)
	}
	return func() {
		<-s.all
		if tookBackground {
			<-s.background
		}
	}, nil
}

func (s *grantSlots) timeout(ctx context.Context, name string) error {
	return &Error{KeySet: name, Code: CodeTokenEndpointUnavailable, Temporary: true, Err: ctx.Err(),
		Description: fmt.Sprintf("waited too long for one of the %d grant slots (max_concurrent_grants)", cap(s.all))}
}
