// Package live is how the module families find the running oauth2_upstream
// handlers: each handler registers what it serves (its credential engine,
// client, grant and key set rule) in a Registry from Provision to Cleanup,
// and the admin API, the health route, the metrics and the connect page
// read it instead of the handler's own fields. The key set operations they
// share (a write once per keystore, a forced refresh, a page of names) are
// here too.
package live

import (
	"context"
	"errors"
	"regexp"
	"strings"

	"github.com/oauth2upstream/caddy-oauth2-upstream/credential"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
)

// Handler is what one live oauth2_upstream handler serves. It is built in
// the handler's Provision and read-only afterwards.
type Handler struct {
	// Engine is the handler's credential engine.
	Engine *credential.Engine
	// Client is the client the handler grants for: its tokens, and the
	// codes a provider issues to it, are that client's only.
	Client keystore.Binding
	// Grant is the handler's grant (credential.Grant*).
	Grant string
	// Scopes are the scopes of its grants.
	Scopes []string
	// KeySets says which key sets the handler uses.
	KeySets KeySetRule
	// Config is the Caddy config the handler was provisioned in.
	Config Config
	// Provider names the provider the handler's options come from, shown
	// beside its key sets; "" when it names none.
	Provider string
}

// KeySetRule is which key sets a handler uses: the one its key_set names,
// or, when key_set has placeholders, every valid name that key_set_allow
// admits.
type KeySetRule struct {
	// Name is the configured key_set: a key set's name, or a template
	// with placeholders resolved per request.
	Name string
	// Allow is key_set_allow, anchored at both ends; nil when none is
	// configured, which admits no name selected per request.
	Allow *regexp.Regexp
}

// NewKeySetRule compiles key_set_allow, anchored at both ends, for the
// key_set keySet.
func NewKeySetRule(keySet, allow string) (KeySetRule, error) {
	rule := KeySetRule{Name: keySet}
	if allow == "" {
		return rule, nil
	}
	re, err := regexp.Compile(`^(?:` + allow + `)$`)
	if err != nil {
		return rule, err
	}
	rule.Allow = re
	return rule, nil
}

// PerRequest reports whether key_set has placeholders: each request selects
// its key set.
func (r KeySetRule) PerRequest() bool { return strings.Contains(r.Name, "{") }

// Admit checks a key set name that a request selected: a valid name that
// key_set_allow admits. Its errors are *credential.Error.
func (r KeySetRule) Admit(name string) error {
	if err := keystore.ValidateName(name); err != nil {
		return &credential.Error{KeySet: name, Code: credential.CodeInvalidKeySetName, Description: err.Error(), Err: err}
	}
	if r.Allow == nil || !r.Allow.MatchString(name) {
		return &credential.Error{KeySet: name, Code: credential.CodeKeySetNotAllowed,
			Description: "the request selected a key set that key_set_allow does not admit"}
	}
	return nil
}

// Serves reports whether the rule admits key set name.
func (r KeySetRule) Serves(name string) bool {
	if r.PerRequest() {
		return r.Admit(name) == nil
	}
	return r.Name == name
}

// Status returns the status of key set name and whether the handler has
// it: a handler of one key set shows it even when it cannot be loaded
// (with the reason); one that selects key sets per request only when it is
// stored.
func (h *Handler) Status(ctx context.Context, name string) (credential.Status, bool) {
	s, err := h.Engine.Status(ctx, name)
	switch {
	case err == nil:
		return h.Report(s), true
	case h.KeySets.PerRequest() && errors.Is(err, keystore.ErrNotFound):
		return credential.Status{}, false
	}
	return h.Report(credential.FailedStatus(name, err)), true
}

// Report is s, the status of one of the handler's key sets, as the handler
// reports it: with its provider.
func (h *Handler) Report(s credential.Status) credential.Status {
	s.Provider = h.Provider
	return s
}

// StatusesAfter returns the status of the key sets the handler knows whose
// names sort after after: its configured key set (loaded now if no request
// loaded it yet) and the key sets it has loaded, one per name, at most
// limit of those (all when limit is zero or negative) and by name.
func (h *Handler) StatusesAfter(ctx context.Context, after string, limit int) []credential.Status {
	var out []credential.Status
	if !h.KeySets.PerRequest() && h.KeySets.Name > after {
		s, err := h.Engine.Status(ctx, h.KeySets.Name)
		if err != nil {
			s = credential.FailedStatus(h.KeySets.Name, err)
		}
		out = append(out, h.Report(s))
	}
	for _, s := range h.Engine.StatusesAfter(after, limit) {
		if h.KeySets.PerRequest() || s.Name != h.KeySets.Name {
			out = append(out, h.Report(s))
		}
	}
	return out
}

// Serving returns the handlers among handlers that use key set name.
func Serving(handlers []*Handler, name string) []*Handler {
	var out []*Handler
	for _, h := range handlers {
		if h.KeySets.Serves(name) {
			out = append(out, h)
		}
	}
	return out
}
