package credential

import (
	"container/heap"
	"context"
	"errors"
	"slices"
	"sort"
	"time"

	"go.uber.org/zap"
)

// Key set states, as operators see them.
const (
	StateOK                   = "ok"
	StateExpiring             = "expiring"
	StateFailing              = "failing"
	StateNeedsReauthorization = "needs_reauthorization"
	StateKeystoreFailing      = "keystore_failing"
)

// Status is what operators see of a key set. It holds no token value.
type Status struct {
	Name            string     `json:"name"`
	Generation      int64      `json:"generation"`
	Expiry          *time.Time `json:"expiry,omitempty"`
	HasRefreshToken bool       `json:"has_refresh_token"`
	LastRefresh     *time.Time `json:"last_refresh,omitempty"`
	// LastResult is "ok" or "error" after a refresh, "" before one.
	LastResult string `json:"last_result,omitempty"`
	// ErrorCode is the OAuth (or our) error code of the last failure.
	ErrorCode string `json:"error_code,omitempty"`
	// RefreshExpiry is when the refresh token expires, when the provider
	// announced it (keystore.KeySet.RefreshExpiry).
	RefreshExpiry *time.Time `json:"refresh_expiry,omitempty"`
	// RefreshExpiring flags a key set whose refresh token expires within
	// Config.ReauthorizeWarning and that no refresh will save: the
	// provider caps the refresh token's life, or the refreshes that would
	// extend it are overdue (refreshexpiry.go). It is a flag beside State,
	// not a state: the key set serves as State says until RefreshExpiry,
	// and a person should reauthorize the account before then.
	RefreshExpiring bool `json:"refresh_expiring,omitempty"`
	// State is ok; expiring (within the expiry skew, expired, or failing
	// temporarily while the token in use outlasts the backoff: a refresh
	// is due or under way); failing (a temporary failure whose backoff,
	// Retry-After included, outlasts the token in use: requests fail until
	// it ends); needs_reauthorization (a permanent failure: a person must
	// reseed it); or keystore_failing (a granted key set waits for the
	// keystore to accept it). Only ok and expiring are healthy.
	State string `json:"state"`
	// Provider names the provider of the handler that reports the status
	// (its provider option); "" when it names none. The engine leaves it
	// empty: the handler's registry entry fills it (live.Handler).
	Provider string `json:"provider,omitempty"`
}

// Healthy reports whether the key set can serve requests.
// A failing key set (grants blocked past the token's expiry) is not.
func (s Status) Healthy() bool { return healthyState(s.State) }

func healthyState(state string) bool { return state == StateOK || state == StateExpiring }

// Status returns the status of key set name, loading it if needed.
func (e *Engine) Status(ctx context.Context, name string) (Status, error) {
	st, err := e.state(ctx, name)
	if err != nil {
		return Status{}, err
	}
	return e.statusOf(name, st), nil
}

// Statuses returns the status of every key set the engine has loaded, by
// name.
func (e *Engine) Statuses() []Status { return e.StatusesAfter("", 0) }

// StatusesAfter returns the status of the loaded key sets whose names sort
// after after, by name: a page of at most limit of them (all when limit is
// zero or negative), for listings that page through many key sets without
// working out every status.
func (e *Engine) StatusesAfter(after string, limit int) []Status {
	e.mu.Lock()
	names := firstNamesAfter(e.states, after, limit)
	e.mu.Unlock()
	out := make([]Status, 0, len(names))
	for _, name := range names {
		e.mu.Lock()
		st := e.states[name]
		e.mu.Unlock()
		out = append(out, e.statusOf(name, st))
	}
	return out
}

// firstNamesAfter returns, sorted, the first limit names of states that
// sort after after (all of them when limit is zero or negative). It keeps
// the smallest names seen in a max-heap of limit names, so that a page of
// ten thousand key sets costs a pass over them, not a sort of them all.
func firstNamesAfter(states map[string]*keySetState, after string, limit int) []string {
	var first nameHeap
	for name := range states {
		switch {
		case name <= after:
		case limit <= 0 || len(first) < limit:
			heap.Push(&first, name)
		case name < first[0]:
			first[0] = name
			heap.Fix(&first, 0)
		}
	}
	slices.Sort(first)
	return first
}

// nameHeap is a max-heap of names: its first is the greatest.
type nameHeap []string

