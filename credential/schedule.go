package credential

import "time"

// Schedule is when the engine next acts on a key set by itself, as far as
// it can tell: what an operator wants to see beside its Status. A zero time
// means none is planned or it is unknown.
type Schedule struct {
	// UpdatedAt is when the generation in use was made.
	UpdatedAt time.Time
	// ProactiveRefresh is when a proactive refresh becomes due: the first
	// request from then on starts one in the background. Zero outside the
	// proactive mode, or when the token's expiry is unknown.
	ProactiveRefresh time.Time
	// Keepalive is when an unused refresh token is refreshed to keep it
	// alive (within a check interval of it): once the keepalive period
	// has passed, or halfway through the refresh token's announced life
	// if that comes first. Zero without a refresh token, or with the
	// keepalive off.
	Keepalive time.Time
	// RetryAt is when a request that needs a new token may make a grant
	// again after a temporary failure; refreshes that no request waits for
	// wait until BackgroundRetryAt (see urgentFailureBackoff).
	RetryAt           time.Time
	BackgroundRetryAt time.Time
}

// Schedule returns the schedule of key set name, which must be loaded
// (Status loads it); ok is false when it is not.
func (e *Engine) Schedule(name string) (s Schedule, ok bool) {
	e.mu.Lock()
	st := e.states[name]
	e.mu.Unlock()
	if st == nil {
		return Schedule{}, false
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	cred := st.cred
	ks := cred.KeySet
	s.UpdatedAt = ks.UpdatedAt
	if e.mode == ModeProactive && !ks.Expiry.IsZero() && cred.hasAccessToken {
		s.ProactiveRefresh = ks.Expiry.Add(-cred.proactiveSkew(e.skew))
	}
	if e.keepalive > 0 && ks.Token.RefreshToken() != "" && !ks.UpdatedAt.IsZero() {
		s.Keepalive = ks.UpdatedAt.Add(e.keepalive)
		if aim := refreshAim(ks); !aim.IsZero() && aim.Before(s.Keepalive) {
			s.Keepalive = aim
		}
	}
	if st.failure != nil && st.failure.Temporary {
		s.RetryAt, s.BackgroundRetryAt = st.urgentRetryAt, st.retryAt
	}
	return s, true
}
