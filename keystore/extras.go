package keystore

import (
	"bytes"
	"encoding/json"
	"strings"
)

// Extra returns a field of the token response that may be shown outside
// the keystore (a placeholder, a notification): a top-level string, number
// or boolean whose name does not mark a secret. Objects and arrays are
// never extras, since they may nest secrets (Slack's authed_user holds an
// access_token), and neither are fields named like a token, a secret or a
// password.
func (t Token) Extra(field string) (string, bool) {
	raw, ok := t[field]
	if !ok || SecretField(field) {
		return "", false
	}
	switch first := firstByte(raw); {
	case first == '"' || first == 't' || first == 'f' || first == '-' || (first >= '0' && first <= '9'):
		return t.String(field), true
	default: // an object, an array or null
		return "", false
	}
}

// Extras returns every field that Extra would return.
func (t Token) Extras() map[string]string {
	out := make(map[string]string)
	for field := range t {
		if v, ok := t.Extra(field); ok {
			out[field] = v
		}
	}
	return out
}

// SecretField reports whether a token response field's name marks a secret:
// it ends in "token" (access_token, refresh_token, id_token, ...) or names a
// secret or a password.
func SecretField(name string) bool {
	name = strings.ToLower(name)
	return strings.HasSuffix(name, "token") || strings.Contains(name, "secret") || strings.Contains(name, "password")
}

func firstByte(raw json.RawMessage) byte {
	trimmed := bytes.TrimLeft(raw, " \t\r\n")
	if len(trimmed) == 0 {
		return 0
	}
	return trimmed[0]
}
