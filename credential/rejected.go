package credential

import (
	"context"
	"errors"
	"time"

	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
)

// Rejected is called when the upstream rejected a request that carried
// generation gen of key set name. It returns a newer credential, with no
// grant when one exists: the one in use if it is already newer, the result
// of a refresh in flight, or a newer key set the keystore holds. Else it
// refreshes, unless gen is the key set in use and younger than the minimum
// refresh interval: then it makes no grant and returns a *TooRecentError,
// and the caller passes the rejection on (unless a permanent failure of
// the key set is recorded, which it returns as it would without one).
func (e *Engine) Rejected(ctx context.Context, name string, gen int64) (*Credential, error) {
	st, err := e.state(ctx, name)
	if err != nil {
		return nil, err
	}
	st.mu.Lock()
	if cred := st.cred; newer(cred.KeySet, gen) {
		st.mu.Unlock()
		return cred, nil
	}
	if f := st.flight; f != nil {
		st.mu.Unlock()
		return e.wait(ctx, f, name)
	}
	// A permanent failure answers instead of the minimum interval: no
	// grant could be made anyway, and it tells what a person must do.
	if permanent := st.failure != nil && !st.failure.Temporary; !permanent {
		if tooRecent := e.tooRecent(name, st.cred, e.now()); tooRecent != nil {
			st.mu.Unlock()
			return e.rejectedTooRecent(ctx, st, name, gen, tooRecent)
		}
	}
	return e.refreshRejectedLocked(ctx, st, name, gen)
}

// refreshRejectedLocked refreshes key set name after a rejection of
// generation gen, unless a recorded failure stands in for the grant. st.mu
// must be held; it is released on return.
//
// During a temporary failure's backoff the rejection waits for the holder
// of the keystore's refresh lock and takes up what it stored (recheck.go).
// With no holder and nothing newer it answers the recorded failure (503,
// Retry-After within about a second: the urgent backoff) rather than make
// the grant the lock would allow: a 401 does not prove the token dead (an
// API answers it for a missing permission too), and a grant per rejection
// would let every rejected request hammer a failing token endpoint, which
// the backoff exists to spare.
func (e *Engine) refreshRejectedLocked(ctx context.Context, st *keySetState, name string, gen int64) (*Credential, error) {
	blocked := e.blockedLocked(ctx, st, name, true)
	// The check may have released st.mu: another key set may be in use.
	if cred := st.cred; newer(cred.KeySet, gen) {
		st.mu.Unlock()
		return cred, nil
	}
	if blocked != nil {
		st.mu.Unlock()
		var re *Error
		if errors.As(blocked, &re) && re.Temporary {
			if cred, _ := e.adoptNewer(ctx, st, name, gen); cred != nil {
				return cred, nil
			}
		}
		return nil, blocked
	}
	f := e.flightLocked(st, name, gen, causeRejected)
	st.mu.Unlock()
	return e.wait(ctx, f, name)
}

// adoptStored takes up the key set the keystore holds for name when it is
// newer than generation gen and its access token is usable, and returns it;
// else nil. st.mu must not be held.
func (e *Engine) adoptStored(ctx context.Context, st *keySetState, name string, gen int64) *Credential {
	stored, refused := e.storedNewer(ctx, name, gen)
	if stored == nil || refused != nil || stored.Expiring(e.now(), minTokenLife) {
		return nil
	}
	return e.takeUp(st, name, stored)
}

// takeUp makes stored, newer than the key set in use and read from the
// keystore, the one in use, and returns the key set in use afterwards. A
// temporary failure recorded before is forgotten: the token endpoint
// answered another process since. st.mu must not be held.
func (e *Engine) takeUp(st *keySetState, name string, stored *keystore.KeySet) *Credential {
	st.mu.Lock()
	st.adoptLocked(e.credentialFor(stored))
	if st.failure != nil && st.failure.Temporary && st.flight == nil {
		st.clearFailureLocked()
	}
	cred := st.cred
	change := e.transitionLocked(st, name)
	st.mu.Unlock()
	e.report(change)
	return cred
}

// rejectedTooRecent answers the rejection of generation gen, too recent
// for a grant of its own. Another process may have stored a newer key set
// meanwhile, or be about to (a provider that revokes the previous access
// token on every refresh rejects this one for that): it is waited for and
// read (adoptNewer), and taken as it is when its access token is usable,
// or refreshed when it is not (an operator's seed, which this process
// never sent). Else, tooRecent.
func (e *Engine) rejectedTooRecent(ctx context.Context, st *keySetState, name string, gen int64, tooRecent error) (*Credential, error) {
	cred, seed := e.adoptNewer(ctx, st, name, gen)
	switch {
	case cred != nil:
		return cred, nil
	case seed:
		st.mu.Lock()
		return e.refreshRejectedLocked(ctx, st, name, gen)
	}
	return nil, tooRecent
}

// tooRecent returns a *TooRecentError when cred's generation is younger
// than the minimum refresh interval, by the engine's clock. A generation
// dated in the future (another replica's clock runs ahead) has no known
// age and does not hold a grant back: that costs at most one grant, whose
// generation this engine dates itself.
func (e *Engine) tooRecent(name string, cred *Credential, now time.Time) error {
	age := now.Sub(cred.KeySet.UpdatedAt)
	if e.minRefreshInterval <= 0 || age < 0 || age >= e.minRefreshInterval {
		return nil
	}
	return &TooRecentError{KeySet: name, Generation: cred.KeySet.Generation, Age: age, MinInterval: e.minRefreshInterval}
}
