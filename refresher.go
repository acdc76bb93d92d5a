package oauth2upstream

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
)

// Refresh modes (the `refresh` option).
const (
	// modeProactive refreshes ahead of a known expiry, without holding up
	// requests while the current token is valid, and on a trigger status.
	modeProactive = "proactive"
	// modeReactive refreshes only when the upstream answers a trigger
	// status: the classic "wait for the 401".
	modeReactive = "reactive"
	// modeAlways makes a grant before every request, as some providers
	// want; requests that arrive during a grant share it.
	modeAlways = "always"
)

// Backoff after a temporary refresh failure: no new grant is attempted
// before it ends, so a dead token endpoint is not hammered by every request.
const (
	minFailureBackoff = time.Second
	maxFailureBackoff = 30 * time.Second
)

// storeTimeout bounds one refresh's keystore work: waiting for the lock,
// reading, and writing the new key set.
const storeTimeout = 30 * time.Second

// credential is a key set ready for requests: the document, and what every
// request reads from it, worked out once (the access token is raw JSON in
// the document, and decoding it per request costs six allocations).
type credential struct {
	ks             *keystore.KeySet
	header         string
	hasAccessToken bool // ks.Token.AccessToken() != ""
}

// usable reports whether the credential's access token can be sent at now.
func (c *credential) usable(now time.Time) bool { return !c.expiring(now, 0) }

// expiring is ks.Expiring(now, skew) without decoding the token.
func (c *credential) expiring(now time.Time, skew time.Duration) bool {
	return !c.hasAccessToken || c.ks.ExpiresWithin(now, skew)
}

// flight is one refresh in progress for a key set; requests that need it
// wait on done and share its result.
type flight struct {
	done chan struct{}
	cred *credential
	err  error
}

// keySetState is the in-process state of one key set.
type keySetState struct {
	mu sync.Mutex // guards every field below

	cred    *credential      // the key set in use; never nil
	flight  *flight          // the refresh in progress, or nil
	failure *RefreshError    // the last refresh failure, nil after a success
	retryAt time.Time        // after a temporary failure: no grant before this
	backoff time.Duration    // the current temporary-failure backoff
	unsaved *keystore.KeySet // granted, but not yet accepted by the keystore

	lastRefresh time.Time // when the last refresh ended, zero before one
}

// Refresher keeps the tokens of every key set a handler uses: it loads them
// from the keystore, makes at most one grant at a time per key set (and,
// through the keystore's lock, per cluster), and stores each new key set
// before anything uses it.
type Refresher struct {
	store     keystore.Store
	client    *tokenClient
	mode      string
	skew      time.Duration
	seedName  string // the key set that seedToken seeds
	seedToken string
	headerFor func(accessToken string) string
	maxWait   time.Duration // how long a request waits for a refresh; 0: no bound but its context
	// jitter spreads a backoff so that replicas that failed together do
	// not retry together; nil keeps backoffs exact (tests).
	jitter     func(time.Duration) time.Duration
	now        func() time.Time
	logger     *zap.Logger
	observer   refreshObserver
	flightsRun sync.WaitGroup // flights still running, waited for by Close

	mu     sync.Mutex // guards states
	states map[string]*keySetState
}

// Current returns the credential to send for key set name now, refreshing
// first when the mode or the token's expiry demands it.
func (r *Refresher) Current(ctx context.Context, name string) (*credential, error) {
	st, err := r.state(ctx, name)
	if err != nil {
		return nil, err
	}
	st.mu.Lock()
	now := r.now()
	cred := st.cred
	switch {
	case r.mode == modeAlways || !cred.usable(now):
		// A grant is due: unless a recent failure says it would fail again.
		if err := r.blockedLocked(ctx, st, name, now); err != nil {
			st.mu.Unlock()
			return nil, err
		}
	case r.mode == modeProactive && cred.expiring(now, r.skew):
		// Still valid: refresh in the background and keep serving it.
		if st.flight == nil && r.blockedLocked(ctx, st, name, now) == nil {
			r.startFlightLocked(st, name, cred.ks.Generation)
		}
		fallthrough
	default:
		st.mu.Unlock()
		return cred, nil
	}
	st.mu.Unlock()
	return r.await(ctx, st, name, cred.ks.Generation)
}

