package credential

import (
	"context"

	"go.uber.org/zap"
)

// A rejection of the token in use that makes no grant of its own (the
// generation is younger than the minimum refresh interval, or a temporary
// failure's backoff holds grants back) may come from another replica's
// grant: a provider that revokes the previous access token on every refresh
// (Hydra, fosite) kills this replica's token the moment the other one is
// granted, tens of milliseconds before that replica has stored its key set.
// Read once, the keystore still holds nothing newer. So the rejection waits
// for whoever holds the key set's refresh lock (the replica granting),
// re-reads under the lock, and takes up what it stored. One re-read runs at
// a time per key set; the rejections meanwhile share it.

// adoptNewer returns a key set newer than generation gen, with a usable
// access token, that the keystore holds, taking it up; else nil. It reads
// at once, and when that finds nothing newer it waits, bounded by the
// engine's max_wait and the request's context, for the keystore's refresh
// lock and reads again. seed reports a newer key set whose access token is
// not usable (an operator's seed, never sent): the caller refreshes it.
func (e *Engine) adoptNewer(ctx context.Context, st *keySetState, name string, gen int64) (cred *Credential, seed bool) {
	stored, refused := e.storedNewer(ctx, name, gen)
	if refused != nil {
		return nil, false
	}
	if stored != nil {
		if stored.Expiring(e.now(), minTokenLife) {
			return nil, true
		}
		return e.takeUp(st, name, stored), false
	}
	st.mu.Lock()
	r := e.recheckLocked(st, name, gen)
	st.mu.Unlock()
	timeout, stop := e.maxWaitTimer()
	defer stop()
	select {
	case <-r.done:
	case <-ctx.Done():
		return nil, false
	case <-timeout:
		return nil, false
	}
	if newer(r.cred.KeySet, gen) {
		return r.cred, false
	}
	return nil, false
}

// recheckLocked returns the re-read in progress for key set name, starting
// one when there is none: wait for the keystore's refresh lock, read the
// key set, release the lock, and take up a newer key set with a usable
// access token. Its result is the key set in use afterwards. It runs on its
// own context, bounded by storeTimeout. st.mu must be held.
func (e *Engine) recheckLocked(st *keySetState, name string, gen int64) *flight {
	if st.recheck != nil {
		return st.recheck
	}
	r := &flight{done: make(chan struct{})}
	st.recheck = r
	e.flightsRun.Add(1)
	go func() {
		defer e.flightsRun.Done()
		ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
		defer cancel()
		if unlock, err := e.store.Lock(ctx, name); err != nil {
			e.logger.Debug("re-reading a rejected key set: no lock", zap.String("key_set", name), zap.Error(err))
		} else {
			e.adoptStored(ctx, st, name, gen)
			if err := unlock(); err != nil {
				e.logger.Warn("releasing key set lock", zap.String("key_set", name), zap.Error(err))
			}
		}
		st.mu.Lock()
		r.cred = st.cred
		st.recheck = nil
		st.mu.Unlock()
		close(r.done)
	}()
	return r
}
