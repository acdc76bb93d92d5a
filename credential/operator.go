package credential

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
)

// Put stores token as the next generation of key set name, seeding it if
// missing, and takes it into use at once. token must hold a refresh_token
// or an access_token. The key set is bound to the engine's client; one
// bound to another client is not written over (a permanent *Error of code
// CodeKeySetForeign). Over a document bound to no client, token starts
// the key set afresh: nothing of that document is kept but its
// generation, so this is how an operator seeds an unbound key set anew.
func (e *Engine) Put(ctx context.Context, name string, token keystore.Token) (*keystore.KeySet, error) {
	return e.PutConnected(ctx, name, token, nil)
}

// PutConnected is Put for a key set a person connected in a browser:
// callback holds the values the redirect back carried (see
// keystore.KeySet.Callback), which replace the stored ones; nil keeps
// them. It stores a code's key set through a keystore other than the one
// RedeemCode stored it in.
func (e *Engine) PutConnected(ctx context.Context, name string, token keystore.Token, callback map[string]string) (*keystore.KeySet, error) {
	if err := keystore.ValidateName(name); err != nil {
		return nil, err
	}
	if token.AccessToken() == "" && token.RefreshToken() == "" {
		return nil, errors.New("the token holds neither an access_token nor a refresh_token")
	}
	return e.storeNext(ctx, name, func(*keystore.KeySet) (grantResult, error) {
		res := resultOf(token, e.now())
		res.callback = callback
		return res, nil
	})
}

// storeNext stores the token response that produce returns as the next generation of
// key set name, seeding it if missing, and takes it into use at once. It
// holds the keystore's lock from before produce runs until the key set is
// stored, so produce (a code exchange, say) sees the generation it
// replaces, and the store's compare-and-swap on the generation fences any
// writer whose lock lapsed. A key set bound to another client is refused
// before produce runs; one bound to none is replaced, not continued
// (replaceable).
func (e *Engine) storeNext(ctx context.Context, name string, produce func(current *keystore.KeySet) (grantResult, error)) (*keystore.KeySet, error) {
	unlock, err := e.store.Lock(ctx, name)
	if err != nil {
		return nil, e.keystoreError(name, "lock", "taking the refresh lock", err)
	}
	defer unlock()
	current, err := e.store.Load(ctx, name)
	switch {
	case errors.Is(err, keystore.ErrNotFound):
		current = &keystore.KeySet{Name: name}
	case err != nil && !errors.Is(err, keystore.ErrCorrupt):
		return nil, e.keystoreError(name, "load", "loading", err)
	case err != nil:
		// Replacing a corrupt document is what an operator's PUT is for;
		// its generation is unknown, so the write must be unconditional.
		return nil, fmt.Errorf("key set %q: the stored document is corrupt; remove it from the keystore first: %w", name, err)
	default:
		if current, err = e.replaceable(current); err != nil {
			return nil, err
		}
	}
	res, err := produce(current)
	if err != nil {
		return nil, err
	}
	// Next keeps the old refresh token when the new token has none; an
	// operator who sends only an access token wants exactly that.
	next := e.bind(current.Next(res.token, res.expiry, e.now()))
	noteRefreshExpiry(current, next, res.refreshExpiry, false)
	if res.callback != nil {
		next.Callback = res.callback
	}
	res.keepProofKey(next)
	e.noteSendingFloor(next)
	if err := e.store.Save(ctx, next); err != nil {
		return nil, e.keystoreError(name, "save", "storing the key set", err)
	}
	e.observer.KeySetStored(next)
	e.Adopt(name, next)
	return next, nil
}

// Adopt makes ks the key set in use for name when it is newer than the one
// in use, and clears any failure: a new key set deserves a fresh start. It
// is for key sets another engine over the same keystore just stored. A key
// set bound to another client is not adopted: if name is loaded, the
// refusal becomes its failure, since the keystore now holds that key set.
func (e *Engine) Adopt(name string, ks *keystore.KeySet) {
	if refused := e.owns(ks); refused != nil {
		e.refuseAdoption(name, refused)
		return
	}
	cred := e.credentialFor(ks)
	e.mu.Lock()
	st := e.states[name]
	if st == nil {
		st = &keySetState{cred: cred}
		e.states[name] = st
	}
	e.mu.Unlock()
	e.unstored.dropUpTo(name, ks.Generation)
	st.mu.Lock()
	st.adoptLocked(cred)
	st.clearFailureLocked()
	change := e.transitionLocked(st, name)
	st.mu.Unlock()
	e.report(change)
}

// refuseAdoption records refused as the failure of key set name, when it
// is loaded.
func (e *Engine) refuseAdoption(name string, refused error) {
	e.logger.Warn("not adopting a key set bound to another client", zap.String("key_set", name), zap.Error(refused))
	e.mu.Lock()
	st := e.states[name]
	e.mu.Unlock()
	if st == nil {
		return
	}
	st.mu.Lock()
	e.recordFailureLocked(st, name, refused, e.now())
	change := e.transitionLocked(st, name)
	st.mu.Unlock()
	e.report(change)
}

// ForceRefresh makes a grant for key set name now, ignoring any backoff.
func (e *Engine) ForceRefresh(ctx context.Context, name string) (*keystore.KeySet, error) {
	st, err := e.state(ctx, name)
	if err != nil {
		return nil, err
	}
	st.mu.Lock()
	gen := st.cred.KeySet.Generation
	st.failure, st.retryAt, st.urgentRetryAt = nil, time.Time{}, time.Time{}
	f := e.flightLocked(st, name, gen, causeForced)
	st.mu.Unlock()
	cred, err := e.wait(ctx, f, name)
	if err != nil {
		return nil, err
	}
	return cred.KeySet, nil
}