// Rejected is called when the upstream answered a trigger status to a
// request that carried generation gen. It returns a newer credential: the
// current one if it is already newer (no grant), else a refreshed one.
func (r *Refresher) Rejected(ctx context.Context, name string, gen int64) (*credential, error) {
	st, err := r.state(ctx, name)
	if err != nil {
		return nil, err
	}
	st.mu.Lock()
	if st.cred.ks.Generation > gen {
		cred := st.cred
		st.mu.Unlock()
		return cred, nil
	}
	if err := r.blockedLocked(ctx, st, name, r.now()); err != nil {
		st.mu.Unlock()
		return nil, err
	}
	st.mu.Unlock()
	return r.await(ctx, st, name, gen)
}

// Close waits for refreshes in flight: a grant that succeeded must be stored,
// whatever happens to the handler, or a rotated refresh token is lost.
func (r *Refresher) Close() { r.flightsRun.Wait() }

// state returns the state of key set name, loading (and seeding) it from the
// keystore the first time. Names that are not stored get no state, so
// placeholder-selected names cannot grow the map.
func (r *Refresher) state(ctx context.Context, name string) (*keySetState, error) {
	r.mu.Lock()
	st := r.states[name]
	r.mu.Unlock()
	if st != nil {
		return st, nil
	}
	ks, err := r.load(ctx, name)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if st = r.states[name]; st == nil {
		st = &keySetState{cred: r.credentialFor(ks)}
		r.states[name] = st
	}
	return st, nil
}

// blockedLocked returns the error a request gets instead of a new grant:
// the permanent failure of the current generation (unless the keystore now
// holds a newer one, which it adopts), or a temporary failure whose backoff
// has not ended. st.mu must be held.
func (r *Refresher) blockedLocked(ctx context.Context, st *keySetState, name string, now time.Time) error {
	if st.failure == nil || st.flight != nil {
		return nil
	}
	if st.failure.Temporary {
		if wait := st.retryAt.Sub(now); wait > 0 {
			blocked := *st.failure
			blocked.RetryAfter = wait
			return &blocked
		}
		return nil
	}
	// Permanent: only a new key set (another replica's rotation, an
	// operator's reseed) can help, and that shows in the keystore.
	stored, err := r.store.Load(ctx, name)
	if err == nil && stored.Generation > st.cred.ks.Generation {
		st.cred, st.failure = r.credentialFor(stored), nil
		return nil
	}
	return st.failure
}

// await joins the refresh in flight for the key set, or starts one, and
// waits for its result or for ctx to end.
func (r *Refresher) await(ctx context.Context, st *keySetState, name string, stale int64) (*credential, error) {
	st.mu.Lock()
	f := st.flight
	if f == nil {
		f = r.startFlightLocked(st, name, stale)
	}
	st.mu.Unlock()
	var timeout <-chan time.Time
	if r.maxWait > 0 {
		timer := time.NewTimer(r.maxWait)
		defer timer.Stop()
		timeout = timer.C
	}
	select {
	case <-f.done:
		return f.cred, f.err
	case <-ctx.Done():
		return nil, &RefreshError{KeySet: name, Code: codeTokenEndpointUnavailable, Temporary: true,
			Description: "request ended while waiting for the token refresh", Err: ctx.Err()}
	case <-timeout:
		// The refresh goes on and will be stored; this request stops waiting.
		return nil, &RefreshError{KeySet: name, Code: codeTokenEndpointUnavailable, Temporary: true,
			RetryAfter: time.Second, Description: fmt.Sprintf("token refresh took longer than max_wait (%s)", r.maxWait)}
	}
}

// startFlightLocked starts a refresh of a key set whose generation stale was
// found wanting. The refresh runs on its own goroutine and context: a client
// that goes away must not abort a grant between the token endpoint's answer
// and the keystore write. st.mu must be held.
func (r *Refresher) startFlightLocked(st *keySetState, name string, stale int64) *flight {
	f := &flight{done: make(chan struct{})}
	st.flight = f
	r.flightsRun.Add(1)
	go func() {
		defer r.flightsRun.Done()
		ctx, cancel := context.WithTimeout(context.Background(), 2*storeTimeout+r.client.timeout)
		defer cancel()
		cred, err := r.refresh(ctx, st, name, stale)

		st.mu.Lock()
		defer st.mu.Unlock()
		now := r.now()
		st.lastRefresh = now
		if err == nil {
			// An operator's PUT may have stored a newer generation meanwhile.
			if cred.ks.Generation >= st.cred.ks.Generation {
				st.cred = cred
			}
			st.failure, st.backoff, st.retryAt = nil, 0, time.Time{}
		} else {
			err = r.recordFailureLocked(st, name, err, now)
		}
		f.cred, f.err = cred, err
		st.flight = nil
		close(f.done)
	}()
	return f
}

