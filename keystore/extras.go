package keystore

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
)

// defaultExtraFields are the fields exposed when no list is given: the
// token response's bookkeeping (token_type, expires_in, scope, RFC 6749
// section 5.1) and the ones providers add to say where the API is or who
// was authorized (instance_url, id and issued_at: Salesforce; api_domain:
// Zoho). None of them is a credential.
var defaultExtraFields = []string{"api_domain", "expires_in", "id", "instance_url", "issued_at", "scope", "token_type"}

// DefaultExtraFields returns the names the zero ExtraFields allows, sorted.
func DefaultExtraFields() []string { return slices.Clone(defaultExtraFields) }

// ExtraFields is the allow-list of token response fields that may be
// shown outside the keystore: placeholders, notifications. A field is
// exposed only when it is named in the list and is a top-level string,
// number or boolean. Objects and arrays never are, since they may nest
// secrets (Slack's authed_user holds an access_token). A list rather than
// a screen of names that look secret: providers add fields of every name
// (api_key, tokens, ...), and a field nobody named stays in the keystore.
// The zero value allows DefaultExtraFields.
type ExtraFields struct {
	allowed map[string]bool // nil: defaultExtraFields
}

// NewExtraFields returns the allow-list of names; none: the default. It
// refuses an empty name and a name shaped like a credential
// (CredentialLikeField), which no list may expose.
func NewExtraFields(names []string) (ExtraFields, error) {
	if len(names) == 0 {
		return ExtraFields{}, nil
	}
	allowed := make(map[string]bool, len(names))
	for _, name := range names {
		if name == "" {
			return ExtraFields{}, fmt.Errorf("an empty field name")
		}
		if CredentialLikeField(name) {
			return ExtraFields{}, fmt.Errorf("field %q is named like a credential (a token, key, code, secret, password, credential, assertion or cookie): it is never exposed", name)
		}
		allowed[name] = true
	}
	return ExtraFields{allowed: allowed}, nil
}

// allows reports whether field is in the list.
func (f ExtraFields) allows(field string) bool {
	if f.allowed == nil {
		return slices.Contains(defaultExtraFields, field)
	}
	return f.allowed[field]
}

// Extra returns field of t as text, when the list allows it and t holds it
// as a top-level string, number or boolean.
func (f ExtraFields) Extra(t Token, field string) (string, bool) {
	raw, ok := t[field]
	if !ok || !f.allows(field) {
		return "", false
	}
	switch first := firstByte(raw); {
	case first == '"' || first == 't' || first == 'f' || first == '-' || (first >= '0' && first <= '9'):
		return t.String(field), true
	default: // an object, an array or null
		return "", false
	}
}

// ExtraOf returns field of key set ks as Extra does: from its token, or
// else from the values its redirect back carried (KeySet.Callback).
func (f ExtraFields) ExtraOf(ks *KeySet, field string) (string, bool) {
	if _, present := ks.Token[field]; present {
		return f.Extra(ks.Token, field)
	}
	v, ok := ks.Callback[field]
	if !ok || !f.allows(field) {
		return "", false
	}
	return v, true
}

// ExtrasOf returns every field of key set ks that ExtraOf would return.
func (f ExtraFields) ExtrasOf(ks *KeySet) map[string]string {
	out := f.Extras(ks.Token)
	for field, v := range ks.Callback {
		if _, present := ks.Token[field]; !present && f.allows(field) {
			out[field] = v
		}
	}
	return out
}

// Extras returns every field of t that Extra would return.
func (f ExtraFields) Extras(t Token) map[string]string {
	out := make(map[string]string)
	for field := range t {
		if v, ok := f.Extra(t, field); ok {
			out[field] = v
		}
	}
	return out
}

// CredentialLikeField reports whether a field name is shaped like a
// credential, so that no allow-list may name it: it ends in token(s)
// (access_token, refresh_token, id_token, tokens), key(s) (api_key,
// private_key) or code (device_code), or it contains secret, password,
// passwd, credential, assertion or cookie. token_type and
// refresh_token_expires_in, which say something about a token but hold
// none, are not.
func CredentialLikeField(name string) bool {
	name = strings.ToLower(name)
	for _, suffix := range []string{"token", "tokens", "key", "keys", "code"} {
		if strings.HasSuffix(name, suffix) {
			return true
		}
	}
	for _, part := range []string{"secret", "password", "passwd", "credential", "assertion", "cookie"} {
		if strings.Contains(name, part) {
			return true
		}
	}
	return false
}

func firstByte(raw json.RawMessage) byte {
	trimmed := bytes.TrimLeft(raw, " \t\r\n")
	if len(trimmed) == 0 {
		return 0
	}
	return trimmed[0]
}
