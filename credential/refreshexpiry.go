package credential

import (
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
)

// DefaultReauthorizeWarning is how long before its refresh token expires,
// when the provider announced when that is and refreshing cannot put it
// off, a key set is flagged (Status.RefreshExpiring) and announced
// (key_set.expiring): a week, time for a person to connect the account
// again.
const DefaultReauthorizeWarning = 7 * 24 * time.Hour

// The life of a refresh token, when the provider announces it
// (refreshLifetimeFields), is watched so that an account does not die on
// that date unannounced:
//
//   - The keepalive renews a key set halfway through its refresh token's
//     life (refreshAim), as well as once it is Config.Keepalive old, so a
//     provider whose refresh lifetime slides with each refresh (Intuit's
//     100 rolling days, Keycloak's session idle timeout) is refreshed in
//     time however short that lifetime is.
//   - A refresh that does not move the expiry later (refreshExtends) shows
//     that the provider caps it (a session maximum, or a lifetime counted
//     from the authorization): the key set is then
//     keystore.KeySet.RefreshExpiryFixed, no longer renewed for its
//     refresh token's sake, and flagged once within the warning of the
//     expiry.
//   - Otherwise the flag comes only when the renewals are overdue: within
//     the warning, and within a quarter of the refresh token's life, a
//     point the keepalive at half its life was meant to stay clear of.
//
// The flag is not a state (Status.State): the key set serves as before
// until its refresh token dies, and then needs reauthorization as any
// dead key set does.

// noteRefreshExpiry sets next's refresh token expiry after a grant that
// announced announced (zero: nothing), from prev; refreshed says that the
// grant spent prev's refresh token (a refresh, not a code exchange or an
// operator's token), whose outcome tells whether refreshing extends the
// expiry.
func noteRefreshExpiry(prev, next *keystore.KeySet, announced time.Time, refreshed bool) {
	switch {
	case !announced.IsZero():
		next.RefreshExpiry = announced.UTC()
		next.RefreshExpiryFixed = refreshed && !refreshExtends(prev, announced, next.UpdatedAt)
	case refreshed && !next.RefreshExpiry.IsZero():
		// Next kept the expiry of a refresh token that the response left
		// as it was: the refresh did not extend it.
		next.RefreshExpiryFixed = true
	}
}

// refreshExtends reports whether announced, a refresh token expiry that a
// refresh at now announced, moved prev's later by at least half the time
// since prev was made: a lifetime that slides with each refresh moves by
// all of it, one that is capped not at all. Nothing to compare with counts
// as extending.
func refreshExtends(prev *keystore.KeySet, announced, now time.Time) bool {
	if prev.RefreshExpiry.IsZero() {
		return true
	}
	if prev.UpdatedAt.IsZero() {
		return announced.After(prev.RefreshExpiry)
	}
	return announced.Sub(prev.RefreshExpiry) > now.Sub(prev.UpdatedAt)/2
}

// refreshAim is when the keepalive renews ks for its refresh token's sake:
// halfway through the life that the grant of ks announced for it. Zero
// when ks has no such life or refreshing does not extend it.
func refreshAim(ks *keystore.KeySet) time.Time {
	if ks.RefreshExpiry.IsZero() || ks.RefreshExpiryFixed || ks.UpdatedAt.IsZero() || !ks.RefreshExpiry.After(ks.UpdatedAt) {
		return time.Time{}
	}
	return ks.UpdatedAt.Add(ks.RefreshExpiry.Sub(ks.UpdatedAt) / 2)
}

// refreshExpiring reports whether ks's refresh token expires within the
// engine's reauthorization warning at now and refreshing is not putting it
// off (see the comment at the top of this file).
func (e *Engine) refreshExpiring(ks *keystore.KeySet, now time.Time) bool {
	if ks.RefreshExpiry.IsZero() || e.reauthorizeWarning < 0 {
		return false
	}
	left, within := ks.RefreshExpiry.Sub(now), e.reauthorizeWarning
	if life := ks.RefreshExpiry.Sub(ks.UpdatedAt); !ks.RefreshExpiryFixed && !ks.UpdatedAt.IsZero() && life > 0 {
		within = min(within, life/4)
	}
	return left <= within
}

// RefreshWarning says that a key set's refresh token expires soon and no
// refresh will put that off: a person must reauthorize the account by
// RefreshExpiry (key_set.expiring). It holds no token value.
type RefreshWarning struct {
	KeySet     string
	Generation int64
	// RefreshExpiry is when the refresh token expires.
	RefreshExpiry time.Time
	At            time.Time
}

// refreshWarnings remembers, per key set, the last generation announced
// as expiring, so that each generation is announced once.
type refreshWarnings struct {
	mu     sync.Mutex // guards warned
	warned map[string]int64
}

// first reports whether generation of key set name is announced for the
// first time, and notes it.
func (w *refreshWarnings) first(name string, generation int64) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.warned == nil {
		w.warned = make(map[string]int64)
	}
	if w.warned[name] >= generation {
		return false
	}
	w.warned[name] = generation
	return true
}

// warnRefreshExpiring logs and passes to the observer, once per
// generation, that s's refresh token expires soon (s.RefreshExpiring).
func (e *Engine) warnRefreshExpiring(s Status) {
	if !s.RefreshExpiring || s.RefreshExpiry == nil || !e.refreshWarned.first(s.Name, s.Generation) {
		return
	}
	w := RefreshWarning{KeySet: s.Name, Generation: s.Generation, RefreshExpiry: *s.RefreshExpiry, At: e.now()}
	e.logger.Warn("refresh token expires soon: reauthorize the account before then",
		zap.String("key_set", w.KeySet), zap.Int64("generation", w.Generation),
		zap.Time("refresh_expiry", w.RefreshExpiry), zap.Duration("left", w.RefreshExpiry.Sub(w.At)))
	e.observer.KeySetRefreshExpiring(w)
}

// KeySetRefreshExpiring queues key_set.expiring; it never blocks.
func (n *Notifier) KeySetRefreshExpiring(w RefreshWarning) {
	n.enqueue(w.KeySet, event{id: newEventID(), expiring: &w})
}
