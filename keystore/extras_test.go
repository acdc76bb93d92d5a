package keystore

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

// extrasResponse is a token response with fields of every kind: the
// defaults, credentials under names a deny-list of "secret-looking" names
// misses (api_key, tokens), nested objects and arrays, and a field nobody
// asked for (team_ok).
const extrasResponse = `{"access_token":"AT","refresh_token":"RT","id_token":"ID","token_type":"Bearer",` +
	`"expires_in":3600,"scope":"api","instance_url":"https://eu1.example.com","id":"https://login.example.com/id/00D/005",` +
	`"issued_at":"1790000000000","api_domain":"https://www.zohoapis.eu","api_key":"AK","tokens":"TK",` +
	`"authed_user":{"access_token":"NESTED"},"scopes":["a"],"team_ok":true,"nothing":null}`

func extrasToken(t *testing.T) Token {
	t.Helper()
	var tok Token
	if err := json.Unmarshal([]byte(extrasResponse), &tok); err != nil {
		t.Fatal(err)
	}
	return tok
}

// By default only the named bookkeeping fields are exposed: no credential,
// whatever its name, no nested value, no field nobody named.
func TestExtraFieldsDefault(t *testing.T) {
	t.Parallel()
	got := ExtraFields{}.Extras(extrasToken(t))
	want := map[string]string{"token_type": "Bearer", "expires_in": "3600", "scope": "api",
		"instance_url": "https://eu1.example.com", "id": "https://login.example.com/id/00D/005",
		"issued_at": "1790000000000", "api_domain": "https://www.zohoapis.eu"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Extras() = %v; want %v", got, want)
	}
	for _, field := range []string{"access_token", "refresh_token", "id_token", "api_key", "tokens", "team_ok", "authed_user", "missing"} {
		if v, ok := (ExtraFields{}).Extra(extrasToken(t), field); ok {
			t.Errorf("Extra(%q) = %q; want it not exposed by default", field, v)
		}
	}
	if names := DefaultExtraFields(); !reflect.DeepEqual(names, []string{"api_domain", "expires_in", "id", "instance_url", "issued_at", "scope", "token_type"}) {
		t.Errorf("DefaultExtraFields() = %v", names)
	}
}

// A list replaces the default: the fields it names are exposed, the
// others are not; a nested object or array stays unexposed even when
// named.
func TestExtraFieldsList(t *testing.T) {
	t.Parallel()
	f, err := NewExtraFields([]string{"instance_url", "team_ok", "authed_user", "scopes", "nothing"})
	if err != nil {
		t.Fatalf("NewExtraFields() = %v", err)
	}
	got := f.Extras(extrasToken(t))
	if want := map[string]string{"instance_url": "https://eu1.example.com", "team_ok": "true"}; !reflect.DeepEqual(got, want) {
		t.Errorf("Extras() = %v; want %v", got, want)
	}
	if f, err := NewExtraFields(nil); err != nil || !reflect.DeepEqual(f, ExtraFields{}) {
		t.Errorf("NewExtraFields(nil) = %v, %v; want the default", f, err)
	}
}

// No list may name a field shaped like a credential, nor an empty name;
// names that only speak of a token are fine.
func TestNewExtraFieldsRefuses(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"access_token", "refresh_token", "id_token", "Access_Token", "tokens", "api_key", "apikey",
		"private_keys", "device_code", "client_secret", "password", "db_passwd", "credentials", "client_assertion", "session_cookie", ""} {
		_, err := NewExtraFields([]string{"instance_url", name})
		if err == nil {
			t.Errorf("NewExtraFields(%q) = nil; want refused", name)
			continue
		}
		if name != "" && !strings.Contains(err.Error(), "named like a credential") {
			t.Errorf("NewExtraFields(%q) = %v; want it to say the name is credential-like", name, err)
		}
	}
	for _, name := range []string{"token_type", "refresh_token_expires_in", "instance_url", "team_ok", "keyring_id"} {
		if _, err := NewExtraFields([]string{name}); err != nil {
			t.Errorf("NewExtraFields(%q) = %v; want accepted", name, err)
		}
	}
}
