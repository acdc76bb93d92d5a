package credential

import (
	"errors"
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
// this engine's client is its own. Any other is refused with a permanent
// *Error: CodeKeySetForeign for one bound to another client, whose message
// names the fields that differ but not their values (it reaches the
// clients of a handler that may have been steered to the key set), and
// CodeKeySetUnbound for one that names no client (DESIGN.md invariant 9),
// unless it is the key set Config.BindUnbound names.
func (e *Engine) owns(ks *keystore.KeySet) error {
	if ks.Client == nil {
		if e.bindUnbound != "" && ks.Name == e.bindUnbound {
			return nil // the operator's word: bound by the engine's next write
		}
		return &Error{KeySet: ks.Name, Code: CodeKeySetUnbound, Description: unboundDescription}
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

// unboundDescription says why a document without a client binding is
// refused and how to bind it. Nothing in such a document says whose tokens
// it holds: taking it up would send its refresh token, with this client's
// credentials, to whichever handler asked first, and bind it there.
const unboundDescription = "the stored key set names no client (its document has no \"client\"), so it may hold " +
	"another client's tokens; it is not used, refreshed or overwritten here. Seed it anew through the admin API " +
	"(PUT /oauth2_upstream/key_sets/<name>, or caddy oauth2-upstream seed), which stores it bound to this handler's " +
	"client, or, where a handler's fixed key_set names it, start that handler once with bind_unbound"

// replaceable is the key set that a write of a new token response (Put, a
// code redemption) follows in place of current: current itself when it is
// the engine's own, else, for a document that names no client, an empty
// key set of its name and generation. The operator's new token replaces the
// unbound document rather than continuing it: neither its refresh token nor
// its proof key, which may be another client's, is carried into the bound
// successor; its generation is kept, so that the write is still fenced. A
// key set bound to another client is refused.
func (e *Engine) replaceable(current *keystore.KeySet) (*keystore.KeySet, error) {
	err := e.owns(current)
	var re *Error
	if errors.As(err, &re) && re.Code == CodeKeySetUnbound {
		return &keystore.KeySet{Name: current.Name, Generation: current.Generation}, nil
	}
	if err != nil {
		return nil, err
	}
	return current, nil
}

// bind stamps ks, which the engine is about to write, with the engine's
// client, so that no other client's engine takes it up.
func (e *Engine) bind(ks *keystore.KeySet) *keystore.KeySet {
	own := e.binding()
	ks.Client = &own
	return ks
}
