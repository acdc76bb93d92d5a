package live

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"

	"github.com/oauth2upstream/caddy-oauth2-upstream/credential"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
)

// DefaultListLimit and MaxListLimit bound a page of a key set list.
const (
	DefaultListLimit = 100
	MaxListLimit     = 1000
)

// ParsePage reads a list page's parameters: limit (default
// DefaultListLimit, at most MaxListLimit) and after, the name the page's
// names sort after.
func ParsePage(q url.Values) (after string, limit int, err error) {
	limit = DefaultListLimit
	if v := q.Get("limit"); v != "" {
		if limit, err = strconv.Atoi(v); err != nil || limit < 1 || limit > MaxListLimit {
			return "", 0, fmt.Errorf("limit %q: want a whole number from 1 to %d", v, MaxListLimit)
		}
	}
	after = q.Get("after")
	if after != "" {
		if err := keystore.ValidateName(after); err != nil {
			return "", 0, fmt.Errorf("after: %w", err)
		}
	}
	return after, limit, nil
}

// OncePerKeystore runs write (a Put, a grant or a code redemption) once per
// keystore among handlers, and makes every other handler take the result
// into use. Handlers sharing a keystore module instance share its result; a
// handler with its own instance of the same storage (two sites configured
// with the same directory) finds the written document there and adopts it
// too; only a keystore that holds something else is written on its own.
// write may return no key set and no error to skip a keystore; the result
// is the first key set written, nil if none was.
func OncePerKeystore(ctx context.Context, name string, handlers []*Handler, write func(*credential.Engine) (*keystore.KeySet, error)) (*keystore.KeySet, error) {
	written := make(map[keystore.Store]*keystore.KeySet) // store instances are pointers
	var first *keystore.KeySet
	for _, h := range handlers {
		store := h.Engine.Store()
		if ks, ok := written[store]; ok {
			h.Engine.Adopt(name, ks)
			continue
		}
		if first != nil {
			if stored, err := store.Load(ctx, name); err == nil &&
				stored.Generation == first.Generation && stored.UpdatedAt.Equal(first.UpdatedAt) {
				written[store] = stored
				h.Engine.Adopt(name, stored)
				continue
			}
		}
		ks, err := write(h.Engine)
		if err != nil {
			return nil, err
		}
		if ks == nil {
			continue
		}
		written[store] = ks
		if first == nil {
			first = ks
		}
	}
	return first, nil
}

// SkipForeign makes an engine's refusal of a key set bound to another
// client a skip: another live handler, of that client, may own it.
func SkipForeign(ks *keystore.KeySet, err error) (*keystore.KeySet, error) {
	var ce *credential.Error
	if errors.As(err, &ce) && ce.Code == credential.CodeKeySetForeign {
		return nil, nil
	}
	return ks, err
}

// ForceRefresh makes a grant for key set name now, once per keystore that
// holds it among handlers: an operator asked. It returns nil and no error
// when no keystore holds the key set for a handler's client.
func ForceRefresh(ctx context.Context, name string, handlers []*Handler) (*keystore.KeySet, error) {
	return OncePerKeystore(ctx, name, handlers, func(e *credential.Engine) (*keystore.KeySet, error) {
		ks, err := e.ForceRefresh(ctx, name)
		if errors.Is(err, keystore.ErrNotFound) {
			return nil, nil // a keystore without it: nothing to refresh there
		}
		return SkipForeign(ks, err)
	})
}

// WithKeySetName checks the {name} of a route's path, a key set's name,
// before serve acts on it; invalid answers a name that is not valid.
func WithKeySetName(invalid func(w http.ResponseWriter, r *http.Request, err error), serve func(w http.ResponseWriter, r *http.Request, name string)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		if err := keystore.ValidateName(name); err != nil {
			invalid(w, r, err)
			return
		}
		serve(w, r, name)
	}
}
