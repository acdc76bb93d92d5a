package credential

import (
	"context"
	"maps"
	"slices"
	"time"

	"go.uber.org/zap"

	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
)

// watch checks the engine's key sets every CheckInterval until ctx ends.
func (e *Engine) watch(ctx context.Context) {
	defer e.watching.Done()
	ticker := time.NewTicker(e.checkInterval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
		e.check(ctx)
	}
}

// check looks at every key set once: it notes the changes of state that
// time alone makes (a token nearing its expiry, a backoff outlasting it),
// stores the granted key sets that wait for the keystore (an engine that
// stopped may have left them), and keeps alive the key sets that have not
// been refreshed for the keepalive period. It makes one grant at a time.
func (e *Engine) check(ctx context.Context) {
	e.Statuses()
	for _, name := range e.unstored.names() {
		e.refreshNow(ctx, name, causeUnstored, func(*keystore.KeySet) bool {
			pending := e.unstored.get(name)
			return pending != nil && e.owns(pending) == nil
		})
	}
	if e.keepalive <= 0 {
		return
	}
	for _, name := range e.keepaliveNames(ctx) {
		if ctx.Err() != nil {
			return
		}
		e.refreshNow(ctx, name, causeKeepalive, e.keepaliveDue)
	}
}

// keepaliveDue reports whether ks has a refresh token to keep alive and
// has gone unrefreshed for the keepalive period, or is halfway through the
// life its provider announced for that refresh token (refreshAim). A key
// set whose age is unknown is due.
func (e *Engine) keepaliveDue(ks *keystore.KeySet) bool {
	if ks.Token.RefreshToken() == "" {
		return false
	}
	now := e.now()
	aim := refreshAim(ks)
	return now.Sub(ks.UpdatedAt) >= e.keepalive || (!aim.IsZero() && !now.Before(aim))
}

// keepaliveNames returns the key sets to keep alive: every stored one that
// Config.Serves accepts, when it is set and the keystore can list them;
// else the loaded ones.
func (e *Engine) keepaliveNames(ctx context.Context) []string {
	names := e.loadedNames()
	lister, ok := e.store.(keystore.Lister)
	if e.serves == nil || !ok {
		return names
	}
	stored, err := lister.Names(ctx)
	if err != nil {
		e.logger.Warn("listing key sets to keep alive", zap.Error(err))
		return names
	}
	for _, name := range stored {
		if e.serves(name) {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	return slices.Compact(names)
}

// loadedNames returns the names of the key sets the engine has loaded.
func (e *Engine) loadedNames() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Collect(maps.Keys(e.states))
}

// refreshNow refreshes key set name for cause when due says its key set
// needs it and no failure holds grants back, and waits for the result. Due
// is asked of the newest key set: the one in use, or a newer one the
// keystore holds, which is taken up first; the refresh too adopts, without
// a grant, a newer key set that another replica stores meanwhile.
func (e *Engine) refreshNow(ctx context.Context, name, cause string, due func(*keystore.KeySet) bool) {
	st, err := e.state(ctx, name)
	if err != nil {
		e.logger.Debug("not checking key set", zap.String("key_set", name), zap.String("cause", cause), zap.Error(err))
		return
	}
	st.mu.Lock()
	gen, wanted := st.cred.KeySet.Generation, due(st.cred.KeySet)
	st.mu.Unlock()
	if !wanted {
		return
	}
	// Another replica may have stored a newer key set that this one had
	// no request to take up since (its own keepalive, say): judge that one.
	if stored, refused := e.storedNewer(ctx, name, gen); stored != nil && refused == nil {
		st.mu.Lock()
		st.adoptLocked(e.credentialFor(stored))
		st.mu.Unlock()
	}
	st.mu.Lock()
	var f *flight
	// blockedLocked may release st.mu: what it returns holds for st as it
	// is afterwards, which the rest of the condition reads.
	if e.blockedLocked(ctx, st, name, false) == nil && st.flight == nil && due(st.cred.KeySet) {
		f = e.startFlightLocked(st, name, st.cred.KeySet.Generation, cause)
	}
	st.mu.Unlock()
	if f == nil {
		return
	}
	select {
	case <-f.done:
	case <-ctx.Done():
	}
}
