package credential

import (
	"strings"

	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
)

// binding is the client this engine grants for: its token endpoint and
// client id, compared exactly as configured (after placeholder
// replacement). Normalizing URLs (case, default ports, trailing slashes)
// could only ever accept more key sets, so two spellings of one endpoint
// count as two clients: after changing the spelling, an operator removes
// the key sets bound to the old one from the keystore and seeds them again.
func (e *Engine) binding() keystore.Binding {
	return keystore.Binding{TokenURL: e.client.URL, ClientID: e.client.ClientID}
}

// owns is the one decision whether key set ks may become this engine's: be
// used (its access token sent upstream), refreshed (its refresh token sent
// to this engine's token endpoint) or written over. Every path by which a
// document enters the engine (the first load, a refresh's re-read, a newer
// generation found after a failure, Adopt, Put) asks it. A key set bound to
// this engine's client is its own; an unbound one (written before key sets
// were bound) is adopted and bound by the engine's next write. Any other
// is refused with a permanent *Error of code CodeKeySetForeign, whose
// message names the fields that differ but not their values: it reaches
// the clients of a handler that may have been steered to the key set.
func (e *Engine) owns(ks *keystore.KeySet) error {
	if ks.Client == nil {
		return nil
	}
	own := e.binding()
	var differ []string
	if ks.Client.TokenURL != own.TokenURL {
		differ = append(differ, "token_url")
	}
	if ks.Client.ClientID != own.ClientID {
		differ = append(differ, "client_id")
	}
	if len(differ) == 0 {
		return nil
	}
	return &Error{KeySet: ks.Name, Code: CodeKeySetForeign,
		Description: "the key set was granted for another client (its " + strings.Join(differ, " and ") +
			" differs from this handler's); it is not used, refreshed or overwritten here"}
}

// bind stamps ks, which the engine is about to write, with the engine's
// client, so that no other client's engine takes it up.
func (e *Engine) bind(ks *keystore.KeySet) *keystore.KeySet {
	own := e.binding()
	ks.Client = &own
	return ks
}
