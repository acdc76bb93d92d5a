package oauth2upstream

import (
	"encoding/json"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/oauth2upstream/caddy-oauth2-upstream/credential"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
)

// FuzzExtraPlaceholders: whatever fields a token response holds, no field
// whose name marks a secret resolves as an extra.<field> placeholder.
func FuzzExtraPlaceholders(f *testing.F) {
	f.Add([]byte(`{"access_token":"at","expires_in":3600,"instance_url":"https://x"}`))
	f.Add([]byte(`{"id_token":"x","client_secret":"y","authed_user":{"access_token":"z"}}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		var token keystore.Token
		if json.Unmarshal(body, &token) != nil {
			return
		}
		vars := &requestPlaceholders{keySet: "k", cred: &credential.Credential{KeySet: &keystore.KeySet{Name: "k", Generation: 1, Token: token}}}
		for field := range token {
			if v, ok := vars.lookup(placeholderPrefix + "extra." + field); ok && keystore.SecretField(field) {
				t.Fatalf("placeholder resolved secret field %q to %v", field, v)
			}
		}
	})
}

// FuzzUnmarshalCaddyfile: any directive block either fails with an error or
// gives a handler whose Validate does not panic.
func FuzzUnmarshalCaddyfile(f *testing.F) {
	f.Add("oauth2_upstream {\n\ttoken_url https://login.example.com/token\n\tclient_id c\n\tmax_replay_body 1MiB\n}")
	f.Fuzz(func(t *testing.T, input string) {
		var h Handler
		if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input)); err != nil {
			return
		}
		h.setDefaults()
		_ = h.Validate()
	})
}
