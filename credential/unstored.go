package credential

import (
	"context"
	"errors"
	"maps"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
)

// Retries of Close's last attempt to store the key sets granted but not
// yet stored.
const (
	closeSaveTime       = 5 * time.Second
	closeSaveMinBackoff = 250 * time.Millisecond
)

// Unstored holds the key sets that were granted but that the keystore has
// not accepted yet, by name. Their predecessors' refresh tokens may already
// be spent, so until such a key set is stored no grant may be made for its
// name. Engines over one keystore in one process share an Unstored
// (Config.Unstored), so that an engine that stops (a config reload) leaves
// what it could not store to its successor, which stores it before any
// grant of its own, instead of spending a refresh token the provider
// already rotated.
type Unstored struct {
	mu     sync.Mutex // guards byName
	byName map[string]*keystore.KeySet
}

// NewUnstored returns an empty Unstored.
func NewUnstored() *Unstored {
	return &Unstored{byName: make(map[string]*keystore.KeySet)}
}

// names returns the names that have a key set waiting, sorted.
func (u *Unstored) names() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return slices.Sorted(maps.Keys(u.byName))
}

func (u *Unstored) get(name string) *keystore.KeySet {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.byName[name]
}

// put keeps ks as the key set waiting for its name, unless a newer one
// already waits.
func (u *Unstored) put(ks *keystore.KeySet) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if have := u.byName[ks.Name]; have == nil || newer(ks, have.Generation) {
		u.byName[ks.Name] = ks
	}
}

// dropUpTo forgets the key set waiting for name when its generation is at
// most gen: it was stored, or the keystore moved past it.
func (u *Unstored) dropUpTo(name string, gen int64) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if have := u.byName[name]; have != nil && have.Generation <= gen {
		delete(u.byName, name)
	}
}

// saveUnstored tries to store every waiting key set this engine's client
// owns, retrying with a doubling backoff until all are stored or ctx ends.
// It returns the names still waiting.
func (e *Engine) saveUnstored(ctx context.Context) []string {
	backoff := closeSaveMinBackoff
	for {
		var waiting []string
		for _, name := range e.unstored.names() {
			if !e.storeWaiting(ctx, name) {
				waiting = append(waiting, name)
			}
		}
		if len(waiting) == 0 || waitFor(ctx, backoff) != nil {
			return waiting
		}
		backoff *= 2
	}
}

// storeWaiting stores the key set waiting for name under the keystore's
// lock, and reports whether none waits any more. A key set bound to another
// client is left for its own engine.
func (e *Engine) storeWaiting(ctx context.Context, name string) bool {
	pending := e.unstored.get(name)
	if pending == nil {
		return true
	}
	if e.owns(pending) != nil {
		return false
	}
	unlock, err := e.store.Lock(ctx, name)
	if err != nil {
		return false
	}
	defer unlock()
	stored, err := e.store.Load(ctx, name)
	if err != nil && !errors.Is(err, keystore.ErrNotFound) {
		return false
	}
	if stored == nil {
		stored = &keystore.KeySet{Name: name}
	}
	_, _, err = e.storeUnsaved(ctx, stored)
	return err == nil
}

// closeUnstored is Close's last attempt to store what waits; what it cannot
// store stays in the shared Unstored for a successor, and is logged.
func (e *Engine) closeUnstored() {
	if len(e.unstored.names()) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), e.closeSaveTime)
	defer cancel()
	for _, name := range e.saveUnstored(ctx) {
		ks := e.unstored.get(name)
		if ks == nil {
			continue
		}
		e.logger.Error("stopping with a granted key set the keystore has not accepted; an engine over the same keystore in this process stores it before any grant, a process exit loses it",
			zap.String("key_set", name), zap.Int64("generation", ks.Generation))
	}
}
