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

// Interface guards
var (
	_ Observer = Observers(nil)
	_ Observer = (*Notifier)(nil)
)
