package credential

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// Backoff after a temporary refresh failure: no new grant is attempted
// before it ends, so a dead token endpoint is not hammered by every request.
// It has two lengths. Refreshes that no request waits for (proactive,
// keepalive, a save retried by the background check) back off from
// minFailureBackoff, doubling up to maxFailureBackoff. A request whose token
// cannot serve it (expired, missing, or rejected by the upstream) waits only
// urgentFailureBackoff, jittered, after the last failure: once the token
// endpoint answers again the first grant comes within about a second, not
// after a backoff that grew through an outage. A token endpoint's own
// Retry-After holds both back (up to Config.MaxRetryAfter).
const (
	minFailureBackoff    = time.Second
	maxFailureBackoff    = 30 * time.Second
	urgentFailureBackoff = time.Second
)

// storeTimeout bounds one refresh's keystore work: waiting for the lock,
// reading, and writing the new key set.
const storeTimeout = 30 * time.Second

// Causes of a refresh, logged with its grant: every grant has one.
const (
	causeExpiring  = "expiring"  // proactive: within the skew of its expiry
	causeExpired   = "expired"   // the token is expired or missing
	causeAlways    = "always"    // the always mode: a grant per request
	causeRejected  = "rejected"  // the upstream answered a trigger status
	causeForced    = "forced"    // an operator asked for it
	causeKeepalive = "keepalive" // not refreshed for the keepalive period
	causeUnstored  = "unstored"  // a granted key set waits for the keystore
)

// flight is one refresh in progress for a key set; requests that need it
// wait on done and share its result.
type flight struct {
	done chan struct{}
	cred *Credential
	err  error

	background bool          // started with no request waiting for it
	promoted   chan struct{} // closed when a request comes to wait for a background flight
}

// promoteLocked marks a background flight as one a request waits for, so
// that it does not queue behind other background refreshes for a grant
// slot. The key set's mutex must be held.
func (f *flight) promoteLocked() {
	if f.background {
		f.background = false
		close(f.promoted)
	}
}

// keySetState is the in-process state of one key set.
type keySetState struct {
	mu sync.Mutex // guards every field below

	cred    *Credential // the key set in use; never nil
	flight  *flight     // the refresh in progress, or nil
	recheck *flight     // the keystore re-read after a rejection in progress (recheck.go), or nil
	// unsaved: cred was granted but the keystore has not taken it yet (it
	// waits in Unstored). It serves requests from memory; its refresh token
	// is not spent until it is stored, and every request retries the save.
	unsaved bool
	failure *Error // the last refresh failure, nil after a success
	// After a temporary failure: no background grant before retryAt, and
	// none for a request that needs a token before urgentRetryAt.
	retryAt       time.Time
	urgentRetryAt time.Time
	backoff       time.Duration // the current background backoff

	lastRefresh time.Time // when the last refresh ended, zero before one
	state       string    // the state last reported (Status.State), "" before
}

// adoptLocked makes cred the credential in use when it is newer. st.mu must
// be held.
func (st *keySetState) adoptLocked(cred *Credential) {
	if newer(cred.KeySet, st.cred.KeySet.Generation) {
		st.cred = cred
	}
}

// clearFailureLocked forgets the last failure and its backoff. st.mu must
// be held.
func (st *keySetState) clearFailureLocked() {
	st.failure, st.backoff, st.retryAt, st.urgentRetryAt = nil, 0, time.Time{}, time.Time{}
}

// blockedLocked returns the error a request gets instead of a new grant:
// the permanent failure of the current generation (unless the keystore now
// holds a newer one, which it adopts), or a temporary failure whose backoff
// has not ended: the urgent one when urgent (a request needs a token that
// the one in use cannot give), else the background one. st.mu must be
// held. To check a permanent failure against the keystore it releases st.mu
// during the read, so that no keystore I/O holds up the key set's other
// requests, and takes it again: the caller must look at st afresh
// afterwards. What it returns holds for st as it is on return.
func (e *Engine) blockedLocked(ctx context.Context, st *keySetState, name string, urgent bool) error {
	for {
		failure := st.failure
		if failure == nil || st.flight != nil {
			return nil
		}
		if failure.Temporary {
			retryAt := st.retryAt
			if urgent {
				retryAt = st.urgentRetryAt
			}
			if wait := retryAt.Sub(e.now()); wait > 0 {
				blocked := *failure
				blocked.RetryAfter = wait
				return &blocked
			}
			return nil
		}
		// Permanent: only a new key set (another replica's rotation, an
		// operator's reseed) can help, and that shows in the keystore.
		gen := st.cred.KeySet.Generation
		st.mu.Unlock()
		stored, refused := e.storedNewer(ctx, name, gen)
		st.mu.Lock()
		if st.failure != failure || st.cred.KeySet.Generation != gen {
			continue // changed during the read (a flight, an Adopt): decide again
		}
		switch {
		case refused != nil:
			// Another client's key set now holds the name: that is the failure.
			return e.recordFailureLocked(st, name, refused, e.now())
		case stored != nil:
			st.adoptLocked(e.credentialFor(stored))
			st.failure = nil
			return nil
		}
		return failure
	}
}

