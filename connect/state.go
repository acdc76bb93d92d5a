package connect

import (
	"crypto/rand"

	"github.com/caddyserver/caddy/v2"
)

// familyState is what every connect page of the process shares, kept
// across reloads while any page is live: the flows in progress, whose
// redirect back may come after a reload, and the key that signs the pages'
// CSRF tokens. When the last page goes, it goes too, and pages provisioned
// later start afresh, as after a restart: their flows and forms from before
// are refused, and a reload of the page mends it.
type familyState struct {
	flows   *flowStore
	csrfKey []byte
}

// Destruct implements caddy.Destructor: nothing to release.
func (*familyState) Destruct() error { return nil }

// states holds the one familyState, counting the live pages that use it.
var states = caddy.NewUsagePool()

const stateKey = "oauth2_upstream_connect"

// loadFamilyState returns the process's familyState, made if no page holds
// it, and counts one more page using it.
func loadFamilyState() (*familyState, error) {
	v, _, err := states.LoadOrNew(stateKey, func() (caddy.Destructor, error) {
		key := make([]byte, 32)
		rand.Read(key) // never fails (crypto/rand: it crashes the program instead)
		return &familyState{flows: &flowStore{flows: make(map[string]pendingFlow)}, csrfKey: key}, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*familyState), nil
}

// releaseFamilyState counts one page fewer using the familyState.
func releaseFamilyState() error {
	_, err := states.Delete(stateKey)
	return err
}
