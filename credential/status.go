package credential

import (
	"context"
	"errors"
	"sort"
	"time"
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
	// State is ok; expiring (within the expiry skew, expired, or failing
	// temporarily while the token in use outlasts the backoff: a refresh
	// is due or under way); failing (a temporary failure whose backoff,
	// Retry-After included, outlasts the token in use: requests fail until
	// it ends); needs_reauthorization (a permanent failure: a person must
	// reseed it); or keystore_failing (a granted key set waits for the
	// keystore to accept it). Only ok and expiring are healthy.
	State string `json:"state"`
}

// Healthy reports whether the key set can serve requests.
// A failing key set (grants blocked past the token's expiry) is not.
func (s Status) Healthy() bool {
	return s.State == StateOK || s.State == StateExpiring
}

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
func (e *Engine) Statuses() []Status {
	e.mu.Lock()
	names := make([]string, 0, len(e.states))
	states := make(map[string]*keySetState, len(e.states))
	for name, st := range e.states {
		names = append(names, name)
		states[name] = st
	}
	e.mu.Unlock()
	sort.Strings(names)
	out := make([]Status, 0, len(names))
	for _, name := range names {
		out = append(out, e.statusOf(name, states[name]))
	}
	return out
}

func (e *Engine) statusOf(name string, st *keySetState) Status {
	st.mu.Lock()
	defer st.mu.Unlock()
	ks := st.cred.KeySet
	s := Status{
		Name:            name,
		Generation:      ks.Generation,
		Expiry:          optionalTime(ks.Expiry),
		HasRefreshToken: ks.Token.RefreshToken() != "",
		LastRefresh:     optionalTime(st.lastRefresh),
		State:           StateOK,
	}
	if !st.lastRefresh.IsZero() {
		s.LastResult = "ok"
	}
	if st.failure != nil {
		s.LastResult, s.ErrorCode = "error", st.failure.Code
	}
	now := e.now()
	switch {
	case st.unsaved != nil:
		s.State = StateKeystoreFailing
	case st.failure != nil && !st.failure.Temporary:
		s.State = StateNeedsReauthorization
	case st.failure != nil && !st.cred.usable(st.retryAt):
		// No grant before retryAt, and the token in use does not last
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
