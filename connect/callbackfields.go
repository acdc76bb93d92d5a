package connect

import (
	"fmt"
	"net/url"
	"slices"

	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
)

// maxCallbackValue bounds one kept value of the redirect back: Intuit's
// realmId is a number of some twenty digits.
const maxCallbackValue = 256

// callbackReserved are the redirect back's own parameters (RFC 6749
// section 4.1.2 and 4.1.2.1, RFC 9207): never kept.
var callbackReserved = []string{"code", "state", "iss", "error", "error_description", "error_uri"}

// validateCallbackFields refuses a callback_fields name that the redirect
// back uses itself, or that is shaped like a credential: kept values are
// exposed as extra fields, which must never carry one.
func (c *Connect) validateCallbackFields() error {
	for _, name := range c.CallbackFields {
		switch {
		case name == "":
			return fmt.Errorf("callback_fields: an empty name")
		case slices.Contains(callbackReserved, name):
			return fmt.Errorf("callback_fields %q: a parameter of the redirect back itself", name)
		case keystore.CredentialLikeField(name):
			return fmt.Errorf("callback_fields %q: shaped like a credential, which is never kept", name)
		}
	}
	return nil
}

// callbackValues returns the values of the redirect back that
// CallbackFields names, each at most maxCallbackValue bytes of printable
// ASCII; a field that is absent, or fails that check, is left out.
func (c *Connect) callbackValues(q url.Values) map[string]string {
	kept := make(map[string]string, len(c.CallbackFields))
	for _, name := range c.CallbackFields {
		if v := q.Get(name); printable(v) {
			kept[name] = v
		}
	}
	return kept
}

func printable(v string) bool {
	if v == "" || len(v) > maxCallbackValue {
		return false
	}
	for i := range len(v) {
		if v[i] < 0x20 || v[i] > 0x7e {
			return false
		}
	}
	return true
}
