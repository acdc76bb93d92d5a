package oauth2upstream

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
)

// Key set states shown by the admin API and the health route.
const (
	stateOK                   = "ok"
	stateExpiring             = "expiring"
	stateNeedsReauthorization = "needs_reauthorization"
	stateKeystoreFailing      = "keystore_failing"
)

// KeySetStatus is what operators see of a key set. It holds no token value.
type KeySetStatus struct {
	Name            string     `json:"name"`
	Generation      int64      `json:"generation"`
	Expiry          *time.Time `json:"expiry,omitempty"`
	HasRefreshToken bool       `json:"has_refresh_token"`
	LastRefresh     *time.Time `json:"last_refresh,omitempty"`
	// LastResult is "ok" or "error" after a refresh, "" before one.
	LastResult string `json:"last_result,omitempty"`
	// ErrorCode is the OAuth (or our) error code of the last failure.
	ErrorCode string `json:"error_code,omitempty"`
	// State is ok; expiring (within the expiry skew, expired, or failing
	// temporarily: a refresh is due or under way); needs_reauthorization
	// (a permanent failure: a person must reseed it); or keystore_failing
	// (a granted key set waits for the keystore to accept it).
	State string `json:"state"`
}

// Healthy reports whether the key set can serve requests.
func (s KeySetStatus) Healthy() bool {
	return s.State == stateOK || s.State == stateExpiring
}

// refreshObserver learns what the refresher does, for metrics and change
// notifications. Its methods must not block.
type refreshObserver interface {
	// grantDone follows every grant attempt; err is nil on success.
	grantDone(keySet string, err error, took time.Duration)
	// keySetStored follows every key set this process stored.
	keySetStored(ks *keystore.KeySet)
	// keystoreFailed counts a failed keystore operation: lock, load, save.
	keystoreFailed(operation string)
}

// noObserver is the observer of a refresher nobody watches.
type noObserver struct{}

func (noObserver) grantDone(string, error, time.Duration) {}
func (noObserver) keySetStored(*keystore.KeySet)          {}
func (noObserver) keystoreFailed(string)                  {}

// Status returns the status of key set name, loading it if needed.
func (r *Refresher) Status(ctx context.Context, name string) (KeySetStatus, error) {
	st, err := r.state(ctx, name)
	if err != nil {
		return KeySetStatus{}, err
	}
	return r.statusOf(name, st), nil
}

// Statuses returns the status of every key set this refresher has loaded,
// by name.
func (r *Refresher) Statuses() []KeySetStatus {
	r.mu.Lock()
	names := make([]string, 0, len(r.states))
	states := make(map[string]*keySetState, len(r.states))
	for name, st := range r.states {
		names = append(names, name)
		states[name] = st
	}
	r.mu.Unlock()
	sort.Strings(names)
	out := make([]KeySetStatus, 0, len(names))
	for _, name := range names {
		out = append(out, r.statusOf(name, states[name]))
	}
	return out
}

func (r *Refresher) statusOf(name string, st *keySetState) KeySetStatus {
	st.mu.Lock()
	defer st.mu.Unlock()
	ks := st.cred.ks
	s := KeySetStatus{
		Name:            name,
		Generation:      ks.Generation,
		Expiry:          expiryField(ks.Expiry),
		HasRefreshToken: ks.Token.RefreshToken() != "",
		LastRefresh:     expiryField(st.lastRefresh),
		State:           stateOK,
	}
	if !st.lastRefresh.IsZero() {
		s.LastResult = "ok"
	}
	if st.failure != nil {
		s.LastResult, s.ErrorCode = "error", st.failure.Code
	}
	now := r.now()
	switch {
	case st.unsaved != nil:
		s.State = stateKeystoreFailing
	case st.failure != nil && !st.failure.Temporary:
		s.State = stateNeedsReauthorization
	case st.failure != nil || st.cred.expiring(now, r.skew):
		s.State = stateExpiring
	}
	return s
}

// Put stores token as the next generation of key set name, seeding it if
// missing, and takes it into use at once. token must hold a refresh_token
// or an access_token.
func (r *Refresher) Put(ctx context.Context, name string, token keystore.Token) (*keystore.KeySet, error) {
	if err := keystore.ValidateName(name); err != nil {
		return nil, err
	}
	if token.AccessToken() == "" && token.RefreshToken() == "" {
		return nil, errors.New("the token holds neither an access_token nor a refresh_token")
	}
	unlock, err := r.store.Lock(ctx, name)
	if err != nil {
		return nil, r.keystoreError(name, "lock", "taking the refresh lock", err)
	}
	defer unlock()
	current, err := r.store.Load(ctx, name)
	switch {
	case errors.Is(err, keystore.ErrNotFound):
		current = &keystore.KeySet{Name: name}
	case err != nil && !errors.Is(err, keystore.ErrCorrupt):
		return nil, r.keystoreError(name, "load", "loading", err)
	case err != nil:
		// Replacing a corrupt document is what an operator's PUT is for;
		// its generation is unknown, so the write must be unconditional.
		return nil, fmt.Errorf("key set %q: the stored document is corrupt; remove it from the keystore first: %w", name, err)
	}
	now := r.now()
	next := current.Next(token, expiryOf(token, now), now)
	// Next keeps the old refresh token when the new token has none; an
	// operator who sends only an access token wants exactly that.
	if err := r.store.Save(ctx, next); err != nil {
		return nil, r.keystoreError(name, "save", "storing the key set", err)
	}
	r.watch().keySetStored(next)
	r.adopt(name, next)
	return next, nil
}

// adopt makes ks the key set in use, clearing any failure: a new key set
// deserves a fresh start.
func (r *Refresher) adopt(name string, ks *keystore.KeySet) {
	cred := r.credentialFor(ks)
	r.mu.Lock()
	st := r.states[name]
	if st == nil {
		st = &keySetState{cred: cred}
		r.states[name] = st
	}
	r.mu.Unlock()
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.cred.ks.Generation < ks.Generation {
		st.cred = cred
	}
	st.failure, st.backoff, st.retryAt, st.unsaved = nil, 0, time.Time{}, nil
}

// ForceRefresh makes a grant for key set name now, ignoring any backoff.
func (r *Refresher) ForceRefresh(ctx context.Context, name string) (*keystore.KeySet, error) {
	st, err := r.state(ctx, name)
	if err != nil {
		return nil, err
	}
	st.mu.Lock()
	gen := st.cred.ks.Generation
	st.failure, st.retryAt = nil, time.Time{}
	st.mu.Unlock()
	cred, err := r.await(ctx, st, name, gen)
	if err != nil {
		return nil, err
	}
	return cred.ks, nil
}

// watch returns the refresher's observer; a refresher built without one
// reports to nobody.
func (r *Refresher) watch() refreshObserver {
	if r.observer == nil {
		return noObserver{}
	}
	return r.observer
}
