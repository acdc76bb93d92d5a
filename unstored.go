package oauth2upstream

import (
	"sync"

	"github.com/oauth2upstream/caddy-oauth2-upstream/credential"
)

// unstoredByKeystore holds, per keystore configuration, the key sets that
// were granted but not yet stored (credential.Unstored), shared by every
// handler of the process configured with that keystore. Caddy provisions a
// new config before it cleans up the old one, so a handler that stops
// while the keystore refuses its last grant leaves that key set to its
// successor over the same keystore, which stores it before any grant of its
// own, instead of spending a refresh token the provider already rotated.
// An entry stays for the life of the process: it is a map and a mutex per
// keystore configuration ever loaded.
var unstoredByKeystore struct {
	mu   sync.Mutex // guards sets
	sets map[string]*credential.Unstored
}

// unstoredFor returns the Unstored shared by the handlers whose keystore
// configuration (the keystore module's JSON, after defaults) is keystore.
func unstoredFor(keystore []byte) *credential.Unstored {
	unstoredByKeystore.mu.Lock()
	defer unstoredByKeystore.mu.Unlock()
	if unstoredByKeystore.sets == nil {
		unstoredByKeystore.sets = make(map[string]*credential.Unstored)
	}
	u := unstoredByKeystore.sets[string(keystore)]
	if u == nil {
		u = credential.NewUnstored()
		unstoredByKeystore.sets[string(keystore)] = u
	}
	return u
}