// recordFailureLocked keeps a refresh failure so that further requests do
// not repeat the grant: permanent ones until the keystore changes, temporary
// ones for a doubling backoff. st.mu must be held.
func (r *Refresher) recordFailureLocked(st *keySetState, name string, err error, now time.Time) error {
	var re *RefreshError
	if !errors.As(err, &re) {
		re = &RefreshError{KeySet: name, Code: codeKeystoreUnavailable, Description: err.Error(), Temporary: true, Err: err}
	}
	if re.Temporary {
		st.backoff = min(max(2*st.backoff, minFailureBackoff), maxFailureBackoff)
		wait := st.backoff
		if r.jitter != nil {
			wait = r.jitter(wait)
		}
		wait = max(wait, re.RetryAfter)
		st.retryAt = now.Add(wait)
		re.RetryAfter = wait
	}
	st.failure = re
	return re
}

// refresh runs under the keystore's lock: re-read the key set, adopt it if
// another process already replaced generation stale, else store any key set
// granted earlier but not yet stored, else grant and store the result.
func (r *Refresher) refresh(ctx context.Context, st *keySetState, name string, stale int64) (*credential, error) {
	unlock, err := r.store.Lock(ctx, name)
	if err != nil {
		return nil, r.keystoreError(name, "lock", "taking the refresh lock", err)
	}
	defer func() {
		if err := unlock(); err != nil {
			r.logger.Warn("releasing key set lock", zap.String("key_set", name), zap.Error(err))
		}
	}()
	stored, err := r.load(ctx, name)
	if err != nil {
		return nil, err
	}
	if stored.Generation > stale && !stored.Expiring(r.now(), 0) {
		r.logger.Debug("adopted key set stored by another refresher",
			zap.String("key_set", name), zap.Int64("generation", stored.Generation))
		return r.credentialFor(stored), nil
	}
	if cred, done, err := r.storeUnsaved(ctx, st, stored); done {
		return cred, err
	}
	return r.grant(ctx, st, stored)
}

// storeUnsaved retries the keystore write of a key set granted by an earlier
// refresh. While one is pending no grant is made: its predecessor's refresh
// token may already be spent. done reports whether the refresh ends here.
func (r *Refresher) storeUnsaved(ctx context.Context, st *keySetState, stored *keystore.KeySet) (*credential, bool, error) {
	st.mu.Lock()
	pending := st.unsaved
	st.mu.Unlock()
	if pending == nil {
		return nil, false, nil
	}
	if pending.Generation != stored.Generation+1 {
		// The keystore moved on without it; what is stored wins.
		r.setUnsaved(st, nil)
		return nil, false, nil
	}
	if err := r.store.Save(ctx, pending); err != nil {
		return nil, true, r.keystoreError(stored.Name, "save", "storing the key set granted earlier", err)
	}
	r.setUnsaved(st, nil)
	r.watch().keySetStored(pending)
	r.logger.Info("stored key set granted earlier", zap.String("key_set", pending.Name), zap.Int64("generation", pending.Generation))
	return r.credentialFor(pending), true, nil
}

func (r *Refresher) setUnsaved(st *keySetState, ks *keystore.KeySet) {
	st.mu.Lock()
	st.unsaved = ks
	st.mu.Unlock()
}

// grant spends stored's refresh token (or the client credentials) and stores
// the whole response as the next generation before returning it.
func (r *Refresher) grant(ctx context.Context, st *keySetState, stored *keystore.KeySet) (*credential, error) {
	name := stored.Name
	start := r.now()
	r.logger.Info("refreshing key set", zap.String("key_set", name), zap.Int64("generation", stored.Generation), zap.String("grant", r.client.grantType))
	res, err := r.client.grant(ctx, name, stored.Token.RefreshToken())
	r.watch().grantDone(name, err, r.now().Sub(start))
	if err != nil {
		var re *RefreshError
		if errors.As(err, &re) && re.Code == "invalid_grant" {
			// Another process may have spent this refresh token and stored
			// its successor (a writer that did not take the lock).
			if again, lerr := r.store.Load(ctx, name); lerr == nil && again.Generation > stored.Generation {
				r.logger.Info("refresh token was spent elsewhere; adopted the stored successor",
					zap.String("key_set", name), zap.Int64("generation", again.Generation))
				return r.adoptOrGrant(ctx, st, again)
			}
		}
		r.logRefreshFailure(name, stored.Generation, start, err)
		return nil, err
	}
	next := stored.Next(res.token, res.expiry, r.now())
	if err := r.store.Save(ctx, next); err != nil {
		if errors.Is(err, keystore.ErrConflict) {
			// Our lock lapsed and another holder stored a newer generation:
			// the generation fenced our write, theirs is authoritative.
			if again, lerr := r.store.Load(ctx, name); lerr == nil && again.Generation > stored.Generation {
				r.logger.Warn("a newer key set was stored during our grant; adopted it",
					zap.String("key_set", name), zap.Int64("generation", again.Generation))
				return r.adoptOrGrant(ctx, st, again)
			}
		}
		r.setUnsaved(st, next)
		err = r.keystoreError(name, "save", "storing the new key set (kept in memory; no grant until it is stored)", err)
		r.logRefreshFailure(name, stored.Generation, start, err)
		return nil, err
	}
	r.watch().keySetStored(next)
	r.logger.Info("refreshed key set",
		zap.String("key_set", name),
		zap.Int64("generation", next.Generation),
		zap.Duration("duration", r.now().Sub(start)),
		zap.String("result", "ok"),
		zap.Bool("refresh_token_rotated", next.Token.RefreshToken() != stored.Token.RefreshToken()),
		zap.Timep("expiry", expiryField(next.Expiry)))
	return r.credentialFor(next), nil
}

