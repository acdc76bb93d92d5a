package credential

import (
	"context"
	"errors"

	"go.uber.org/zap"

	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
)

// state returns the state of key set name, loading (and seeding) it from the
// keystore the first time. Names that are not stored get no state, so
// names chosen by clients cannot grow the map.
func (e *Engine) state(ctx context.Context, name string) (*keySetState, error) {
	e.mu.Lock()
	st := e.states[name]
	e.mu.Unlock()
	if st != nil {
		return st, nil
	}
	ks, err := e.load(ctx, name)
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if st = e.states[name]; st == nil {
		st = &keySetState{cred: e.credentialFor(ks)}
		// An engine that stopped (a reload) may have left a successor it
		// granted but could not store: it serves, and is stored first.
		if pending := e.unstored.get(name); newer(pending, ks.Generation) && e.owns(pending) == nil {
			st.cred, st.unsaved = e.credentialFor(pending), true
		}
		e.states[name] = st
	}
	return st, nil
}

// load reads key set name from the keystore, refusing one bound to another
// client. A missing key set is seeded from SeedToken when SeedName names it,
// and starts empty for the client_credentials and jwt_bearer grants, which
// need no seed.
func (e *Engine) load(ctx context.Context, name string) (*keystore.KeySet, error) {
	ks, err := e.store.Load(ctx, name)
	switch {
	case err == nil:
		if err := e.owns(ks); err != nil {
			return nil, err
		}
		return ks, nil
	case !errors.Is(err, keystore.ErrNotFound):
		return nil, e.keystoreError(name, "load", "loading", err)
	case name == e.seedName && e.seedToken != "":
		seed := e.bind(&keystore.KeySet{Name: name, Generation: 1, UpdatedAt: e.now().UTC(), Token: keystore.Token{}})
		seed.Token.SetString(keystore.FieldRefreshToken, e.seedToken)
		err := e.store.Save(ctx, seed)
		if errors.Is(err, keystore.ErrConflict) {
			return e.load(ctx, name) // seeded concurrently; use what won
		}
		if err != nil {
			return nil, e.keystoreError(name, "save", "storing the seed", err)
		}
		e.observer.KeySetStored(seed)
		e.logger.Info("seeded key set from the refresh_token option", zap.String("key_set", name))
		return seed, nil
	case SeedlessGrant(e.client.Grant):
		return e.bind(&keystore.KeySet{Name: name, Token: keystore.Token{}}), nil
	default:
		return nil, &Error{KeySet: name, Code: CodeNoKeySet, Err: err,
			Description: "no such key set in the keystore; seed it with the refresh_token option or store a key set document"}
	}
}
