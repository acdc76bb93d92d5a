package credential

import (
	"time"

	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
)

// Observer learns what an Engine does, for metrics and change
// notifications. Its methods must not block.
type Observer interface {
	// GrantDone follows every grant attempt; err is nil on success.
	GrantDone(keySet string, err error, took time.Duration)
	// KeySetStored follows every key set this process stored.
	KeySetStored(ks *keystore.KeySet)
	// KeystoreFailed counts a failed keystore operation: lock, load, save.
	KeystoreFailed(operation string)
	// KeySetStateChanged follows every change of a key set's state (see
	// Status.State), the first look at a key set included.
	KeySetStateChanged(change StateChange)
	// KeySetRefreshExpiring follows, once per generation, a key set whose
	// refresh token expires soon with no refresh to put that off
	// (Status.RefreshExpiring).
	KeySetRefreshExpiring(warning RefreshWarning)
}

// StateChange is a key set's move from one state (Status.State) to
// another. It holds no token value.
type StateChange struct {
	KeySet     string
	Generation int64
	// From is "" when the engine first looks at the key set.
	From, To string
	// ErrorCode is the code of the failure that To reports, if any.
	ErrorCode string
	At        time.Time
}

// failed reports whether the change is into a state that needs attention
// from a healthy one, or from another such state.
func (c StateChange) failed() bool { return !healthyState(c.To) && c.To != c.From }

// recovered reports whether the change is from a state that needed
// attention back to a healthy one.
func (c StateChange) recovered() bool {
	return c.From != "" && !healthyState(c.From) && healthyState(c.To)
}

// Observers passes what an Engine does to each of its observers in turn.
type Observers []Observer

// GrantDone implements Observer.
func (o Observers) GrantDone(keySet string, err error, took time.Duration) {
	for _, x := range o {
		x.GrantDone(keySet, err, took)
	}
}

// KeySetStored implements Observer.
func (o Observers) KeySetStored(ks *keystore.KeySet) {
	for _, x := range o {
		x.KeySetStored(ks)
	}
}

// KeystoreFailed implements Observer.
func (o Observers) KeystoreFailed(operation string) {
	for _, x := range o {
		x.KeystoreFailed(operation)
	}
}

// KeySetStateChanged implements Observer.
func (o Observers) KeySetStateChanged(change StateChange) {
	for _, x := range o {
		x.KeySetStateChanged(change)
	}
}

// KeySetRefreshExpiring implements Observer.
func (o Observers) KeySetRefreshExpiring(warning RefreshWarning) {
	for _, x := range o {
		x.KeySetRefreshExpiring(warning)
	}
}

// Interface guards
var (
	_ Observer = Observers(nil)
	_ Observer = (*Notifier)(nil)
)