// adoptOrGrant takes a newer stored key set: as it is when its access token
// is usable, else (an operator's seed) by granting with its refresh token.
// Generations only grow, so this ends.
func (r *Refresher) adoptOrGrant(ctx context.Context, st *keySetState, newer *keystore.KeySet) (*credential, error) {
	if !newer.Expiring(r.now(), 0) {
		return r.credentialFor(newer), nil
	}
	return r.grant(ctx, st, newer)
}

func (r *Refresher) logRefreshFailure(name string, gen int64, start time.Time, err error) {
	fields := []zap.Field{
		zap.String("key_set", name),
		zap.Int64("generation", gen),
		zap.Duration("duration", r.now().Sub(start)),
		zap.String("result", "error"),
	}
	var re *RefreshError
	if errors.As(err, &re) {
		fields = append(fields, zap.String("error_code", re.Code), zap.Bool("temporary", re.Temporary))
	}
	// RefreshError's message holds no token values (see its doc).
	r.logger.Error("refreshing key set failed", append(fields, zap.String("error", err.Error()))...)
}

// load reads key set name from the keystore. A missing key set is seeded
// from the refresh_token option when that names it, and starts empty for
// the client_credentials grant, which needs no seed.
func (r *Refresher) load(ctx context.Context, name string) (*keystore.KeySet, error) {
	ks, err := r.store.Load(ctx, name)
	switch {
	case err == nil:
		return ks, nil
	case !errors.Is(err, keystore.ErrNotFound):
		return nil, r.keystoreError(name, "load", "loading", err)
	case name == r.seedName && r.seedToken != "":
		seed := &keystore.KeySet{Name: name, Generation: 1, UpdatedAt: r.now().UTC(), Token: keystore.Token{}}
		seed.Token.SetString(keystore.FieldRefreshToken, r.seedToken)
		err := r.store.Save(ctx, seed)
		if errors.Is(err, keystore.ErrConflict) {
			return r.load(ctx, name) // seeded concurrently; use what won
		}
		if err != nil {
			return nil, r.keystoreError(name, "save", "storing the seed", err)
		}
		r.watch().keySetStored(seed)
		r.logger.Info("seeded key set from the refresh_token option", zap.String("key_set", name))
		return seed, nil
	case r.client.grantType == grantClientCredentials:
		return &keystore.KeySet{Name: name, Token: keystore.Token{}}, nil
	default:
		return nil, &RefreshError{KeySet: name, Code: codeNoKeySet, Err: err,
			Description: "no such key set in the keystore; seed it with the refresh_token option or store a key set document"}
	}
}

func (r *Refresher) credentialFor(ks *keystore.KeySet) *credential {
	accessToken := ks.Token.AccessToken()
	return &credential{ks: ks, header: r.headerFor(accessToken), hasAccessToken: accessToken != ""}
}

// keystoreError classifies a keystore failure, counted by operation (lock,
// load, save): a corrupt document needs a person (permanent), anything else
// may pass (temporary).
func (r *Refresher) keystoreError(name, operation, doing string, err error) *RefreshError {
	r.watch().keystoreFailed(operation)
	re := &RefreshError{KeySet: name, Code: codeKeystoreUnavailable, Temporary: true, Err: err,
		Description: fmt.Sprintf("keystore failed %s: %v", doing, err)}
	if errors.Is(err, keystore.ErrCorrupt) || errors.Is(err, keystore.ErrInvalidName) {
		re.Code, re.Temporary = codeKeystoreCorrupt, false
	}
	return re
}

// expiryField gives zap a nil time for an unknown expiry.
func expiryField(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}
