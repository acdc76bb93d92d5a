package credential

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
)

// reason is why a refresh runs: its cause, and for a background cause the
// channel that closes when a request comes to wait for it (flight.promoted).
type reason struct {
	cause    string
	promoted <-chan struct{}
}

// refresh runs under the keystore's lock: re-read the key set, adopt it if
// another process already replaced generation stale, else store any key set
// granted earlier but not yet stored, else grant (in one of the engine's
// grant slots) and store the result.
func (e *Engine) refresh(ctx context.Context, name string, stale int64, why reason) (*Credential, error) {
	unlock, err := e.store.Lock(ctx, name)
	if err != nil {
		return nil, e.keystoreError(name, "lock", "taking the refresh lock", err)
	}
	defer func() {
		if err := unlock(); err != nil {
			e.logger.Warn("releasing key set lock", zap.String("key_set", name), zap.Error(err))
		}
	}()
	stored, err := e.load(ctx, name)
	if err != nil {
		return nil, err
	}
	if newer(stored, stale) && !stored.Expiring(e.now(), minTokenLife) {
		e.unstored.dropUpTo(name, stored.Generation)
		e.logger.Debug("adopted key set stored by another refresher",
			zap.String("key_set", name), zap.Int64("generation", stored.Generation))
		return e.credentialFor(stored), nil
	}
	if cred, done, err := e.storeUnsaved(ctx, stored); done {
		return cred, err
	}
	if why.cause == causeUnstored {
		// Nothing of this engine's waits any more (the keystore moved past
		// it): a save retry is no cause for a grant.
		return e.credentialFor(stored), nil
	}
	return e.grant(ctx, stored, why)
}

// storedNewer re-reads key set name and returns it when the keystore holds
// a generation newer than have (another replica's rotation, an operator's
// reseed), else nil. A failed read counts as nothing newer. A newer key set
// bound to another client is not returned: the error is its refusal.
func (e *Engine) storedNewer(ctx context.Context, name string, have int64) (*keystore.KeySet, error) {
	stored, err := e.store.Load(ctx, name)
	if err != nil || !newer(stored, have) {
		return nil, nil
	}
	if err := e.owns(stored); err != nil {
		return nil, err
	}
	return stored, nil
}

// storeUnsaved retries the keystore write of a key set granted earlier (by
// this engine, or by one that stopped: see Unstored). While one is pending
// no grant is made: its predecessor's refresh token may already be spent.
// done reports whether the refresh ends here. The keystore's lock must be
// held.
func (e *Engine) storeUnsaved(ctx context.Context, stored *keystore.KeySet) (*Credential, bool, error) {
	pending := e.unstored.get(stored.Name)
	if pending == nil || e.owns(pending) != nil {
		return nil, false, nil
	}
	if pending.Generation != stored.Generation+1 {
		// The keystore moved on without it; what is stored wins.
		e.unstored.dropUpTo(stored.Name, stored.Generation)
		return nil, false, nil
	}
	if err := e.store.Save(ctx, pending); err != nil {
		return nil, true, e.keystoreError(stored.Name, "save", "storing the key set granted earlier", err)
	}
	e.unstored.dropUpTo(pending.Name, pending.Generation)
	e.observer.KeySetStored(pending)
	e.logger.Info("stored key set granted earlier", zap.String("key_set", pending.Name), zap.Int64("generation", pending.Generation))
	return e.credentialFor(pending), true, nil
}