func (h nameHeap) Len() int           { return len(h) }
func (h nameHeap) Less(i, j int) bool { return h[i] > h[j] }
func (h nameHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *nameHeap) Push(x any)        { *h = append(*h, x.(string)) }
func (h *nameHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// statusOf returns the status of key set name, and reports the change of
// state it shows, if any.
func (e *Engine) statusOf(name string, st *keySetState) Status {
	st.mu.Lock()
	s := e.statusLocked(name, st)
	change := e.noteLocked(st, s)
	st.mu.Unlock()
	e.report(change)
	e.warnRefreshExpiring(s)
	return s
}

// transitionLocked works out the state of key set name and returns its
// change, nil when there is none. st.mu must be held; the change is
// reported (report) after it is released.
func (e *Engine) transitionLocked(st *keySetState, name string) *StateChange {
	return e.noteLocked(st, e.statusLocked(name, st))
}

// noteLocked records s's state as the key set's, and returns the change
// from the state recorded before, nil when it is the same. st.mu must be
// held.
func (e *Engine) noteLocked(st *keySetState, s Status) *StateChange {
	if s.State == st.state {
		return nil
	}
	change := &StateChange{KeySet: s.Name, Generation: s.Generation, From: st.state, To: s.State, At: e.now()}
	if !healthyState(s.State) || s.LastResult == "error" {
		change.ErrorCode = s.ErrorCode
	}
	st.state = s.State
	return change
}

// report logs a change of state, one line each, and passes it to the
// observer: a failure as a warning, a recovery as news, the comings and
// goings of a healthy key set (ok, expiring) for debugging.
func (e *Engine) report(change *StateChange) {
	if change == nil {
		return
	}
	fields := []zap.Field{
		zap.String("key_set", change.KeySet), zap.Int64("generation", change.Generation),
		zap.String("from", change.From), zap.String("to", change.To),
	}
	if change.ErrorCode != "" {
		fields = append(fields, zap.String("error_code", change.ErrorCode))
	}
	switch {
	case change.failed():
		e.logger.Warn("key set state changed", fields...)
	case change.recovered():
		e.logger.Info("key set state changed", fields...)
	default:
		e.logger.Debug("key set state changed", fields...)
	}
	e.observer.KeySetStateChanged(*change)
}

// statusLocked is the status of key set name. st.mu must be held.
func (e *Engine) statusLocked(name string, st *keySetState) Status {
	ks := st.cred.KeySet
	s := Status{
		Name:            name,
		Generation:      ks.Generation,
		Expiry:          optionalTime(ks.Expiry),
		HasRefreshToken: ks.Token.RefreshToken() != "",
		LastRefresh:     optionalTime(st.lastRefresh),
		State:           StateOK,
	}
	now := e.now()
	s.RefreshExpiry, s.RefreshExpiring = optionalTime(ks.RefreshExpiry), e.refreshExpiring(ks, now)
	if !st.lastRefresh.IsZero() {
		s.LastResult = "ok"
	}
	if st.failure != nil {
		s.LastResult, s.ErrorCode = "error", st.failure.Code
	}
	switch {
	case e.unstored.get(name) != nil:
		s.State = StateKeystoreFailing
	case st.failure != nil && !st.failure.Temporary:
		s.State = StateNeedsReauthorization
	case st.failure != nil && !st.cred.usable(st.urgentRetryAt):
		// No grant before urgentRetryAt, and the token in use does not last
		// until then: requests fail meanwhile.
		s.State = StateFailing
	case st.failure != nil || st.cred.expiring(now, st.cred.proactiveSkew(e.skew)):
		s.State = StateExpiring
	}
	return s
}

// FailedStatus is the status of a key set that could not be loaded: one
// that does not exist or whose document is corrupt needs a person; a
// keystore that cannot be read may recover.
func FailedStatus(name string, err error) Status {
	s := Status{Name: name, LastResult: "error", State: StateKeystoreFailing, ErrorCode: CodeKeystoreUnavailable}
	var re *Error
	if errors.As(err, &re) {
		s.ErrorCode = re.Code
		if !re.Temporary {
			s.State = StateNeedsReauthorization
		}
	}
	return s
}

// stateSeverity orders states from healthy to most in need of attention.
func stateSeverity(state string) int {
	switch state {
	case StateOK:
		return 0
	case StateExpiring:
		return 1
	default:
		return 2
	}
}

// MergeStatuses keeps one status per name, sorted by name: the one with the
// highest generation (the newest key set, which the other engines adopt
// when they next use it) and, among equal generations, the least healthy.
func MergeStatuses(statuses []Status) []Status {
	byName := make(map[string]Status, len(statuses))
	for _, s := range statuses {
		cur, ok := byName[s.Name]
		if !ok || s.Generation > cur.Generation ||
			(s.Generation == cur.Generation && stateSeverity(s.State) > stateSeverity(cur.State)) {
			byName[s.Name] = s
		}
	}
	out := make([]Status, 0, len(byName))
	for _, s := range byName {
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}