// flightLocked returns the refresh in flight for the key set, starting one
// for generation stale, for cause, when there is none. st.mu must be held.
func (e *Engine) flightLocked(st *keySetState, name string, stale int64, cause string) *flight {
	if st.flight != nil {
		if !backgroundCause(cause) {
			st.flight.promoteLocked()
		}
		return st.flight
	}
	return e.startFlightLocked(st, name, stale, cause)
}

// maxWaitTimer returns a channel that delivers once the engine's max_wait
// has passed (nil, which never delivers, without one), and the function
// that stops it.
func (e *Engine) maxWaitTimer() (<-chan time.Time, func()) {
	if e.maxWait <= 0 {
		return nil, func() {}
	}
	timer := time.NewTimer(e.maxWait)
	return timer.C, func() { timer.Stop() }
}

// wait waits for the result of refresh f, or for ctx to end.
func (e *Engine) wait(ctx context.Context, f *flight, name string) (*Credential, error) {
	timeout, stop := e.maxWaitTimer()
	defer stop()
	select {
	case <-f.done:
		return f.cred, f.err
	case <-ctx.Done():
		return nil, &Error{KeySet: name, Code: CodeTokenEndpointUnavailable, Temporary: true,
			Description: "request ended while waiting for the token refresh", Err: ctx.Err()}
	case <-timeout:
		// The refresh goes on and will be stored; this request stops waiting.
		return nil, &Error{KeySet: name, Code: CodeTokenEndpointUnavailable, Temporary: true,
			RetryAfter: time.Second, Description: fmt.Sprintf("token refresh took longer than max_wait (%s)", e.maxWait)}
	}
}

// startFlightLocked starts a refresh, for cause, of a key set whose
// generation stale was found wanting. The refresh runs on its own goroutine
// and context: a client that goes away must not abort a grant between the
// token endpoint's answer and the keystore write. st.mu must be held.
func (e *Engine) startFlightLocked(st *keySetState, name string, stale int64, cause string) *flight {
	f := &flight{done: make(chan struct{}), background: backgroundCause(cause), promoted: make(chan struct{})}
	st.flight = f
	e.flightsRun.Add(1)
	go func() {
		defer e.flightsRun.Done()
		ctx, cancel := context.WithTimeout(context.Background(), 2*storeTimeout+e.client.Timeout)
		defer cancel()
		cred, err := e.refresh(ctx, name, stale, reason{cause: cause, promoted: f.promoted})

		st.mu.Lock()
		now := e.now()
		st.lastRefresh = now
		switch {
		case err == nil:
			// An operator's PUT may have stored a newer generation meanwhile.
			st.adoptLocked(cred)
			st.clearFailureLocked()
		case cred != nil:
			// Granted, but the keystore refused it: it serves from memory
			// (DESIGN.md invariant 10), and the failure is kept for status.
			st.adoptLocked(cred)
			e.recordFailureLocked(st, name, err, now)
			err = nil
		default:
			err = e.recordFailureLocked(st, name, err, now)
		}
		st.unsaved = e.unstored.get(name) != nil
		f.cred, f.err = cred, err
		st.flight = nil
		change := e.transitionLocked(st, name)
		st.mu.Unlock()
		// Reported before the waiters go on, so that what they do next is
		// observed after this change.
		e.report(change)
		close(f.done)
	}()
	return f
}

// recordFailureLocked keeps a refresh failure so that further requests do
// not repeat the grant: permanent ones until the keystore changes, temporary
// ones for a backoff (see urgentFailureBackoff), or the token endpoint's
// Retry-After when it is longer, up to the engine's maximum: a year-long
// Retry-After must not hold a key set's grants back for a year. The error
// returned tells a request when it may try again: the urgent backoff's end.
// st.mu must be held.
func (e *Engine) recordFailureLocked(st *keySetState, name string, err error, now time.Time) error {
	var re *Error
	if !errors.As(err, &re) {
		re = &Error{KeySet: name, Code: CodeKeystoreUnavailable, Description: err.Error(), Temporary: true, Err: err}
	}
	if re.Temporary {
		st.backoff = min(max(2*st.backoff, minFailureBackoff), maxFailureBackoff)
		asked := min(re.RetryAfter, e.maxRetryAfter)
		background, urgent := e.jittered(st.backoff), e.jittered(urgentFailureBackoff)
		st.retryAt = now.Add(max(background, asked))
		st.urgentRetryAt = now.Add(max(urgent, asked))
		re.RetryAfter = max(urgent, asked)
	}
	st.failure = re
	return re
}

// jittered is d spread by the engine's jitter, or d itself without one.
func (e *Engine) jittered(d time.Duration) time.Duration {
	if e.jitter == nil {
		return d
	}
	return e.jitter(d)
}