// grant spends stored's refresh token (or the client credentials) and stores
// the whole response as the next generation before returning it. When the
// keystore refuses it, the new key set waits in Unstored and grant returns
// it with the keystore's error: its access token serves from memory (the
// provider may have revoked its predecessor's), its refresh token is spent
// only once it is stored (DESIGN.md invariants 5 and 10).
func (e *Engine) grant(ctx context.Context, stored *keystore.KeySet, why reason) (*Credential, error) {
	name := stored.Name
	// The slot bounds the token requests in flight, not the keystore work
	// around them, which needs no bound of the token endpoint's.
	release, err := e.grantSlots.acquire(ctx, name, backgroundCause(why.cause), why.promoted)
	if err != nil {
		return nil, err
	}
	start := e.now()
	e.logger.Info("refreshing key set", zap.String("key_set", name), zap.Int64("generation", stored.Generation),
		zap.String("grant", e.client.Grant), zap.String("cause", why.cause))
	res, err := e.client.grant(e.client.proving(ctx, stored), name, stored.Token.RefreshToken())
	release()
	e.observer.GrantDone(name, err, e.now().Sub(start))
	if err != nil {
		var re *Error
		if errors.As(err, &re) && !re.Temporary {
			// A permanent failure is kept only while the keystore holds
			// nothing newer: another process may have spent this refresh
			// token and stored its successor (a writer that did not take
			// the lock), or an operator may have reseeded the key set.
			again, refused := e.storedNewer(ctx, name, stored.Generation)
			switch {
			case refused != nil:
				err = refused
			case again != nil:
				e.logger.Info("refresh token was spent elsewhere; adopted the stored successor",
					zap.String("key_set", name), zap.Int64("generation", again.Generation))
				return e.adoptOrGrant(ctx, again, why)
			}
		}
		e.logRefreshFailure(name, stored.Generation, start, err)
		return nil, err
	}
	next := e.bind(stored.Next(res.token, res.expiry, e.now()))
	noteRefreshExpiry(stored, next, res.refreshExpiry, true)
	res.keepProofKey(next)
	e.noteSendingFloor(next)
	if err := e.store.Save(ctx, next); err != nil {
		if errors.Is(err, keystore.ErrConflict) {
			// Our lock lapsed and another holder stored a newer generation:
			// the generation fenced our write, theirs is authoritative. If
			// it is another client's, ours must not be written over it.
			again, refused := e.storedNewer(ctx, name, stored.Generation)
			switch {
			case refused != nil:
				e.logRefreshFailure(name, stored.Generation, start, refused)
				return nil, refused
			case again != nil:
				e.logger.Warn("a newer key set was stored during our grant; adopted it",
					zap.String("key_set", name), zap.Int64("generation", again.Generation))
				return e.adoptOrGrant(ctx, again, why)
			}
		}
		e.unstored.put(next)
		err = e.keystoreError(name, "save", "storing the new key set (its access token serves from memory; no grant until it is stored)", err)
		e.logRefreshFailure(name, stored.Generation, start, err)
		return e.credentialFor(next), err
	}
	e.observer.KeySetStored(next)
	e.logger.Info("refreshed key set",
		zap.String("key_set", name),
		zap.Int64("generation", next.Generation),
		zap.Duration("duration", e.now().Sub(start)),
		zap.String("result", "ok"),
		zap.Bool("refresh_token_rotated", next.Token.RefreshToken() != stored.Token.RefreshToken()),
		zap.Timep("expiry", optionalTime(next.Expiry)))
	return e.credentialFor(next), nil
}

// adoptOrGrant takes a newer stored key set: as it is when its access token
// is usable, else (an operator's seed) by granting with its refresh token.
// Generations only grow, so this ends.
func (e *Engine) adoptOrGrant(ctx context.Context, successor *keystore.KeySet, why reason) (*Credential, error) {
	if !successor.Expiring(e.now(), minTokenLife) {
		return e.credentialFor(successor), nil
	}
	return e.grant(ctx, successor, why)
}

// noteSendingFloor logs, once per key set it is about to store, a token
// response whose expires_in is at or below the sending floor, whose expiry
// it therefore takes as unknown (belowSendingFloor): a provider that means
// such lifetimes gets a grant per trigger status, not per request, and the
// operator should know why its expires_in is not kept to.
func (e *Engine) noteSendingFloor(ks *keystore.KeySet) {
	if belowSendingFloor(ks.Token) {
		e.logger.Warn("token lifetime at or below the sending floor; its expiry is taken as unknown, renewed on a trigger status",
			zap.String("key_set", ks.Name), zap.Int64("generation", ks.Generation),
			zap.Duration("expires_in", lifetimeOf(ks.Token)), zap.Duration("floor", minTokenLife))
	}
}

func (e *Engine) logRefreshFailure(name string, gen int64, start time.Time, err error) {
	fields := []zap.Field{
		zap.String("key_set", name),
		zap.Int64("generation", gen),
		zap.Duration("duration", e.now().Sub(start)),
		zap.String("result", "error"),
	}
	var re *Error
	if errors.As(err, &re) {
		fields = append(fields, zap.String("error_code", re.Code), zap.Bool("temporary", re.Temporary))
	}
	// Error's message holds no token values (see its doc).
	e.logger.Error("refreshing key set failed", append(fields, zap.String("error", err.Error()))...)
}

// keystoreError classifies a keystore failure, counted by operation (lock,
// load, save): a corrupt document needs a person (permanent), anything else
// may pass (temporary).
func (e *Engine) keystoreError(name, operation, doing string, err error) *Error {
	e.observer.KeystoreFailed(operation)
	re := &Error{KeySet: name, Code: CodeKeystoreUnavailable, Temporary: true, Err: err,
		Description: fmt.Sprintf("keystore failed %s: %v", doing, err)}
	if errors.Is(err, keystore.ErrCorrupt) || errors.Is(err, keystore.ErrInvalidName) {
		re.Code, re.Temporary = CodeKeystoreCorrupt, false
	}
	return re
}

// optionalTime is t, or nil for the zero time (an unknown expiry), for zap
// and JSON.
func optionalTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}
