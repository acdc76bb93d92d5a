package oauth2upstream

import (
	"encoding/json"
	"slices"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/oauth2upstream/caddy-oauth2-upstream/credential"
	"github.com/oauth2upstream/caddy-oauth2-upstream/keystore"
)

// FuzzExtraPlaceholders: whatever fields a token response holds, an
// extra.<field> placeholder resolves only for a field the default
// allow-list names, and only to a top-level scalar, never to an object or
// an array.
func FuzzExtraPlaceholders(f *testing.F) {
	f.Add([]byte(`{"access_token":"at","expires_in":3600,"instance_url":"https://x"}`))
	f.Add([]byte(`{"id_token":"x","client_secret":"y","api_key":"k","tokens":"t","authed_user":{"access_token":"z"},"scope":["a"]}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		var token keystore.Token
		if json.Unmarshal(body, &token) != nil {
			return
		}
		vars := &requestPlaceholders{keySet: "k", cred: &credential.Credential{KeySet: &keystore.KeySet{Name: "k", Generation: 1, Token: token}}}
		for field, raw := range token {
			v, ok := vars.lookup(placeholderPrefix + "extra." + field)
			if !ok {
				continue
			}
			var scalar any
			_ = json.Unmarshal(raw, &scalar)
			switch scalar.(type) {
			case string, float64, bool:
			default:
				t.Fatalf("placeholder resolved %q, which is not a scalar (%s), to %v", field, raw, v)
			}
			if !slices.Contains(keystore.DefaultExtraFields(), field) {
				t.Fatalf("placeholder resolved %q, which the default allow-list does not name, to %v", field, v)
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
